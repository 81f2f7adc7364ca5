"""analysis/: a hand-made study directory whose every number is known in advance, read back from the files.

The known study: 9 counted trials k = 0..8 over noise sigma (0, 0.15, 0.3) x seed (0, 1, 2), with
final metrics built so that the answers are exact. Trials 2 and 8 were stopped by ASHA at epoch 2;
the other 7 ran 4 epochs, so trials are compared at epoch 4 (the highest epoch at least half of
the 9 reached), over COMPARED = k in 0, 1, 3, 4, 5, 6, 7 with their epoch-4 (= final) values:

- train_loss = 3.5 - 0.1 k and acc_1km = 0.20 - 0.01 k fall together: Spearman +1;
  acc_25/200/750km = c + 0.01 k rise as train_loss falls: Spearman -1;
- acc_2500km = ACC2500[k]: k = 4 is moved from rank 4 to rank 2 among the 7 (sum d^2 = 6), so
  rho(k, acc_2500km) = 1 - 6*6/336 and rho(train_loss, acc_2500km) = -(1 - 6*6/336) = -0.893;
- val_loss = 4.0 - 0.1 k except k = 6 (3.55, swapping ranks with k = 5): rho(val_loss, acc_1km)
  = 1 - 6*2/336 = 0.964, rho(val_loss, acc_2500km) = 1 - 6*104/336 = -0.857;
- Pareto (max acc_1km, max acc_2500km): all but k = 4 (k = 3 beats it); (min val_loss, max
  acc_1km): all but k = 6 (k = 5 beats it);
- within trials (whole curves, all 9): sigma 0 curves never diverge; sigma 0.15 has acc_1km
  falling at epochs 3 and 4 with train_loss falling (first 3) but val_loss rising at 3 (first 4);
  sigma 0.3 has acc_1km falling from epoch 2 on (first 2 for both losses);
- an errored and a running trial carry absurd metrics (acc 0.99) so that counting them by
  mistake changes every number; with --epoch final or best, all 9 enter and the report warns
  that budgets are mixed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import AnalysisError, analyse, read_study
from geoloc.study.folders import Status, StatusRecord, StudyFolder, TrialFolder
from geoloc.tasks.geoclip.metrics import geoclip_registry

SIGMAS = [0.0, 0.15, 0.3]
SEEDS = [0, 1, 2]
LRS = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4, 9e-4]
ACC2500 = [0.70, 0.72, 0.74, 0.76, 0.71, 0.78, 0.80, 0.82, 0.84]
STOPPED = {2, 8}
COMPARED = [k for k in range(9) if k not in STOPPED]  # the trials that reached epoch 4
MAX_EPOCHS = 4
CEILING = {"ceiling_1km": 0.25, "ceiling_25km": 0.6, "ceiling_200km": 0.8, "ceiling_750km": 0.95, "ceiling_2500km": 1.0}
ACCS = ["acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km"]
THRESHOLDS = [1, 25, 200, 750, 2500]
EVAL_SETS = ["val", "im2gps3k"]  # the offline benchmark's split, then an extra evaluation set
PNG = b"\x89PNG\r\n\x1a\n"
SIGMA = "train.noise.batch_sigma"


def final(k: int) -> dict:
    m = {
        "train_loss": 3.5 - 0.1 * k,
        "val_loss": 3.55 if k == 6 else 4.0 - 0.1 * k,
        "acc_1km": 0.20 - 0.01 * k,
        "acc_25km": 0.30 + 0.01 * k,
        "acc_200km": 0.45 + 0.01 * k,
        "acc_750km": 0.60 + 0.01 * k,
        "acc_2500km": ACC2500[k],
        "median_km": 500.0 - 20 * k,
    }
    m["score"] = sum(m[a] for a in ACCS) / 5
    return m


def curve(k: int) -> list[dict]:
    """Per-epoch metrics of trial k, ending at final(k)."""
    j, last = k // 3, (2 if k in STOPPED else MAX_EPOCHS)
    f = final(k)
    rows = []
    for e in range(1, last + 1):
        back = last - e
        if j == 0:
            acc1 = f["acc_1km"] - 0.01 * back
        elif j == 1:
            acc1 = f["acc_1km"] + {1: 0.005, 2: 0.02, 3: 0.01, 4: 0.0}[e]
        else:
            acc1 = f["acc_1km"] + 0.01 * back
        val = f["val_loss"] + ({1: 0.3, 2: 0.1, 3: 0.2, 4: 0.0}[e] if j == 1 else 0.2 * back)
        row = {"epoch": e, "train_loss": f["train_loss"] + 0.5 * back, "val_loss": val, "acc_1km": acc1}
        for a in ACCS[1:]:
            row[a] = f[a] - 0.01 * back if a != "acc_2500km" else f[a]
        row["median_km"] = f["median_km"]
        row["mean_km"] = 2 * f["median_km"]
        row["score"] = sum(row[a] for a in ACCS) / 5
        row.update(temperature=0.07, lr=LRS[k], train_s=1.0, eval_s=0.1, node="node-a" if k % 2 == 0 else "node-b")
        row.update(CEILING)
        if k == 1:
            row["im2gps3k_acc_1km"] = 0.05  # an extra evaluation set: carried, never tabulated
        rows.append(row)
    return rows


def write_trial(root: Path, name: str, number: int, params: dict, lines: list, status: StatusRecord | None):
    """A trial folder as the launcher writes it; a str in ``lines`` is written as is (a half-written line)."""
    trial = TrialFolder(root / name)
    trial.path.mkdir(parents=True)
    trial.write_trial(f"abcde_{number:05d}", number, params)
    for line in lines:
        if isinstance(line, str):
            with (trial.path / TrialFolder.METRICS).open("a", encoding="utf-8") as f:
                f.write(line)
        else:
            trial.append_metrics(line)
    if status is not None:
        trial.write_status(status)
    d = trial.path
    # Ray's and TensorBoard's own files: must be ignored.
    (d / "events.out.tfevents.123.host").write_bytes(b"\x00garbage")
    (d / "result.json").write_text('{"not": "read"}\n')
    (d / "params.json").write_text('{"train.noise.batch_sigma": 99}')
    (d / "checkpoint_000001").mkdir()


def params(k_sigma: float, seed: int, lr: float) -> dict:
    return {SIGMA: k_sigma, "train.seed": seed, "train.lr": lr, "train.queue_size": 1024}


def build_known(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    study = StudyFolder(root)
    # A study file states only what differs from the defaults; without a scheduler section the
    # study would be ASHA's (its rungs 1, 2 and 4 in the correlations).
    study.write_study("name: known-answer\nscheduler: {type: none}\n")
    geoclip_registry(THRESHOLDS, EVAL_SETS).save(root / StudyFolder.REGISTRY)
    study.optuna_db.write_bytes(b"not a database: must not be needed")
    (root / "basic-variant-state-2025.json").write_text("{}")
    (root / "not_a_trial").mkdir()
    (root / "not_a_trial" / TrialFolder.METRICS).write_text('{"epoch": 1, "acc_1km": 0.99}\n')
    for k in range(9):
        lines = curve(k)
        if k == 0:
            # Crash after epoch 3 was reported, resume from the epoch-2 checkpoint: the later line counts.
            garbage = {**lines[2], "acc_1km": 0.99, "train_loss": 0.01, "val_loss": 0.01}
            lines = lines[:2] + [garbage] + lines[2:]
        last = 2 if k in STOPPED else MAX_EPOCHS
        status = (
            StatusRecord(Status.STOPPED, last, MAX_EPOCHS, stopped_by="ASHA")  # as the searcher writes it
            if k in STOPPED
            else StatusRecord(Status.FINISHED, last, MAX_EPOCHS)
        )
        write_trial(
            root,
            f"trainable_{k:05d}_sigma={SIGMAS[k // 3]}",
            k,
            params(SIGMAS[k // 3], SEEDS[k % 3], LRS[k]),
            lines,
            status,
        )
    absurd = {**curve(4)[0], **{a: 0.99 for a in ACCS}, "score": 0.99, "train_loss": 0.0, "val_loss": 0.0}
    write_trial(
        root,
        "trainable_00009",
        9,
        params(0.15, 3, 5e-4),
        [absurd],
        StatusRecord(Status.ERRORED, 1, 4, "RuntimeError: CUDA out of memory"),
    )
    write_trial(
        root,
        "trainable_00010",
        10,
        params(0.3, 4, 9e-4),
        [absurd, {**absurd, "epoch": 2}, '{"epoch": 3, "train_lo'],
        None,
    )
    return root


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    root = build_known(tmp_path_factory.mktemp("known") / "study")
    result = analyse(root, echo_warnings=False)
    return root, Path(result["out_dir"]), result


def read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name)


def registry_warnings(warnings: list[str]) -> list[str]:
    """The warnings saying that the study's metric registry was not read from its metrics.json."""
    return [w for w in warnings if "metrics taken from" in w]


# --- trials.csv and epochs.csv ---------------------------------------------------------------


def test_trials_csv_has_every_trial_with_status_params_and_final_best_metrics(known):
    _, out, result = known
    trials = read(out, "trials.csv").set_index("number")
    assert list(trials.index) == list(range(11))
    assert trials["status"].value_counts().to_dict() == {"finished": 7, "stopped": 2, "errored": 1, "running": 1}
    assert result["counts"] == {
        **{"finished": 7, "stopped": 2, "errored": 1, "running": 1},
        **{"total": 11, "counted": 9, "compared": 7},
    }
    assert result["epoch"] == 4
    for k in range(9):
        row, f = trials.loc[k], final(k)
        assert row["trial_id"] == f"abcde_{k:05d}"
        assert (
            row[SIGMA] == SIGMAS[k // 3]
            and row["train.seed"] == SEEDS[k % 3]
            and row["train.lr"] == pytest.approx(LRS[k])
        )
        assert row["train.queue_size"] == 1024
        assert row["epochs"] == (2 if k in STOPPED else 4) and row["max_epochs"] == 4
        assert row["node"] == ("node-a" if k % 2 == 0 else "node-b")
        for m, v in f.items():
            assert row[f"final_{m}"] == pytest.approx(v), (k, m)
        assert row["final_ceiling_1km"] == pytest.approx(0.25)
    assert trials.loc[2, "status_detail"] == "stopped by ASHA at epoch 2 of 4"
    assert trials.loc[8, "status"] == "stopped"
    assert trials.loc[9, "status"] == "errored" and trials.loc[9, "reason"] == "RuntimeError: CUDA out of memory"
    assert "CUDA out of memory" in trials.loc[9, "status_detail"]
    assert trials.loc[10, "status"] == "running" and trials.loc[10, "epochs"] == 2  # truncated 3rd line skipped
    # Crash + resume: the later epoch-3 line replaced the garbage one.
    assert trials.loc[0, "best_acc_1km"] == pytest.approx(0.20) and trials.loc[0, "best_train_loss"] == pytest.approx(
        3.5
    )
    # best_ = best over epochs: acc_1km of a sigma-0.3 trial peaked at epoch 1.
    assert trials.loc[6, "best_acc_1km"] == pytest.approx(final(6)["acc_1km"] + 0.03)
    assert trials.loc[6, "best_val_loss"] == pytest.approx(final(6)["val_loss"])
    # An extra evaluation set is carried along.
    assert trials.loc[1, "final_im2gps3k_acc_1km"] == pytest.approx(0.05)
    assert pd.isna(trials.loc[0, "final_im2gps3k_acc_1km"])
    assert not registry_warnings(result["warnings"])  # the study's own registry was read


def test_epochs_csv_has_one_row_per_trial_and_epoch(known):
    _, out, _ = known
    epochs = read(out, "epochs.csv")
    assert len(epochs) == 7 * 4 + 2 * 2 + 1 + 2
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    k0 = epochs[epochs["number"] == 0].set_index("epoch")
    assert list(k0.index) == [1, 2, 3, 4]
    assert k0.loc[3, "acc_1km"] == pytest.approx(curve(0)[2]["acc_1km"])  # not the 0.99 of the crashed run
    assert (epochs[epochs["number"] == 5][SIGMA] == 0.15).all()  # params ride along for filtering


# --- ablation tables -------------------------------------------------------------------------


def test_ablation_by_noise_sigma_has_known_mean_std_n_and_best(known):
    _, out, _ = known
    table = read(out, "ablation_train_noise_batch_sigma.csv")
    assert list(table["value"]) == [0, 0.15, 0.3]
    assert list(table["n"]) == [2, 3, 2]  # errored and running trials left out, and those stopped before epoch 4
    for j, row in table.iterrows():
        ks = [k for k in COMPARED if k // 3 == j]
        for m in ACCS + ["median_km", "score"]:
            values = [final(k)[m] for k in ks]
            assert row[f"{m}_mean"] == pytest.approx(statistics.mean(values)), (j, m)
            assert row[f"{m}_std"] == pytest.approx(statistics.stdev(values)), (j, m)
            assert row[f"{m}_n"] == len(ks)
    assert table.loc[0, "acc_1km_mean"] == pytest.approx(0.195) and table.loc[0, "acc_1km_std"] == pytest.approx(
        0.005**0.5 / 10
    )
    assert table.loc[1, "acc_2500km_mean"] == pytest.approx(0.75) and table.loc[1, "acc_2500km_std"] == pytest.approx(
        0.0013**0.5
    )
    assert list(table["acc_1km_best"]) == [True, False, False]
    assert list(table["acc_2500km_best"]) == [False, False, True]
    assert list(table["median_km_best"]) == [False, False, True]  # lower is better
    assert not [c for c in table.columns if "im2gps3k" in c]

    md = (out / "ablation_train_noise_batch_sigma.md").read_text()
    assert "**19.50 ± 0.71**" in md and "**81.00 ± 1.41**" in md and "16.00 ± 1.00" in md
    assert "epoch-4 values of the 7 finished or stopped trials that reached it; 2 stopped earlier" in md
    assert "| 0 (baseline) " in md  # no base value in study.yaml: the first arm, said in the report
    tex = (out / "ablation_train_noise_batch_sigma.tex").read_text()
    assert r"\textbf{19.50 $\pm$ 0.71}" in tex


def test_continuous_parameter_is_binned_and_thin_cells_warned(known):
    root, out, result = known
    table = read(out, "ablation_train_lr.csv")
    # Quartile bins of the 7 compared trials' lr: 1, 2 | 4, 5 | 6 | 7, 8 (x 1e-4).
    assert list(table["value"]) == ["[0.0001, 0.0002]", "[0.0004, 0.0005]", "[0.0006, 0.0006]", "[0.0007, 0.0008]"]
    assert list(table["n"]) == [2, 2, 1, 2]
    assert table.loc[3, "acc_1km_mean"] == pytest.approx((final(6)["acc_1km"] + final(7)["acc_1km"]) / 2)
    warning = [w for w in result["warnings"] if "ablation by train.lr" in w]
    assert len(warning) == 1 and "(n=1)" in warning[0] and warning[0].startswith("warning:")
    assert warning[0] in (out / "report.md").read_text()
    assert "quantile bins" in (out / "ablation_train_lr.md").read_text()
    sigma = [w for w in result["warnings"] if "ablation by train.noise" in w]
    assert sigma == ["warning: ablation by train.noise.batch_sigma: fewer than 3 trials in 0 (n=2), 0.3 (n=2)"]


def test_best_epoch_values_option(tmp_path):
    root = build_known(tmp_path / "study")
    result = analyse(
        root, tmp_path / "out", by=[SIGMA], formats=("csv",), epoch="best", plots=False, echo_warnings=False
    )
    table = read(tmp_path / "out", "ablation_train_noise_batch_sigma.csv")
    best_acc1 = [final(6)["acc_1km"] + 0.03, final(7)["acc_1km"] + 0.03, final(8)["acc_1km"] + 0.01]
    assert table.loc[2, "acc_1km_mean"] == pytest.approx(statistics.mean(best_acc1))
    assert list(table["n"]) == [3, 3, 3]  # every counted trial, at its own best epoch
    assert [w for w in result["warnings"] if "--epoch best mixes budgets: the compared trials ran 2 to 4" in w]
    assert sorted(p.name for p in (tmp_path / "out").glob("ablation_*")) == ["ablation_train_noise_batch_sigma.csv"]


# --- loss versus accuracy --------------------------------------------------------------------


def test_spearman_correlations_are_the_known_values(known):
    _, out, _ = known
    corr = read(out, "loss_vs_accuracy.csv").set_index(["loss", "metric"])
    expected = {
        ("train_loss", "acc_1km"): 1.0,
        ("train_loss", "acc_25km"): -1.0,
        ("train_loss", "acc_750km"): -1.0,
        ("train_loss", "acc_2500km"): -(1 - 6 * 6 / 336),
        ("val_loss", "acc_1km"): 1 - 6 * 2 / 336,
        ("val_loss", "acc_2500km"): 1 - 6 * 104 / 336,
    }
    assert set(corr["epoch"]) == {4}  # no ASHA rungs in study.yaml: the compared epoch only
    for key, rho in expected.items():
        row = corr.loc[key]
        assert row["rho"] == pytest.approx(rho), key
        assert row["n"] == 7
        assert row["ci_low"] - 1e-9 <= row["rho"] <= row["ci_high"] + 1e-9
    assert corr.loc[("train_loss", "acc_1km"), "ci_low"] == pytest.approx(1.0)  # every resample is +1
    assert corr.loc[("train_loss", "acc_25km"), "ci_high"] == pytest.approx(-1.0)
    assert corr.loc[("train_loss", "acc_2500km"), "excludes_zero"]
    assert len(corr) == 10  # two losses x five accuracies; the extra set is not tabulated
    md = (out / "loss_vs_accuracy.md").read_text()
    assert "+0.96" in md and "-0.86" in md


def test_bootstrap_interval_is_reproducible_and_handles_degenerate_input():
    import numpy as np

    from analysis.sections.geoclip.tradeoff import spearman_ci

    x = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.8])
    y = np.array([1.0, 2.0, 3.0, 6.0, 4.0, 1.5, 5.0])
    first = spearman_ci(x, y)
    assert first == spearman_ci(x, y)  # seeded: same interval every run
    assert first[2] < first[0] < first[3]
    constant = spearman_ci(np.ones(5), np.arange(5.0))
    assert math.isnan(constant[0]) and math.isnan(constant[2])
    assert all(math.isnan(v) for v in spearman_ci(np.array([1.0, 2.0]), np.array([1.0, 2.0])))  # n < 3


def test_divergence_epochs_per_trial_and_by_noise_sigma(known):
    _, out, _ = known
    per_trial = read(out, "divergence.csv").set_index(["loss", "number"])
    train = {3: "3;4", 4: "3;4", 5: "3;4", 6: "2;3;4", 7: "2;3;4", 8: "2"}
    val = {3: "4", 4: "4", 5: "4", 6: "2;3;4", 7: "2;3;4", 8: "2"}
    for loss, hits in (("train_loss", train), ("val_loss", val)):
        for k in range(9):
            row = per_trial.loc[(loss, k)]
            assert bool(row["diverges"]) == (k in hits), (loss, k)
            if k in hits:
                assert row["divergence_epochs"] == hits[k]
                assert row["first_epoch"] == int(hits[k].split(";")[0])
    assert 9 not in per_trial.index.get_level_values("number") and 10 not in per_trial.index.get_level_values("number")

    summary = read(out, "divergence_summary.csv")
    assert summary["param"].iloc[0] == "(all)" and summary["param"].iloc[2] == SIGMA  # sigma first
    rows = summary.set_index(["param", "value", "loss"])
    assert rows.loc[("(all)", "(all)", "train_loss"), ["n", "n_diverging"]].tolist() == [9, 6]
    assert rows.loc[("(all)", "(all)", "train_loss"), "first_epoch_median"] == 2.5
    by_sigma = {
        ("0", "train_loss"): (3, 0, math.nan),
        ("0.15", "train_loss"): (3, 3, 3),
        ("0.3", "train_loss"): (3, 3, 2),
        ("0", "val_loss"): (3, 0, math.nan),
        ("0.15", "val_loss"): (3, 3, 4),
        ("0.3", "val_loss"): (3, 3, 2),
    }
    for (value, loss), (n, hits, first) in by_sigma.items():
        row = rows.loc[(SIGMA, value, loss)]
        assert (row["n"], row["n_diverging"]) == (n, hits)
        assert row["share"] == pytest.approx(hits / n)
        assert (math.isnan(first) and pd.isna(row["first_epoch_min"])) or row["first_epoch_min"] == first
    assert "train.seed" in set(summary["param"]) and "train.lr" in set(summary["param"])


def test_pareto_fronts_list_the_known_members(known):
    _, out, result = known
    fronts = read(out, "pareto.csv")
    members = {name: sorted(group["number"]) for name, group in fronts.groupby("front")}
    assert members == {
        "acc_1km_vs_acc_2500km": [0, 1, 3, 5, 6, 7],
        "val_loss_vs_acc_1km": [0, 1, 3, 4, 5, 7],
    }
    assert sorted(result["pareto"]["acc_1km_vs_acc_2500km"]) == [f"abcde_{k:05d}" for k in (0, 1, 3, 5, 6, 7)]
    assert set(fronts.columns) >= {"acc_1km", "acc_2500km", "val_loss", "score", SIGMA}
    report = (out / "report.md").read_text()
    assert "**Pareto front acc_1km_vs_acc_2500km at epoch 4:** 6 of 7 trials (#0, #1, #3, #5, #6, #7)" in report


def test_a_score_study_writes_nothing_of_a_pareto_objective(known):
    _, out, result = known
    assert result["objective"] == {"type": "score"}  # study.yaml has no objective: an older folder
    assert not [p.name for p in out.iterdir() if p.name.startswith(("pareto_set", "pareto_front", "hypervolume"))]
    assert "Pareto objective" not in (out / "report.md").read_text()


def test_gallery_ceiling_beside_accuracies(known):
    _, out, _ = known
    ceiling = read(out, "ceiling.csv").set_index("metric")
    assert ceiling.loc["acc_1km", "ceiling"] == pytest.approx(0.25)
    assert ceiling.loc["acc_1km", "best_acc"] == pytest.approx(0.20)
    assert ceiling.loc["acc_1km", "best_share_of_ceiling"] == pytest.approx(0.8)
    assert ceiling.loc["acc_2500km", "mean_acc"] == pytest.approx(statistics.mean(ACC2500[k] for k in COMPARED))
    assert not ceiling["ceiling_varies"].any()


def test_importance_for_score_and_acc_1km(known):
    _, out, result = known
    table = read(out, "importance.csv")
    assert set(table["target"]) == {"score", "acc_1km"}
    for _target, group in table.groupby("target"):
        assert set(group["param"]) == {SIGMA, "train.seed", "train.lr"}
        assert group["importance"].sum() == pytest.approx(1.0, abs=1e-6)
    assert result["importance_evaluator"] in ("fANOVA", "PED-ANOVA")
    assert set(result["importance"]) == {"score", "acc_1km"}


# --- report, plots, LaTeX --------------------------------------------------------------------


def test_report_summarises_from_the_numbers(known):
    _, out, result = known
    report = (out / "report.md").read_text()
    assert report.startswith("# Study analysis: known-answer")
    assert "11 in all: 7 finished, 2 stopped early by ASHA, 1 errored, 1 running" in report
    assert "**Budget:** trials are compared at epoch 4" in report
    assert "7 of the 9 finished or stopped trials reached it; 2 stopped earlier" in report
    assert "**Best trial by score at epoch 4:** #7" in report and result["best"]["number"] == 7
    assert result["best"]["params"][SIGMA] == 0.3
    # 2-3 trials per arm, never sharing seed and lr with the baseline: Welch tests, none significant after Holm.
    effects = next(line for line in report.splitlines() if line.startswith("- **Effects on acc_1km at epoch 4**"))
    assert "train.noise.batch_sigma: no evidence at this budget (n = 7 trials)" in effects
    assert "train.lr: no evidence at this budget (n = 7 trials)" in effects
    assert "train.seed" not in effects.split("importance")[0]  # seeds are not effects
    # The study file's base holds the default of every key: sigma 0, an arm (no note); lr 3e-05, in no bin.
    assert not [n for n in result["notes"] if n.startswith("train.noise.batch_sigma") and "baseline =" in n]
    assert "train.lr: the base value 3e-05 is not among the arms; baseline = the first arm, [0.0001, 0.0002]" in report
    assert "train.noise.batch_sigma: no run shares its seed and train.lr with a baseline run" in report
    assert "acc_1km against coarse accuracy at epoch 4:** no evidence at this budget" in report
    assert "**Across trials at epoch 4**, a lower train_loss goes with lower acc_1km (Spearman ρ = +1.00" in report
    assert "higher acc_2500km (Spearman ρ = -0.89" in report
    assert "in 6 of 9 trials" in report and "0: 0/3, 0.15: 3/3 (from epoch 3), 0.3: 3/3 (from epoch 2)" in report
    assert "80 % of the ceiling" in report
    assert "**Strength of evidence:** 7 trials at epoch 4; 2 left out because they stopped earlier." in report
    assert "mixes budgets" not in report
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / link).is_file(), link
    assert len(re.findall(r"!\[", report)) == len(result["plots"]) == 8


def test_every_plot_is_a_png(known):
    _, out, result = known
    names = {Path(p).name for p in result["plots"].values()}
    assert {
        "loss_vs_acc.png",
        "accuracy_vs_threshold.png",
        "learning_curves.png",
        "parallel_coordinates.png",
        "importance.png",
        "metrics_vs_train_noise_batch_sigma.png",
    } <= names
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, png.name


def test_latex_tables_are_balanced_booktabs(known, tmp_path):
    _, out, _ = known
    texs = sorted(out.glob("*.tex"))
    assert {p.name for p in texs} >= {"ablation_train_noise_batch_sigma.tex", "loss_vs_accuracy.tex", "pareto.tex"}
    for tex in texs:
        text = tex.read_text()
        for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
            assert text.count(rule) == 1, (tex.name, rule)
        assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
        assert text.index(r"\toprule") < text.index(r"\midrule") < text.index(r"\bottomrule")
        body = text.split(r"\toprule")[1].split(r"\bottomrule")[0].replace(r"\midrule", "")
        rows = [r for r in body.split(r"\\") if r.strip()]
        amps = {len(re.findall(r"(?<!\\)&", r)) for r in rows}
        assert len(amps) == 1, (tex.name, amps)
        columns = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text).group(1)
        assert amps == {len(columns) - 1}
        assert text.isascii(), tex.name  # pdflatex's default fonts have no ρ, ± or –
        assert not re.search(r"(\\\\|\\midrule)\s*\[", text), tex.name  # would be read as an optional argument
        code = "\n".join(line for line in text.splitlines() if not line.startswith("%"))  # comments carry warnings
        assert not re.search(r"(?<!\\)[_%#]", code.replace(r"\_", "").replace(r"\%", "").replace(r"\#", "")), tex.name
    if shutil.which("pdflatex") is None:
        # .ci/run installs pdflatex and sets GEOLOC_REQUIRE_LATEX=1: in CI a missing engine fails instead of skipping
        assert not os.environ.get("GEOLOC_REQUIRE_LATEX"), "GEOLOC_REQUIRE_LATEX is set but pdflatex is missing"
        pytest.skip("pdflatex not installed: structure checked, compilation not")
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
        + "".join(f"\\input{{{t}}}\n" for t in texs)
        + "\\end{document}\n"
    )
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:]


# --- statuses and edge cases -----------------------------------------------------------------


def test_running_errored_and_stopped_trials_are_read_and_counted(tmp_path):
    root = tmp_path / "study"
    f = curve(0)
    write_trial(root, "t_finished", 0, params(0.0, 0, 1e-4), f, StatusRecord(Status.FINISHED, 4, 4))
    write_trial(
        root, "t_stopped", 1, params(0.3, 0, 2e-4), curve(8), StatusRecord(Status.STOPPED, 2, 4, stopped_by="ASHA")
    )
    write_trial(
        root, "t_errored", 2, params(0.15, 0, 3e-4), [], StatusRecord(Status.ERRORED, 0, 4, "ValueError: loss is NaN")
    )
    write_trial(root, "t_running_no_status", 3, params(0.3, 1, 4e-4), [f[0], '{"epoch": 2, "acc'], None)
    write_trial(root, "t_running", 4, params(0.0, 1, 5e-4), f[:1], StatusRecord(Status.RUNNING, 1, 4))
    result = analyse(root, echo_warnings=False)
    assert result["counts"] == {
        **{"finished": 1, "stopped": 1, "errored": 1, "running": 2},
        **{"total": 5, "counted": 2, "compared": 1},  # epoch 4: 1 of the 2 is half
    }
    trials = read(tmp_path / "study" / "analysis", "trials.csv").set_index("number")
    assert trials.loc[2, "reason"] == "ValueError: loss is NaN" and trials.loc[2, "epochs"] == 0
    assert trials.loc[3, "status"] == "running" and trials.loc[3, "epochs"] == 1
    assert trials.loc[1, "status_detail"] == "stopped by ASHA at epoch 2 of 4"
    report = (tmp_path / "study" / "analysis" / "report.md").read_text()
    assert "not enough trials" in report  # 2 counted trials: no importance, and no failure
    assert any("unreadable line" in w for w in result["warnings"])


def test_study_with_no_finished_trial_yet(tmp_path):
    root = tmp_path / "study"
    write_trial(root, "t0", 0, params(0.0, 0, 1e-4), curve(0)[:1], None)
    write_trial(root, "t1", 1, params(0.3, 0, 1e-4), [], None)
    result = analyse(root, tmp_path / "out", plots=False, echo_warnings=False)
    assert result["counts"]["running"] == 2 and result["best"] is None
    assert "No trial has finished or been stopped yet" in (tmp_path / "out" / "report.md").read_text()


def test_single_trial_without_optional_files(tmp_path):
    root = tmp_path / "study"
    write_trial(root, "only", 0, params(0.0, 0, 1e-4), curve(0), StatusRecord(Status.FINISHED, 4, 4))
    result = analyse(root, formats=["md"], echo_warnings=False)
    assert result["varied"] == [] and result["counts"]["finished"] == 1
    assert "not enough trials" in Path(result["report"]).read_text()
    for png in Path(result["out_dir"]).glob("*.png"):
        assert png.read_bytes()[:8] == PNG


def test_unknown_or_unreadable_status_is_counted_as_running_with_a_warning(tmp_path):
    root = tmp_path / "study"
    write_trial(root, "t_unknown", 0, params(0.0, 0, 1e-4), curve(0)[:1], None)
    write_trial(root, "t_torn", 1, params(0.3, 0, 1e-4), curve(1)[:1], None)
    (root / "t_unknown" / TrialFolder.STATUS).write_text('{"status": "paused", "epochs": 1}')
    (root / "t_torn" / TrialFolder.STATUS).write_text('{"status": "fini')
    study = read_study(root)
    assert list(study.trials["status"]) == [Status.RUNNING.value] * 2
    assert [w for w in study.warnings if "counted as running" in w] == [
        f"t_torn: unreadable {TrialFolder.STATUS} ({root / 't_torn' / TrialFolder.STATUS}: not a JSON object "
        "(being rewritten?)); counted as running",
        f"t_unknown: unreadable {TrialFolder.STATUS} ('paused' is not a valid Status); counted as running",
    ]


# --- the metric registry: thresholds other than the default ----------------------------------

OTHER_THRESHOLDS = [0.5, 10, 100]
OTHER_ACCS = ["acc_0.5km", "acc_10km", "acc_100km"]


def other_curve(k: int) -> list[dict]:
    """Two epochs: acc_0.5km and val_loss are best at epoch 1, acc_10km, acc_100km and median_km at epoch 2."""
    rows = []
    epochs = [(0.10, 0.3, 0.6, 3.0, 400.0), (0.05, 0.4, 0.7, 3.5, 300.0)]
    for e, (fine, mid, coarse, val, median) in enumerate(epochs, 1):
        row = {
            "epoch": e,
            "train_loss": 4.0 - 0.5 * e,
            "val_loss": val,
            "acc_0.5km": fine + 0.01 * k,
            "acc_10km": mid + 0.01 * k,
            "acc_100km": coarse + 0.01 * k,
            "median_km": median,
            "mean_km": 2 * median,
            "ceiling_0.5km": 0.2,
            "ceiling_10km": 0.7,
            "ceiling_100km": 0.9,
            "im2gps3k_acc_10km": 0.1 * e,
            "gpu_mem_gb": 10.0 - e,
        }  # a key no registry knows
        row["score"] = sum(row[a] for a in OTHER_ACCS) / 3
        rows.append(row)
    return rows


def build_other(root: Path, with_registry: bool) -> Path:
    """Four finished trials of a study evaluated at 0.5 / 10 / 100 km, on val and on im2gps3k."""
    root.mkdir(parents=True)
    base = {
        "eval": {"thresholds_km": OTHER_THRESHOLDS, "score_weights": [1, 1, 1]},  # one weight per threshold
        "data": {"val": ["offline", "/data/caches/im2gps3k"]},
    }
    StudyFolder(root).write_study(yaml.safe_dump({"name": "other-thresholds", "base": base}))
    if with_registry:
        geoclip_registry(OTHER_THRESHOLDS, EVAL_SETS).save(root / StudyFolder.REGISTRY)
    for k in range(4):
        write_trial(
            root,
            f"trial_{k}",
            k,
            params(SIGMAS[0] if k % 2 == 0 else SIGMAS[2], k, 1e-4),
            other_curve(k),
            StatusRecord(Status.FINISHED, 2, 2),
        )
    return root


def test_other_thresholds_are_the_columns_finest_first_with_best_in_their_direction(tmp_path):
    root = build_other(tmp_path / "study", with_registry=True)
    result = analyse(root, tmp_path / "out", by=[SIGMA], formats=("csv", "md"), plots=False, echo_warnings=False)
    assert not registry_warnings(result["warnings"])
    assert read_study(root).accuracies == OTHER_ACCS

    table = read(tmp_path / "out", "ablation_train_noise_batch_sigma.csv")
    means = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    assert means == [*OTHER_ACCS, "median_km", "mean_km", "score"]
    assert table.loc[0, "acc_0.5km_mean"] == pytest.approx(0.06)  # trials 0 and 2, final epoch
    assert list(table["acc_0.5km_best"]) == [False, True] and list(table["median_km_best"]) == [True, True]
    assert "6.00 ± 1.41" in (tmp_path / "out" / "ablation_train_noise_batch_sigma.md").read_text()  # a fraction: in %

    trials = read(tmp_path / "out", "trials.csv").set_index("number")
    for k in range(4):
        row = trials.loc[k]
        assert row["final_acc_0.5km"] == pytest.approx(0.05 + 0.01 * k)
        assert row["best_acc_0.5km"] == pytest.approx(0.10 + 0.01 * k)  # higher is better: epoch 1
        assert row["final_acc_10km"] == row["best_acc_10km"] == pytest.approx(0.4 + 0.01 * k)
        assert row["final_acc_100km"] == row["best_acc_100km"] == pytest.approx(0.7 + 0.01 * k)
        assert row["final_val_loss"] == 3.5 and row["best_val_loss"] == 3.0  # lower is better: epoch 1
        assert row["best_median_km"] == 300.0
        assert row["best_im2gps3k_acc_10km"] == pytest.approx(0.2)  # a known key of the extra set
    assert trials["final_ceiling_0.5km"].eq(0.2).all() and "best_ceiling_0.5km" not in trials  # no direction
    assert trials["final_gpu_mem_gb"].eq(8.0).all() and "best_gpu_mem_gb" not in trials  # unknown: a column only
    assert not [c for c in trials.columns if "acc_1km" in c or "acc_2500km" in c]

    ceiling = read(tmp_path / "out", "ceiling.csv").set_index("metric")
    assert list(ceiling.index) == OTHER_ACCS and list(ceiling["threshold_km"]) == OTHER_THRESHOLDS
    assert ceiling.loc["acc_0.5km", "ceiling"] == pytest.approx(0.2)
    assert set(read(tmp_path / "out", "loss_vs_accuracy.csv")["metric"]) == set(OTHER_ACCS)


def test_a_study_without_metrics_json_reads_its_thresholds_from_study_yaml(tmp_path):
    old = read_study(build_other(tmp_path / "old", with_registry=False))
    new = read_study(build_other(tmp_path / "new", with_registry=True))
    assert old.accuracies == new.accuracies == OTHER_ACCS
    assert old.registry == new.registry
    warning = registry_warnings(old.warnings)
    assert len(warning) == 1 and warning[0].startswith(f"no {StudyFolder.REGISTRY} ")
    assert StudyFolder.STUDY in warning[0] and "0.5, 10, 100 km" in warning[0]
    assert "evaluation sets val, im2gps3k" in warning[0]
    assert not new.warnings
    pd.testing.assert_frame_equal(old.trials, new.trials)
    # Neither file: the default thresholds, said so.
    (tmp_path / "old" / StudyFolder.STUDY).unlink()
    bare = read_study(tmp_path / "old")
    assert bare.registry.accuracies() == ["acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km"]
    assert bare.accuracies == [] and "best_acc_0.5km" not in bare.trials and "final_acc_0.5km" in bare.trials
    assert any("the defaults" in w for w in bare.warnings)


# --- command line ----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "analysis", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_rejects_a_directory_without_trials_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("hello")
    (foreign / "sub" / TrialFolder.METRICS).write_text('{"epoch": 1}\n')
    runs = {d.name: cli(d) for d in (empty, foreign, tmp_path / "missing")}
    for run in runs.values():
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
        assert "Traceback" not in run.stderr
    assert (
        f"error: {empty}: no trials found (expected trial folders with trial.json, written by tune_main.py)"
        == runs["empty"].stderr.strip()
    )
    assert "no trials found" in runs["foreign"].stderr and "no such directory" in runs["missing"].stderr
    assert not (empty / "analysis").exists()  # nothing half-written


def test_cli_rejects_unknown_parameter_and_format(tmp_path):
    root = tmp_path / "study"
    write_trial(root, "only", 0, params(0.0, 0, 1e-4), curve(0), StatusRecord(Status.FINISHED, 4, 4))
    runs = [cli(root, *args) for args in (["--by", "train.nope"], ["--format", "md,docx"])]
    for run in runs:
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "--by train.nope: no such hyperparameter" in runs[0].stderr and "--format" in runs[1].stderr


def test_cli_epoch_option_and_its_hidden_old_names():
    from analysis.__main__ import parser

    assert parser().parse_args(["s"]).epoch is None  # the default rule
    assert parser().parse_args(["s", "--epoch", "3"]).epoch == "3"
    assert parser().parse_args(["s", "--which", "best"]).epoch == "best"  # existing commands still work
    assert parser().parse_args(["s", "--values", "final"]).epoch == "final"
    help_text = parser().format_help()
    assert "--epoch" in help_text and "--which" not in help_text and "--values" not in help_text


def test_cli_writes_chosen_tables_and_prints_warnings(tmp_path):
    root = build_known(tmp_path / "study")
    run = cli(root, "--out", tmp_path / "out", "--by", SIGMA, "train.lr", "--format", "csv", "--no-plots")
    assert run.returncode == 0, run.stderr
    assert "report: " in run.stdout
    assert any(line.startswith("warning: ablation by train.lr") for line in run.stderr.splitlines())
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {
        "ablation_train_noise_batch_sigma.csv",
        "ablation_train_lr.csv",
        "trials.csv",
        "epochs.csv",
        "report.md",
    } <= written
    assert "ablation_train_seed.csv" not in written and not any(
        n.endswith((".md", ".tex", ".png")) and n != "report.md" for n in written
    )


def test_analyse_rejects_user_mistakes(tmp_path):
    with pytest.raises(AnalysisError, match="no trials found"):
        analyse(tmp_path)
    with pytest.raises(AnalysisError, match="format"):
        analyse(tmp_path, formats=("pdf",))


def test_ablation_columns_add_what_the_sampler_did_when_the_trials_report_it():
    from types import SimpleNamespace

    from analysis.roles import table_columns

    registry = geoclip_registry(THRESHOLDS, ["val"])
    keys = [*ACCS, "median_km", "score", "encoder_resolution_km"]
    before = SimpleNamespace(registry=registry, accuracies=ACCS, metrics=keys, config=None)
    varying = pd.DataFrame({"negative_min_km": [0.0, 1.0], "batch_median_km": [2.0, 3.0]})
    assert table_columns(before, varying) == ["acc_1km", "encoder_resolution_km", *ACCS[1:], "median_km", "score"]
    sampled = SimpleNamespace(**{**vars(before), "metrics": [*keys, "negative_min_km", "batch_median_km"]})
    assert table_columns(sampled, varying)[-2:] == ["batch_median_km", "negative_min_km"]  # the registry's order
