"""analysis/: equal budgets, per-seed units, paired comparisons and error-curve crossovers, on
hand-made study folders whose every number is planted (no training).

- ``asha``: four trials ran 4 epochs, two were stopped by ASHA after epoch 1 with a high loss
  and a low accuracy there. The default epoch is 4 (4 of 6 trials reached it), so tables and
  correlations use the four epoch-4 rows only; the epoch-1 rung correlation uses all six.
- ``seeded``: ``search.seeds: 3``; noise sigma (0 = base, 1, 5) x lr (1e-4 = base, 2e-4), seeds 0-2,
  except sigma 5 (lr 1e-4 only) whose seeds are 10-12, so it shares no seed with the baseline.
  Per-seed values are planted in seeds.jsonl (metrics.jsonl holds their mean), error curves in
  curves.jsonl: at epoch 2, sigma 1 is worse than sigma 0 below 31.6 km and better above, sigma 5
  better everywhere; epoch 1 and the second evaluation set say otherwise, so reading the wrong
  epoch or set changes the answers.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from analysis import analyse, read_study
from analysis import budget as budgets
from analysis.__main__ import main
from geoloc.study.folders import Status, StatusRecord, StudyFolder, TrialFolder
from geoloc.tasks.geoclip.metrics import geoclip_registry

SIGMA = "train.noise.batch_sigma"
LR = "train.lr"
THRESHOLDS = [1, 25, 200, 750, 2500]
ACCS = [f"acc_{t}km" for t in THRESHOLDS]


def row(epoch: int, acc1: float, acc25: float, loss: float, resolution: float = 50.0) -> dict:
    """One epoch's metrics: acc_200/750/2500km follow acc_25km; the score is the mean accuracy."""
    accs = {"acc_1km": acc1, "acc_25km": acc25, "acc_200km": acc25 + 0.1, "acc_750km": acc25 + 0.2}
    accs["acc_2500km"] = acc25 + 0.3
    return {
        "epoch": epoch,
        "train_loss": loss,
        "val_loss": loss + 0.5,
        **accs,
        "median_km": 300.0,
        "mean_km": 600.0,
        "score": sum(accs.values()) / 5,
        "encoder_resolution_km": resolution,
        "ceiling_1km": 0.4,
    }


def write_study(root, spec: dict, eval_sets=("val",)):
    root.mkdir(parents=True)
    StudyFolder(root).write_study(yaml.safe_dump(spec))
    geoclip_registry(THRESHOLDS, list(eval_sets)).save(root / StudyFolder.REGISTRY)


def write_trial(root, number: int, params: dict, status: StatusRecord, rows, seeds=None, curves=(), seed=None):
    """A trial folder through geoloc.study.folders: metrics.jsonl rows, optionally seeds.jsonl rows and
    curves.jsonl rows, and config.json naming the trial's train.seed."""
    trial = TrialFolder(root / f"trial_{number:03d}")
    trial.path.mkdir()
    trial.write_trial(f"t{number:03d}", number, params)
    if seed is not None:
        trial.write_config({"train": {"seed": seed}})
    for r in rows:
        trial.append_metrics(r)
    for r in seeds or ():
        trial.append(TrialFolder.SEEDS, r)
    for r in curves:
        trial.append(TrialFolder.CURVES, r)
    trial.write_status(status)


# --- equal budgets under ASHA ----------------------------------------------------------------

# Finished trials k = 0..3 (sigma 0, 0, 1, 1): epoch 4 values; epoch e adds 0.5 * (4 - e) to the loss.
LOSS4 = [2.0, 2.1, 2.2, 2.3]
ACC4 = [0.30, 0.28, 0.26, 0.24]
ACC1_EPOCH1 = [0.10, 0.12, 0.14, 0.16]
STOPPED_LOSS, STOPPED_ACC = 5.0, 0.01  # the ASHA-stopped trials' only epoch


def build_asha(root):
    write_study(root, {"name": "asha", "base": {"train": {"epochs": 4}}, "scheduler": {"type": "asha"}})
    for k in range(4):
        rows = [
            row(e, ACC1_EPOCH1[k] if e == 1 else ACC4[k] - 0.01 * (4 - e), 0.4, LOSS4[k] + 0.5 * (4 - e))
            for e in range(1, 5)
        ]
        write_trial(root, k, {SIGMA: [0.0, 1.0][k // 2]}, StatusRecord(Status.FINISHED, 4, 4), rows, seed=0)
    for k in (4, 5):
        rows = [row(1, STOPPED_ACC, 0.4, STOPPED_LOSS)]
        write_trial(root, k, {SIGMA: [0.0, 1.0][k - 4]}, StatusRecord(Status.STOPPED, 1, 4), rows, seed=0)
    return root


@pytest.fixture(scope="module")
def asha(tmp_path_factory):
    root = build_asha(tmp_path_factory.mktemp("asha") / "study")
    result = analyse(root, formats=("csv", "md"), plots=False, echo_warnings=False)
    return root, root / "analysis", result


def test_default_epoch_compares_the_trials_that_reached_it_with_their_values_there(asha):
    root, out, result = asha
    assert result["epoch"] == 4 and result["counts"]["counted"] == 6 and result["counts"]["compared"] == 4
    table = pd.read_csv(out / "ablation_train_noise_batch_sigma.csv")
    assert list(table["n"]) == [2, 2]  # the stopped trials are left out
    assert table.loc[0, "acc_1km_mean"] == pytest.approx(statistics.mean(ACC4[:2]))
    assert table.loc[1, "acc_1km_std"] == pytest.approx(statistics.stdev(ACC4[2:]))

    corr = pd.read_csv(out / "loss_vs_accuracy.csv")
    train = corr[(corr["loss"] == "train_loss") & (corr["metric"] == "acc_1km")].set_index("epoch")
    assert list(train.index) == [1, 2, 4]  # ASHA's rungs: 1 * 2**k <= 4 epochs
    assert train.loc[4, "n"] == 4 and train.loc[4, "rho"] == pytest.approx(-1.0)
    assert train.loc[2, "n"] == 4
    epoch1_loss = [x + 1.5 for x in LOSS4] + [STOPPED_LOSS] * 2
    epoch1_acc = ACC1_EPOCH1 + [STOPPED_ACC] * 2
    assert train.loc[1, "n"] == 6
    assert train.loc[1, "rho"] == pytest.approx(stats.spearmanr(epoch1_loss, epoch1_acc).statistic)

    pareto = pd.read_csv(out / "pareto.csv")
    assert set(pareto["number"]) <= {0, 1, 2, 3}
    report = (out / "report.md").read_text()
    assert "compared at epoch 4" in report and "4 of the 6 finished or stopped trials reached it" in report
    assert "2 stopped earlier and are left out" in report and "learning curves" in report
    assert "**Across trials at epoch 4**, a lower train_loss goes with higher acc_1km (Spearman ρ = -1.00" in report
    assert "mixes budgets" not in report


def test_final_epoch_mixes_budgets_with_a_warning_and_a_chosen_epoch_takes_every_trial_there(tmp_path):
    root = build_asha(tmp_path / "study")
    final = analyse(
        root, tmp_path / "final", by=[SIGMA], formats=("csv",), epoch="final", plots=False, echo_warnings=False
    )
    warning = [w for w in final["warnings"] if "mixes budgets" in w]
    assert len(warning) == 1 and "ran 1 to 4 epochs" in warning[0]
    table = pd.read_csv(tmp_path / "final" / "ablation_train_noise_batch_sigma.csv")
    assert list(table["n"]) == [3, 3]
    assert table.loc[0, "acc_1km_mean"] == pytest.approx(statistics.mean([*ACC4[:2], STOPPED_ACC]))
    report = (tmp_path / "final" / "report.md").read_text()
    assert warning[0] in report
    # Correlations are made at ASHA's rungs only: the summary quotes the highest one with 3 trials.
    assert "**Across trials at epoch 4 (the highest ASHA rung with at least 3 trials" in report

    first = analyse(root, tmp_path / "first", by=[SIGMA], formats=("csv",), epoch=1, plots=False, echo_warnings=False)
    table = pd.read_csv(tmp_path / "first" / "ablation_train_noise_batch_sigma.csv")
    assert first["epoch"] == 1 and list(table["n"]) == [3, 3]
    assert table.loc[1, "acc_1km_mean"] == pytest.approx(statistics.mean([*ACC1_EPOCH1[2:], STOPPED_ACC]))
    assert not [w for w in first["warnings"] if "mixes budgets" in w]


def test_default_epoch_rule(tmp_path):
    root = tmp_path / "study"
    write_study(root, {"name": "rule"})
    ran = {0: 4, 1: 4, 2: 2, 3: 1, 4: 1, 5: 1}  # reached epoch 1: 6 trials, 2: 3, 3 and 4: 2
    for k, epochs in ran.items():
        status = StatusRecord(Status.FINISHED if epochs == 4 else Status.STOPPED, epochs, 4)
        write_trial(root, k, {SIGMA: k % 2}, status, [row(e, 0.1, 0.4, 3.0) for e in range(1, epochs + 1)])
    study = read_study(root)
    assert budgets.choose(study) == 2  # the highest epoch that at least half (3 of 6) reached
    assert budgets.choose(study, "3") == 3 and budgets.choose(study, "best") == "best"
    for k in (2, 3, 4, 5):  # now every counted trial ran 4 epochs
        (root / f"trial_{k:03d}").rename(tmp_path / f"gone_{k}")
    assert budgets.choose(read_study(root)) == 4


# --- per-seed units, paired comparisons, crossovers -------------------------------------------

KM = [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
BASE_CURVE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
CURVE_SHIFT = {0.0: [0.0] * 6, 1.0: [-0.02, -0.02, -0.01, 0.01, 0.02, 0.02], 5.0: [0.02] * 6}
CROSSOVER_KM = math.sqrt(10.0 * 100.0)  # the sign changes halfway (in log km) between 10 and 100 km
SEED_OFFSET = {0: 0.0, 1: 0.02, 2: 0.01, 10: 0.03, 11: 0.0, 12: 0.015}
# Per seed (by position within the trial): sigma 1 costs 4-6 pp of acc_1km and gains 2.5-3.5 pp at 25 km.
ACC1_EFFECT = {0.0: [0.0] * 3, 1.0: [-0.05, -0.04, -0.06], 5.0: [0.04, 0.04, 0.04]}
ACC25_EFFECT = {0.0: [0.0] * 3, 1.0: [0.03, 0.035, 0.025], 5.0: [0.0, 0.0, 0.0]}
LR_EFFECT = {1e-4: [0.0] * 3, 2e-4: [0.001, -0.002, 0.0005]}
CELLS = [(0.0, 1e-4, 0), (0.0, 2e-4, 0), (1.0, 1e-4, 0), (1.0, 2e-4, 0), (5.0, 1e-4, 10)]  # sigma, lr, first seed


def seeded_value(metric: str, sigma: float, lr: float, i: int, seed: int, epoch: int = 2) -> float:
    """The planted per-seed value; epoch 1 is far off (0.5 more on acc_1km), so using it shows."""
    if metric == "acc_1km":
        return 0.20 + SEED_OFFSET[seed] + ACC1_EFFECT[sigma][i] + LR_EFFECT[lr][i] + (0.5 if epoch == 1 else 0.0)
    return 0.40 + SEED_OFFSET[seed] + ACC25_EFFECT[sigma][i]


def build_seeded(root):
    spec = {
        "name": "seeded",
        "base": {"train": {"epochs": 2, "seed": 0, "lr": 1e-4, "noise": {"batch_sigma": 0.0}}},
        "search_space": {
            SIGMA: {"type": "choice", "values": [0.0, 1.0, 5.0]},
            LR: {"type": "choice", "values": [1e-4, 2e-4]},
        },
        "search": {"algorithm": "grid", "seeds": 3},
        "scheduler": {"type": "none"},
    }
    write_study(root, spec, eval_sets=("val", "im2gps3k"))
    for k, (sigma, lr, first) in enumerate(CELLS):
        seeds, curves = [], []
        for epoch in (1, 2):
            for i, seed in enumerate(range(first, first + 3)):
                acc1, acc25 = (seeded_value(m, sigma, lr, i, seed, epoch) for m in ("acc_1km", "acc_25km"))
                seeds.append({**row(epoch, acc1, acc25, 3.0, resolution=10.0 + sigma + i), "seed": seed})
                shift = CURVE_SHIFT[sigma] if epoch == 2 else [-0.05] * 6  # epoch 1: every arm worse
                curves.append(
                    {
                        "epoch": epoch,
                        "seed": seed,
                        "set": "val",
                        "km": KM,
                        "acc": [b + s for b, s in zip(BASE_CURVE, shift, strict=True)],
                    }
                )
                curves.append({"epoch": epoch, "seed": seed, "set": "im2gps3k", "km": KM, "acc": BASE_CURVE})
        means = [
            {key: statistics.mean(r[key] for r in seeds if r["epoch"] == e) for key in seeds[0] if key != "seed"}
            for e in (1, 2)
        ]
        status = StatusRecord(Status.FINISHED, 2, 2)
        write_trial(root, k, {SIGMA: sigma, LR: lr}, status, means, seeds=seeds, curves=curves, seed=first)
    return root


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = build_seeded(tmp_path_factory.mktemp("seeded") / "study")
    result = analyse(root, echo_warnings=False)
    return root, root / "analysis", result


def units(sigma: float, lr: float, metric: str = "acc_1km") -> list[float]:
    first = next(f for s, r, f in CELLS if (s, r) == (sigma, lr))
    return [seeded_value(metric, sigma, lr, i, first + i) for i in range(3)]


def test_study_holds_per_seed_rows_and_long_error_curves(seeded):
    root, _, _ = seeded
    study = read_study(root)
    assert len(study.seeds) == 5 * 3 * 2  # trials x seeds x epochs
    first = study.seeds[(study.seeds["trial_id"] == "t004") & (study.seeds["epoch"] == 2)]
    assert list(first["seed"]) == [10, 11, 12]
    assert list(first["acc_1km"]) == pytest.approx(units(5.0, 1e-4))
    assert list(study.curves.columns) == ["trial_id", "seed", "epoch", "set", "km", "acc"]
    assert len(study.curves) == 5 * 3 * 2 * 2 * len(KM)  # trials x seeds x epochs x sets x distances
    assert study.primary_set == "val"


def test_ablation_counts_runs_and_averages_every_seed(seeded):
    _, out, _ = seeded
    table = pd.read_csv(out / "ablation_train_noise_batch_sigma.csv").set_index("value")
    assert list(table["n"]) == [6, 6, 3]  # trials x seeds
    base = units(0.0, 1e-4) + units(0.0, 2e-4)
    assert table.loc[0, "acc_1km_mean"] == pytest.approx(statistics.mean(base))
    assert table.loc[0, "acc_1km_std"] == pytest.approx(statistics.stdev(base))
    assert table.loc[5, "acc_1km_mean"] == pytest.approx(statistics.mean(units(5.0, 1e-4)))
    # The encoder's resolution sits beside acc_1km, with no "best" (it has no direction).
    columns = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    assert columns[:2] == ["acc_1km", "encoder_resolution_km"]
    assert table.loc[1, "encoder_resolution_km_mean"] == pytest.approx(12.0)  # 11, 12, 13
    assert not table["encoder_resolution_km_best"].any()
    md = (out / "ablation_train_noise_batch_sigma.md").read_text()
    assert "n = runs per row" in md and "runs (trial × seed)" in md and "12.0 ± 0.9" in md


def test_comparison_p_values_are_scipys_paired_by_seed_or_welch(seeded):
    _, out, _ = seeded
    table = pd.read_csv(out / "comparison.csv", dtype={"arm": str, "baseline": str})
    rows = table.set_index(["param", "arm", "metric"])
    paired = rows.loc[(SIGMA, "1", "acc_1km")]
    arm, base = units(1.0, 1e-4) + units(1.0, 2e-4), units(0.0, 1e-4) + units(0.0, 2e-4)  # same seeds, same lr
    assert paired["baseline"] == "0" and bool(paired["paired"]) and paired["n_pairs"] == 6
    assert paired["p_t"] == pytest.approx(stats.ttest_rel(arm, base).pvalue, rel=1e-9)
    assert paired["p_rank"] == pytest.approx(stats.wilcoxon(np.subtract(arm, base)).pvalue, rel=1e-9)
    assert paired["diff"] == pytest.approx(-0.05) and bool(paired["significant"])

    welch = rows.loc[(SIGMA, "5", "acc_1km")]  # seeds 10-12: none shared with the baseline
    assert not bool(welch["paired"]) and welch["n_pairs"] == 0 and (welch["n_arm"], welch["n_baseline"]) == (3, 6)
    five = units(5.0, 1e-4)
    assert welch["p_t"] == pytest.approx(stats.ttest_ind(five, base, equal_var=False).pvalue, rel=1e-9)
    assert welch["p_rank"] == pytest.approx(stats.mannwhitneyu(five, base).pvalue, rel=1e-9)
    md = (out / "comparison.md").read_text()
    assert "unpaired: no shared seeds (Welch, n=3 vs 6)" in md and "paired (n=6)" in md

    lr = rows.loc[(LR, "0.0002", "acc_1km")]  # the lr comparison pairs by seed and sigma
    assert lr["baseline"] == "0.0001" and lr["n_pairs"] == 6 and not bool(lr["significant"])
    assert set(table["param"]) == {SIGMA, LR}  # seeds are never compared


def test_tables_mark_significant_cells_and_the_summary_states_only_those(seeded):
    _, out, _ = seeded
    md = (out / "ablation_train_noise_batch_sigma.md").read_text()
    assert "| 0 (baseline) " in md
    line = next(r for r in md.splitlines() if r.startswith("| 1 "))
    acc1_cell = line.split("|")[3]
    assert "†" in acc1_cell
    # The encoder's resolution is compared too: its cell is marked exactly when its comparison is significant.
    comparison = pd.read_csv(out / "comparison.csv", dtype={"arm": str}).set_index(["param", "arm", "metric"])
    resolution = comparison.loc[(SIGMA, "1", "encoder_resolution_km")]
    assert ("†" in line.split("|")[4]) == bool(resolution["significant"])
    assert "† = differs from the baseline row 0" in md
    tex = (out / "ablation_train_noise_batch_sigma.tex").read_text()
    assert r"$^{\dagger}$" in tex
    for path in out.glob("*.tex"):  # pdflatex's default fonts have none of †, ×, −; one booktabs table each
        text = path.read_text()
        assert text.isascii() and text.count(r"\toprule") == text.count(r"\bottomrule") == 1, path.name
    lr_md = (out / "ablation_train_lr.md").read_text()
    assert "†" not in lr_md.split("\n\n", 1)[1]  # no lr effect: no marked cell

    report = (out / "report.md").read_text()
    effects = next(line for line in report.splitlines() if line.startswith("- **Effects on acc_1km at epoch 2**"))
    assert "train.noise.batch_sigma: 1 vs 0: -5.00 pp" in effects
    assert "train.lr: no evidence at this budget (n = 15 runs)" in effects
    assert "train.noise.batch_sigma = 1 vs 0: worse for acc_1km (-5.00 pp) but better for acc_25km (+3.00 pp)" in report


def test_error_curve_crossover(seeded):
    _, out, result = seeded
    cross = pd.read_csv(out / "crossover.csv", dtype={"arm": str}).set_index(["param", "arm"])
    one = cross.loc[(SIGMA, "1")]
    assert one["crossover_km"] == pytest.approx(CROSSOVER_KM) and one["direction"] == "worse-to-better"
    five = cross.loc[(SIGMA, "5")]
    assert pd.isna(five["crossover_km"]) and five["note"] == "better everywhere"
    assert cross.loc[(LR, "0.0002"), "note"] == "no difference"
    md = (out / "crossover.md").read_text()
    assert "31.6 km" in md and "| none" in md
    assert "error_curve_train_noise_batch_sigma" in result["plots"]
    assert (out / "error_curve_train_noise_batch_sigma.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "1: worse below, better above 31.6 km (95 % interval 31.6 km to 31.6 km)" in report
    assert "5: none (better everywhere)" in report


def test_baseline_option_and_its_errors(seeded, tmp_path, capsys):
    root, _, _ = seeded
    analyse(root, tmp_path / "b", formats=("csv",), baseline="1", plots=False, echo_warnings=False)
    table = pd.read_csv(tmp_path / "b" / "comparison.csv", dtype={"baseline": str})
    assert set(table.loc[table["param"] == SIGMA, "baseline"]) == {"1"}
    assert set(table.loc[table["param"] == LR, "baseline"]) == {"0.0001"}  # no lr arm is 1  # no lr arm is 1

    for args, expected in (
        (["--baseline", "7"], "error: --baseline 7: no compared parameter has this value"),
        (["--epoch", "99"], "error: --epoch 99: no finished or stopped trial reached epoch 99 (they ran 1 to 2"),
        (["--epoch", "two"], "error: --epoch: expected a positive epoch number, final or best"),
    ):
        assert main([str(root), "--out", str(tmp_path / "x"), "--no-plots", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), err
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_grid_repeats_pair_by_the_train_seed_parameter(tmp_path):
    """search.repeats: one seed per trial, train.seed a parameter; no config.json (an older folder)."""
    root = tmp_path / "study"
    write_study(root, {"name": "repeats", "base": {"train": {"noise": {"batch_sigma": 0.0}}}})
    values = {(0.0, s): 0.20 + SEED_OFFSET[s] for s in range(3)}
    values |= {(1.0, s): 0.20 + SEED_OFFSET[s] + ACC1_EFFECT[1.0][s] for s in range(3)}
    for k, ((sigma, seed), acc) in enumerate(values.items()):
        write_trial(
            root, k, {SIGMA: sigma, "train.seed": seed}, StatusRecord(Status.FINISHED, 1, 1), [row(1, acc, 0.4, 3.0)]
        )
    result = analyse(root, formats=("csv",), plots=False, echo_warnings=False)
    table = pd.read_csv(root / "analysis" / "comparison.csv").set_index(["param", "metric"])
    assert set(table.index.get_level_values("param")) == {SIGMA}  # train.seed is a replicate
    row1 = table.loc[(SIGMA, "acc_1km")]
    arm, base = [values[(1.0, s)] for s in range(3)], [values[(0.0, s)] for s in range(3)]
    assert bool(row1["paired"]) and row1["n_pairs"] == 3
    assert row1["p_t"] == pytest.approx(stats.ttest_rel(arm, base).pvalue, rel=1e-9)
    assert list(pd.read_csv(root / "analysis" / "ablation_train_noise_batch_sigma.csv")["n"]) == [3, 3]
    assert result["epoch"] == 1
