"""GeoScore (OSV-5M's 5000 exp(-d / 1492.7 km), averaged over images): known answers on planted
errors, and a run's value equal to the formula applied to its own per-image errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoloc.tasks.geoclip.config import EvalConfig
from geoloc.tasks.geoclip.evaluate import accuracy_metrics, evaluate_sets, geoscore
from geoloc.tasks.geoclip.metrics import geoclip_registry
from geoloc.tasks.geoclip.trainer import Trainer

from .conftest import build


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([0.0], 5000.0),
        ([1492.7], 5000.0 / math.e),
        ([2 * 1492.7], 5000.0 / math.e**2),
        ([0.0, 1492.7], (5000.0 + 5000.0 / math.e) / 2),
        ([20_015.0], 5000.0 * math.exp(-20_015.0 / 1492.7)),  # the antipode: about 7e-3 points
    ],
)
def test_geoscore_of_planted_errors(errors, expected):
    assert geoscore(np.array(errors)) == pytest.approx(expected, rel=1e-12)


def test_geoscore_is_one_metric_among_the_accuracies_and_changes_none_of_them():
    errors = np.array([0.5, 10.0, 100.0, 1000.0, 5000.0])
    metrics = accuracy_metrics(errors, EvalConfig())
    assert metrics["geoscore"] == pytest.approx(np.mean(5000 * np.exp(-errors / 1492.7)), rel=1e-12)
    assert metrics["acc_1km"] == 0.2 and metrics["median_km"] == 100.0 and metrics["mean_km"] == np.mean(errors)
    assert metrics["score"] == pytest.approx(np.mean([0.2, 0.4, 0.6, 0.6, 0.8]), rel=1e-12)  # the accuracies only


def test_registry_has_geoscore_per_evaluation_set_maximised_and_not_a_share():
    registry = geoclip_registry([1, 25], ["val", "yfcc4k"])
    for key, primary in (("geoscore", True), ("yfcc4k_geoscore", False)):
        metric = registry.get(key)
        assert (metric.kind, metric.direction, metric.fraction, metric.primary) == ("points", "max", False, primary)
    assert "geoscore" not in registry.accuracies() and "geoscore" in registry.headline()
    assert registry.get("mean_km").hparam  # listed with the outcomes, so every ablation table shows it


def test_a_runs_geoscore_is_the_formula_on_its_own_per_image_errors(small_config):
    small_config["train"]["epochs"] = 1
    trainer = Trainer(build(small_config))
    trainer.train_one_epoch()
    (evaluation,) = evaluate_sets(trainer.model, list(trainer.evaluators.values()), trainer.precision)
    expected = float(np.mean(5000.0 * np.exp(-evaluation.errors_km / 1492.7)))
    assert evaluation.metrics["geoscore"] == pytest.approx(expected, rel=1e-12)
    assert trainer.evaluate()["geoscore"] == evaluation.metrics["geoscore"]  # what the run logs
    assert 0 < expected < 5000
