"""analysis/ behind the task seam: a study read through its study file and stored registry, a task
without accuracies, diagnostics that are the same in every run, statistics of identical values,
and the package's own layout (module sizes, docstring paths, no GeoCLIP module in the generic part).

Hand-made study folders with planted numbers, as in ``test_analysis_budget.py`` (no training).
"""

from __future__ import annotations

import ast
import math
import statistics
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import Field, StrictBool, StrictInt
from scipy import stats

import geoloc.tasks.seam as seam
from analysis import analyse, read_study
from analysis.compare import NO_VARIANCE, compare, render
from analysis.sections.geoclip.crossover import difference_curve
from geoloc.common.metrics import Metric, MetricRegistry
from geoloc.common.validation import Float, Section
from geoloc.study.folders import Status, StatusRecord, StudyFolder
from geoloc.study.studyfile import StudyConfig
from geoloc.tasks.geoclip.metrics import geoclip_registry

from .test_analysis_budget import SIGMA, THRESHOLDS, row, write_study, write_trial

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / "analysis"
FINISHED = StatusRecord(Status.FINISHED, 2, 2)


# --- a task without accuracies ---------------------------------------------------------------


class ToyTrain(Section):
    epochs: StrictInt = 2
    seed: StrictInt = 0
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    lr: Float = 0.1


class ToyEval(Section):
    at_start: StrictBool = False


class ToyConfig(seam.TaskConfig):
    task: Literal["toy"] = "toy"
    train: ToyTrain = Field(default_factory=ToyTrain)
    eval: ToyEval = Field(default_factory=ToyEval)


class ToyTask(seam.Task):
    """A model family whose registry has a loss, the two times and a score, which is no fraction."""

    name = "toy"
    config = ToyConfig

    def registry(self, cfg: ToyConfig) -> MetricRegistry:
        return MetricRegistry(
            (
                Metric("train_loss", "loss", "min", False, "train/loss", hparam=True),
                Metric("train_s", "time", None, False, "time/train_s"),
                Metric("eval_s", "time", None, False, "time/eval_s"),
                Metric("score", "score", "max", False, "score", hparam=True),
            )
        )

    def prepare(self, cfg: ToyConfig) -> None:
        pass

    def trainer(self, cfg, gpu_share=1.0, shared=None):
        raise NotImplementedError("the analysis never trains")


TOY_SCORE = {(0.1, 0): 1.0, (0.1, 1): 1.5, (0.1, 2): 1.2, (0.2, 0): 2.0, (0.2, 1): 2.75, (0.2, 2): 2.3}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A grid over train.lr with three repeats, of the toy task (registered for this test only)."""
    monkeypatch.setitem(seam._TASKS, "toy", ToyTask())
    root = tmp_path / "toy"
    spec = {
        "name": "toy",
        "base": {"task": "toy", "train": {"epochs": 2}},
        "search_space": {"train.lr": {"type": "choice", "values": [0.1, 0.2]}},
        "search": {"algorithm": "grid", "repeats": 3},
        "scheduler": {"type": "none"},
    }
    root.mkdir()
    StudyFolder(root).write_study(yaml.safe_dump(spec))
    study = StudyConfig.model_validate(spec)
    study.registry.save(root / StudyFolder.REGISTRY)
    for k, ((lr, seed), score) in enumerate(TOY_SCORE.items()):
        rows = [
            {"epoch": e, "train_loss": 3.0 - score / e, "train_s": 1.0, "eval_s": 0.1, "score": score - (2 - e) / 2}
            for e in (1, 2)
        ]
        write_trial(root, k, {"train.lr": lr, "train.seed": seed}, FINISHED, rows)
    return root


def test_a_task_without_accuracies_is_analysed_from_its_registry(toy, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyse(toy, tmp_path / "out", echo_warnings=False)
    assert not [w for w in caught if "Precision loss" in str(w.message)]
    out = tmp_path / "out"
    table = pd.read_csv(out / "ablation_train_lr.csv")
    assert [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")] == ["score"]
    last = TOY_SCORE  # epoch 2, the one every trial ran
    for i, lr in enumerate((0.1, 0.2)):
        values = [v for (r, _), v in last.items() if r == lr]
        assert table.loc[i, "score_mean"] == pytest.approx(statistics.mean(values))
        assert table.loc[i, "score_std"] == pytest.approx(statistics.stdev(values))
    comparison = pd.read_csv(out / "comparison.csv").set_index(["param", "metric"])
    paired = comparison.loc[("train.lr", "score")]
    arm, base = ([last[(lr, s)] for s in range(3)] for lr in (0.2, 0.1))
    assert bool(paired["paired"]) and paired["p_t"] == pytest.approx(stats.ttest_rel(arm, base).pvalue, rel=1e-9)
    written = {p.name for p in out.iterdir()}
    assert not written & {"crossover.csv", "loss_vs_accuracy.csv", "ceiling.csv", "pareto.csv", "divergence.csv"}
    report = (out / "report.md").read_text()
    assert "**Effects on score at epoch 2**" in report
    assert "): score 2.75; train.lr = 0.2, train.seed = 1." in report  # the best trial; no fraction, no %
    assert "## Learning curves\n\n![learning curves](learning_curves.png)" in report
    assert "acc_" not in report and "Loss versus 1 km" not in report
    assert set(result) >= {"report", "comparison", "importance", "best"} and "correlations" not in result
    assert result["best"]["score"] == pytest.approx(2.75)


# --- the study file and the stored registry --------------------------------------------------


def test_the_registry_is_the_folders_and_the_study_file_is_validated(tmp_path):
    """metrics.json is read even where it disagrees with what study.yaml implies; the study file's
    sections (base, scheduler, objective) come validated, defaults filled."""
    root = tmp_path / "study"
    write_study(root, {"name": "stored", "base": {"train": {"epochs": 2}}}, eval_sets=("val", "yfcc"))
    for k in range(2):
        write_trial(root, k, {SIGMA: [0.0, 1.0][k]}, FINISHED, [row(e, 0.1, 0.4, 3.0) for e in (1, 2)], seed=0)
    study = read_study(root)
    assert study.registry == geoclip_registry(THRESHOLDS, ["val", "yfcc"])  # not study.yaml's one set
    assert isinstance(study.config, StudyConfig) and study.config.scheduler.type == "asha"
    assert study.config.base.train.noise.batch_sigma == 0.0 and not study.warnings

    (root / StudyFolder.STUDY).write_text("name: stored\nobjective: {weights: [1]}\n")  # an older version's file
    broken = read_study(root)
    assert broken.config is None and broken.name == "study"  # the folder's name
    assert [w for w in broken.warnings if w.startswith(f"{StudyFolder.STUDY} is not a valid study file")]
    result = analyse(root, tmp_path / "out", formats=("csv",), plots=False, echo_warnings=False)
    assert f"{SIGMA}: study.yaml gives no base value; baseline = the first arm, 0" in result["notes"]


def test_the_first_factor_is_the_study_files_first_search_space_entry(tmp_path):
    """The divergence epochs are split by the study file's first entry (train.lr here), then by the
    other varied parameters; the noise sigma has no place of its own."""
    root = tmp_path / "study"
    spec = {
        "name": "lr-first",
        "base": {"train": {"epochs": 2}},
        "search_space": {
            "train.lr": {"type": "choice", "values": [1e-4, 2e-4]},
            SIGMA: {"type": "choice", "values": [0.0, 1.0]},
        },
        "scheduler": {"type": "none"},
    }
    write_study(root, spec)
    for k, (sigma, lr) in enumerate([(0.0, 1e-4), (1.0, 1e-4), (0.0, 2e-4), (1.0, 2e-4)]):
        rows = [row(1, 0.2, 0.4, 3.0), row(2, 0.1 if lr == 2e-4 else 0.3, 0.4, 2.5)]  # lr 2e-4 diverges
        write_trial(root, k, {SIGMA: sigma, "train.lr": lr}, FINISHED, rows, seed=0)  # sigma first in trial.json
    analyse(root, tmp_path / "out", formats=("csv",), plots=False, echo_warnings=False)
    summary = pd.read_csv(tmp_path / "out" / "divergence_summary.csv", dtype={"value": str})
    assert list(dict.fromkeys(summary["param"])) == ["(all)", "train.lr", SIGMA]
    by_lr = summary[(summary["param"] == "train.lr") & (summary["loss"] == "train_loss")]
    assert list(by_lr["n_diverging"]) == [0, 2]


# --- diagnostics the same in every run --------------------------------------------------------


def diagnosed(epoch: int, acc1: float, sampled: float, resolution: float) -> dict:
    """A row with what the batch sampler did: batch_median_km the same everywhere, negative_median_km not."""
    return {**row(epoch, acc1, 0.4, 3.0, resolution), "batch_median_km": 7115.9, "negative_median_km": sampled}


def test_diagnostics_constant_in_every_run_are_left_out_of_tables_and_comparisons(tmp_path):
    root = tmp_path / "study"
    write_study(root, {"name": "random-batches", "base": {"train": {"epochs": 1}}, "scheduler": {"type": "none"}})
    values = [(0.0, 0.20, 7000.0), (0.0, 0.22, 7010.0), (1.0, 0.15, 7020.0), (1.0, 0.17, 7030.0)]
    for k, (sigma, acc1, sampled) in enumerate(values):
        write_trial(root, k, {SIGMA: sigma}, StatusRecord(Status.FINISHED, 1, 1), [diagnosed(1, acc1, sampled, 50.0)])
    analyse(root, tmp_path / "out", formats=("csv", "md"), plots=False, echo_warnings=False)
    table = pd.read_csv(tmp_path / "out" / "ablation_train_noise_batch_sigma.csv")
    columns = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    # encoder_resolution_km (50 in every run) and batch_median_km go; negative_median_km varies and stays.
    outcomes = [*[f"acc_{t}km" for t in THRESHOLDS[1:]], "median_km", "mean_km", "score"]
    assert columns == ["acc_1km", *outcomes, "negative_median_km"]
    assert table["negative_median_km_mean"].tolist() == [7005.0, 7025.0]
    md = (tmp_path / "out" / "ablation_train_noise_batch_sigma.md").read_text()
    assert "The same in every trial, so left out: encoder_resolution_km = 50, batch_median_km = 7115.9." in md
    assert "negative_median_km in km" in md and "batch_median_km in km" not in md
    comparison = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert "encoder_resolution_km" not in set(comparison["metric"])  # the mechanism, when constant, is no effect
    assert "Effects on encoder_resolution_km" not in (tmp_path / "out" / "report.md").read_text()


def test_a_single_run_is_no_evidence_of_a_constant_diagnostic(tmp_path):
    root = tmp_path / "study"
    write_study(root, {"name": "one", "base": {"train": {"epochs": 1}}})
    write_trial(root, 0, {SIGMA: 0.0}, StatusRecord(Status.FINISHED, 1, 1), [diagnosed(1, 0.2, 7000.0, 50.0)])
    analyse(root, tmp_path / "out", by=[SIGMA], formats=("csv",), plots=False, echo_warnings=False)
    table = pd.read_csv(tmp_path / "out" / "ablation_train_noise_batch_sigma.csv")
    assert {"encoder_resolution_km_mean", "batch_median_km_mean", "negative_median_km_mean"} <= set(table.columns)


# --- statistics of identical values ----------------------------------------------------------


def test_paired_differences_all_equal_are_no_variance_without_a_warning():
    units = pd.DataFrame(
        {
            "arm": ["0"] * 3 + ["a"] * 3,
            "pair": ["s0", "s1", "s2"] * 2,
            "acc_25km": [0.25, 0.5, 0.75, 0.375, 0.625, 0.875],  # a = baseline + 0.125 for every seed, exactly
            "median_km": [900.0, 910.0, 920.0, 900.0, 910.0, 920.0],  # a = baseline: no difference at all
            "acc_1km": [0.1, 0.2, 0.3, 0.2, 0.1, 0.4],  # differences that vary
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = compare(units, "0", ["acc_25km", "median_km", "acc_1km"], {"acc_25km": "max", "median_km": "min"})
    rows = table.set_index("metric")
    # The numbers: the interval is the single difference; the t-test p its limit (1 for none, else 0).
    assert (rows.loc["acc_25km", "ci_low"], rows.loc["acc_25km", "ci_high"], rows.loc["acc_25km", "p_t"]) == (
        0.125,
        0.125,
        0.0,
    )
    assert rows.loc["median_km", "p_t"] == 1.0 and math.isnan(rows.loc["median_km", "p_rank"])  # 3 pairs: too few
    shown = render(table, fractions=["acc_25km", "acc_1km"]).set_index("metric")
    for metric in ("acc_25km", "median_km"):
        assert (
            shown.loc[metric, ["95% CI", "p (t)", "p (t, Holm)", "p (rank)", "p (rank, Holm)"]].tolist()
            == [NO_VARIANCE] * 5
        ), metric
    assert shown.loc["acc_25km", "diff"] == "+12.50 pp"
    assert NO_VARIANCE not in shown.loc["acc_1km"].tolist()
    assert shown.loc["acc_1km", "p (t)"] == f"{stats.ttest_rel([0.2, 0.1, 0.4], [0.1, 0.2, 0.3]).pvalue:#.3g}"


def test_an_arm_with_identical_values_at_a_distance_gives_its_welch_interval_without_a_warning():
    """Unpaired arms; at 20,000 km every run of the baseline reaches 100 %: Welch's interval is
    well-defined by the other arm's spread, and scipy's precision-loss warning is not printed."""
    curves = pd.DataFrame(
        {
            "arm": ["0"] * 6 + ["1"] * 6,
            "pair": ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f"],
            "km": [1.0, 20000.0] * 6,
            "acc": [0.10, 1.0, 0.12, 1.0, 0.11, 1.0, 0.2, 0.97, 0.25, 0.99, 0.22, 0.98],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curve = difference_curve(curves, "1", "0").set_index("km")
    far = curve.loc[20000.0]
    arm = np.array([0.97, 0.99, 0.98])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's own, on the constant baseline
        ci = stats.ttest_ind(arm, np.ones(3), equal_var=False).confidence_interval(0.95)
    assert not far["paired"] and far["diff"] == pytest.approx(-0.02)
    assert (far["lo"], far["hi"]) == pytest.approx((ci.low, ci.high))


def test_ablation_cells_of_identical_values_say_no_variance(tmp_path):
    root = tmp_path / "study"
    write_study(root, {"name": "same", "base": {"train": {"epochs": 1}}})
    for k, (sigma, acc1) in enumerate([(0.0, 0.1), (0.0, 0.1), (0.0, 0.1), (1.0, 0.2), (1.0, 0.3)]):
        write_trial(root, k, {SIGMA: sigma}, StatusRecord(Status.FINISHED, 1, 1), [row(1, acc1, 0.4, 3.0)])
    analyse(root, tmp_path / "out", formats=("csv", "md"), plots=False, echo_warnings=False)
    table = pd.read_csv(tmp_path / "out" / "ablation_train_noise_batch_sigma.csv")
    assert table.loc[0, "acc_1km_std"] == 0.0  # three times 0.1: exactly 0, not rounding's 1.7e-17
    assert table.loc[1, "acc_1km_std"] == pytest.approx(statistics.stdev([0.2, 0.3]))
    md = (tmp_path / "out" / "ablation_train_noise_batch_sigma.md").read_text()
    line = next(r for r in md.splitlines() if r.startswith("| 0 "))
    assert "10.00 (no variance)" in line and "± 0.00" not in line


# --- the package's layout (module size and cited files: tests/test_house_rules.py) ----------------

MODULES = sorted(ANALYSIS.rglob("*.py"))
# The generic analysis: all but the task sections; semivariogram.py is a command of its own about
# GeoCLIP's feature caches (python -m analysis.semivariogram), not part of analyse().
GENERIC = [m for m in MODULES if "geoclip" not in m.parts and m.name != "semivariogram.py"]


@pytest.mark.parametrize("module", GENERIC, ids=lambda m: str(m.relative_to(REPO)))
def test_the_generic_analysis_imports_no_module_of_a_task(module):
    imported = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    assert not [m for m in imported if m.startswith(("geoloc.tasks.geoclip", "geoloc.parts", "geoloc.data"))]
    assert not [m for m in imported if "geoclip" in m.split(".")]


def test_the_layout_tests_see_every_module():
    assert ANALYSIS / "sections" / "geoclip" / "tradeoff.py" in MODULES
    assert ANALYSIS / "pipeline.py" in GENERIC and ANALYSIS / "sections" / "__init__.py" in GENERIC
    assert not [m for m in GENERIC if "geoclip" in m.parts]
