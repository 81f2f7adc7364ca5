"""Gallery density as a study dimension (``data.gallery``, issue 27's ``eval.gallery``): each choice gives
the gallery ceiling that brute force over its points gives, and the choices differ."""

import numpy as np
import pytest
import torch

from geoloc.common.metrics import ceiling_key
from geoloc.data import load_data
from geoloc.data.derived import derived_path, fingerprint
from geoloc.data.regions import REGIONS_VERSION, SEA_KM
from geoloc.data.synthetic import geoclip_gallery_coords
from geoloc.geo import haversine_km
from geoloc.tasks.geoclip.config import EvalConfig
from geoloc.tasks.geoclip.evaluate import Evaluator

from .conftest import build

pytest.importorskip("geoclip")  # the published 100K gallery ships in its wheel

REGIONS_KEY = (REGIONS_VERSION, SEA_KM)  # what names a regions file besides the coordinates (cached_regions)
TINY_DATA = {"n_train": 600, "n_val": 120, "n_gallery": 300, "feature_dim": 32, "views": 1}


def brute_force_ceiling(points: np.ndarray, gallery: np.ndarray, thresholds: tuple[float, ...]) -> dict[str, float]:
    """The share of points with any gallery point within each threshold, every pair's distance computed."""
    nearest = np.array([haversine_km(gallery, p[None, :]).min() for p in points])
    return {ceiling_key(t): float(np.mean(nearest <= t)) for t in thresholds}


def test_each_gallery_choice_gives_its_brute_force_ceiling(small_config):
    small_config["data"]["offline"].update(TINY_DATA)
    evaluation = EvalConfig(regions=False)  # the ceiling alone: no country lookups of 100K gallery points
    ceilings, galleries = {}, {}
    for choice in ("offline", "train", "geoclip", "union"):
        small_config["data"]["gallery"] = choice
        data = load_data(build(small_config).data)
        val = data.val["val"]
        evaluator = Evaluator(evaluation, val, data.gallery, data.gallery[:4], torch.device("cpu"))
        assert evaluator.ceiling == brute_force_ceiling(val.coords, data.gallery, evaluation.thresholds_km), choice
        ceilings[choice], galleries[choice] = evaluator.ceiling, data.gallery
    train = np.unique(data.train.coords, axis=0)
    assert np.array_equal(galleries["train"], train)
    union = galleries["union"]
    assert len(union) == len(np.unique(np.concatenate([train, geoclip_gallery_coords()]), axis=0))
    assert len(union) < len(train) + len(galleries["geoclip"])  # shared MP-16 places kept once
    # The union holds both: its ceiling is at least either's at every threshold, and above the training set's.
    for key in ceilings["union"]:
        assert ceilings["union"][key] >= max(ceilings["train"][key], ceilings["geoclip"][key])
    # The offline benchmark's images stand on MP-16 places, so the published gallery holds each of them.
    assert set(ceilings["geoclip"].values()) == {1.0} and ceilings["union"] == ceilings["geoclip"]
    assert ceilings["union"] != ceilings["train"] and ceilings["train"] != ceilings["offline"]


def test_a_seeded_subsample_lowers_the_ceiling_the_same_way_every_time(small_config):
    small_config["data"]["offline"].update(TINY_DATA)
    small_config["data"].update(gallery="union", gallery_size=500)
    cfg = build(small_config).data
    first, again = load_data(cfg).gallery, load_data(cfg).gallery
    assert len(first) == 500 and np.array_equal(first, again)
    val = load_data(cfg).val["val"].coords
    thresholds = (25.0, 2500.0)
    thin = brute_force_ceiling(val, first, thresholds)
    small_config["data"]["gallery_size"] = None
    full = brute_force_ceiling(val, load_data(build(small_config).data).gallery, thresholds)
    assert thin[ceiling_key(25.0)] < full[ceiling_key(25.0)]


def test_the_launcher_computes_the_ceiling_once_and_trials_read_it(small_config):
    """``GeoCLIP.prepare`` (the launcher, before the first trial) keeps each evaluation set's nearest
    gallery distances beside its cache, and the regions of its images and of the gallery; an evaluator
    then reads them instead of computing them: planted distances in that file are the ceiling it reports."""
    from geoloc.tasks import task_of

    small_config["data"]["offline"].update(TINY_DATA)
    cfg = build(small_config)
    task_of(cfg).prepare(cfg)
    data = load_data(cfg.data)
    val = data.val["val"]
    kept = derived_path(val.path, "gallery_nearest", fingerprint(val.coords, data.gallery), "npy")
    brute = np.array([haversine_km(data.gallery, p[None, :]).min() for p in val.coords])
    regions = [(val.path, val.coords), (data.train.path, data.gallery)]
    assert all(
        derived_path(home, "regions", fingerprint(coords, *REGIONS_KEY), "json").exists() for home, coords in regions
    )
    original = np.load(kept)
    np.testing.assert_allclose(original, brute, rtol=1e-9, atol=1e-6)
    planted = np.where(np.arange(len(val)) % 4 == 0, 0.5, 30.0)  # a quarter within 1 km, the rest at 30 km
    np.save(kept, planted)
    try:
        evaluator = Evaluator(EvalConfig(regions=False), val, data.gallery, data.gallery[:4], torch.device("cpu"))
    finally:  # the benchmark's folder is shared with other tests
        np.save(kept, original)
    quarter = np.mean(planted <= 1.0)
    assert [evaluator.ceiling[ceiling_key(t)] for t in (1.0, 25.0, 200.0)] == [quarter, quarter, 1.0]
