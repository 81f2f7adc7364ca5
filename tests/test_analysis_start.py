"""analysis/: the evaluation before training (``eval.at_start``, epoch-0 rows) is a baseline row and
the start of the learning curves, never a budget.

Each study of ``test_analysis_budget`` is analysed twice: as built, and with an epoch-0 row planted
at the head of every trial's logs (metrics.jsonl, seeds.jsonl, curves.jsonl), as a run with
``eval.at_start: true`` writes them. The planted rows are better than every trained epoch (acc_1km
0.9x and acc_25km 0.65 against at most 0.3 and 0.4 trained, val_loss 0.1, curves at 99 %), so epoch
0 taken for a budget, a best or final epoch, a correlation or a comparison would change the
answers; it has no train_loss. Its acc_1km is 0.90 + 0.01 * trial number + 0.001 * seed, so the
baseline row's mean is known:

- ``asha`` (one seed per trial, counted trials 0-5; trial 6 is running and has logged epoch 0
  only): the mean over the 6 counted trials is 0.90 + 0.01 * 2.5 = 0.925;
- ``seeded`` (15 runs: trials 0-4, three seeds each, seeds 0-2 but 10-12 for trial 4): the mean
  over runs is 0.90 + 0.01 * 2 + 0.001 * (4 * (0 + 1 + 2) + 10 + 11 + 12) / 15 = 0.923.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest

from analysis import AnalysisError, analyse, read_study
from analysis.tables import START_LABEL
from geoloc.study.folders import Status, StatusRecord, StudyFolder, TrialFolder

from .test_analysis_budget import SIGMA, build_asha, build_seeded, row, write_trial

TRAINING_ONLY = ("train_loss", "lr", "train_s")  # the keys a run logs for a trained epoch only


def start_acc(number: int, seed) -> float:
    return 0.90 + 0.01 * number + 0.001 * (seed or 0)


def epoch0(number: int, seed) -> dict:
    """An epoch-0 row: the trained epochs' keys but the training ones, better than any trained epoch."""
    planted = {**row(0, start_acc(number, seed), 0.65, 0.0), "val_loss": 0.1}
    return {k: v for k, v in planted.items() if k not in TRAINING_ONLY}


def plant_start(root: Path) -> Path:
    """Put an epoch-0 row first in each trial's logs; seeds.jsonl and curves.jsonl only where they exist."""
    for trial in StudyFolder(root).trials():
        number = trial.read_trial()["number"]
        seeds = sorted({r["seed"] for r in trial.read_log(TrialFolder.SEEDS).rows}) or [None]

        mean = {**epoch0(number, seeds[0]), "acc_1km": statistics.mean(start_acc(number, s) for s in seeds)}
        firsts = {TrialFolder.METRICS: [mean], TrialFolder.SEEDS: [{**epoch0(number, s), "seed": s} for s in seeds]}
        curves = trial.read_log(TrialFolder.CURVES).rows
        firsts[TrialFolder.CURVES] = [
            {**c, "epoch": 0, "acc": [0.99] * len(c["acc"])} for c in curves if c["epoch"] == 1
        ]
        for log, rows in firsts.items():
            path = trial.path / log
            if path.exists() or log == TrialFolder.METRICS:
                old = path.read_text() if path.exists() else ""
                path.write_text("".join(json.dumps(r) + "\n" for r in rows) + old)
    return root


def asha_with_running(root: Path) -> Path:
    build_asha(root)
    write_trial(root, 6, {SIGMA: 0.0}, StatusRecord(Status.RUNNING, 0, 4), [], seed=0)  # evaluated, not trained yet
    return root


def copy(root: Path, to: Path) -> Path:
    return Path(shutil.copytree(root, to, ignore=shutil.ignore_patterns(StudyFolder.ANALYSIS)))


@pytest.fixture(scope="module")
def asha_pair(tmp_path_factory):
    """(plain out, with-start out, plain result, with-start result, with-start study folder)."""
    tmp = tmp_path_factory.mktemp("start")
    plain = asha_with_running(tmp / "plain")
    start = plant_start(copy(plain, tmp / "start"))
    results = [
        analyse(root, tmp / f"{root.name}_out", formats=("csv", "md"), echo_warnings=False) for root in (plain, start)
    ]
    return tmp / "plain_out", tmp / "start_out", *results, start


def test_epoch_0_is_read_apart_from_the_trained_epochs(asha_pair):
    *_, root = asha_pair
    study = read_study(root)
    assert 0 not in set(study.epochs["epoch"]) and 0 not in set(study.seeds["epoch"])
    assert sorted(study.start["number"]) == list(range(7)) and set(study.start["epoch"]) == {0}
    assert study.start["train_loss"].isna().all()  # a column of the trained epochs, empty at epoch 0
    every = study.every_epoch()
    assert len(every) == len(study.epochs) + 7
    running = every[every["number"] == 6]
    assert list(running["epoch"]) == [0]  # its learning curve is one point, at epoch 0
    trials = study.trials.set_index("number")
    assert trials.loc[6, "epochs"] == 0 and pd.isna(trials.loc[6, "final_acc_1km"])  # nothing trained yet


def test_budget_and_every_trained_statistic_are_unchanged_by_epoch_0(asha_pair):
    plain, start, plain_result, start_result, _ = asha_pair
    assert start_result["epoch"] == plain_result["epoch"] == 4
    assert start_result["counts"] == plain_result["counts"]
    assert start_result["best"] == plain_result["best"]
    written = {p.name for p in plain.iterdir()}
    assert written == {p.name for p in start.iterdir()}
    changed = {"epochs.csv", "report.md", "learning_curves.png"} | {n for n in written if n.startswith("ablation_")}
    for name in sorted(written - changed):  # trials (final, best), correlations at each rung, Pareto, ...
        assert (plain / name).read_bytes() == (start / name).read_bytes(), name
    assert (plain / "learning_curves.png").read_bytes() != (start / "learning_curves.png").read_bytes()
    epochs = pd.read_csv(start / "epochs.csv")
    assert len(epochs) == len(pd.read_csv(plain / "epochs.csv")) + 7
    assert epochs[epochs["epoch"] == 0]["train_loss"].isna().all()


def test_ablation_opens_with_the_row_before_training(asha_pair):
    plain, start, *_ = asha_pair
    name = "ablation_train_noise_batch_sigma"
    before, table = (pd.read_csv(out / f"{name}.csv", dtype={"value": str}) for out in (plain, start))
    pd.testing.assert_frame_equal(table.iloc[1:].reset_index(drop=True), before)  # the trained rows, as before
    first = table.iloc[0]
    acc = [start_acc(k, None) for k in range(6)]  # the counted trials; the running one is left out
    assert first["value"] == START_LABEL and first["n"] == 6
    assert first["acc_1km_mean"] == pytest.approx(0.925) == pytest.approx(statistics.mean(acc))
    assert first["acc_1km_std"] == pytest.approx(statistics.stdev(acc)) and first["acc_1km_n"] == 6
    assert first["acc_25km_mean"] == pytest.approx(0.65) and first["acc_25km_std"] == pytest.approx(0.0)
    assert not first["acc_1km_best"] and not first["baseline"] and not first["acc_1km_sig"]
    md = (start / f"{name}.md").read_text()
    assert f"| {START_LABEL} " in md and "92.50 ± 1.87" in md
    assert "over the 6 finished or stopped trials that have one" in md
    report = (start / "report.md").read_text()
    assert "**Before training (epoch 0):** acc_1km 92.50 %, acc_25km 65.00 %" in report


def test_final_and_best_epochs_ignore_epoch_0_and_epoch_0_is_no_budget(asha_pair, tmp_path):
    *_, root = asha_pair
    plain = asha_with_running(tmp_path / "plain")
    for epoch in ("final", "best"):  # the best acc_1km is epoch 0's in every trial: it must not be taken
        tables = []
        for r in (plain, root):
            out = tmp_path / f"{r.name}_{epoch}"
            analyse(r, out, by=[SIGMA], formats=("csv",), epoch=epoch, plots=False, echo_warnings=False)
            tables.append(pd.read_csv(out / "ablation_train_noise_batch_sigma.csv", dtype={"value": str}))
        pd.testing.assert_frame_equal(tables[1].iloc[1:].reset_index(drop=True), tables[0])
    with pytest.raises(AnalysisError, match="epoch 0 is the evaluation before training"):
        analyse(root, tmp_path / "zero", epoch=0)
    assert not (tmp_path / "zero").exists()


def test_per_seed_runs_compare_and_cross_over_as_before(tmp_path):
    plain = build_seeded(tmp_path / "plain")
    start = plant_start(copy(plain, tmp_path / "start"))
    for root in (plain, start):
        analyse(root, tmp_path / f"{root.name}_out", formats=("csv",), plots=False, echo_warnings=False)
    for name in ("comparison.csv", "crossover.csv", "trials.csv", "loss_vs_accuracy.csv"):
        assert (tmp_path / "plain_out" / name).read_bytes() == (tmp_path / "start_out" / name).read_bytes(), name
    before, table = (
        pd.read_csv(tmp_path / f"{v}_out" / "ablation_train_noise_batch_sigma.csv", dtype={"value": str})
        for v in ("plain", "start")
    )
    pd.testing.assert_frame_equal(table.iloc[1:].reset_index(drop=True), before)
    assert table.loc[0, "value"] == START_LABEL and table.loc[0, "n"] == 15  # runs, as the rows below
    assert table.loc[0, "acc_1km_mean"] == pytest.approx(0.923)
