"""Searching for the Pareto set: multi-objective early stopping against random search and ASHA.

One search space, three ways to spend epochs on it, each run through ``tune_main.py`` (real Ray,
real Optuna storage) on the offline benchmark at the quickstart's sizes, once per study seed:

- MOASHA: ``objective: {type: pareto, metrics: [acc_1km, acc_2500km]}`` with
  ``scheduler.type: moasha`` (promotion by non-dominated rank, ``geoloc.tuning.moasha``);
- random search with the same epoch budget: as many full-length trials as the MOASHA run of that
  seed spent epochs on, no early stopping;
- ASHA on the weighted score (the single-objective study of today), as many trials as MOASHA.

All three sample with Optuna's random sampler and the same study seed, so trial k has the same
hyperparameters in every run and the runs differ only in which trials they stop. The measure is
the hypervolume of the front of (acc_1km, acc_2500km) found by the trials that ran every epoch,
against the epochs spent (``analysis.pareto``: trials in number order, reference point (0, 0)).

Agreement check: a configuration that two runs both trained to the end has the same final
accuracies in both (same hyperparameters and seed: training is deterministic across runs).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import Result, log, quickstart_base, run_study, table

OBJECTIVES = ["acc_1km", "acc_2500km"]
SPACE = {
    "train.noise.batch_sigma": {"type": "uniform", "low": 0.0, "high": 25.0},
    "train.queue_size": {"type": "int", "low": 0, "high": 2048, "step": 256},
    "train.lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-3},
    "model.init_temperature": {"type": "loguniform", "low": 0.03, "high": 0.1},
}
EPOCHS, TRIALS = 4, 12
QUICK_EPOCHS, QUICK_TRIALS = 2, 4
RUNGS = {"grace_period": 1, "reduction_factor": 2}  # rungs at epochs 1, 2 (and 4)
SLOTS = 2
# The quick (smoke) run takes one trial at a time: each reaches a rung after the one before it ended, in
# trial-number order, so which trials MOASHA and ASHA stop follows from the trained values alone (training
# is deterministic) and tests/test_bench_smoke.py replays the rule on them. With two at a time the order
# in which trials reach a rung, and so the stops, depends on timing.
QUICK_SLOTS = 1
METHODS = ("MOASHA", "random, same epochs", "ASHA on score")


def study_spec(method: str, seed: int, quick: bool, num_samples: int) -> dict:
    base = quickstart_base()
    base["train"]["epochs"] = QUICK_EPOCHS if quick else EPOCHS
    if quick:  # a smoke run: tiny data and model (the benchmark bench_sweep's quick run builds too)
        base["data"]["offline"] = {"n_train": 500, "n_val": 200, "n_gallery": 500, "feature_dim": 64}
        base["model"] = {"hidden_dim": 64, "depth": 1}
    name = {"MOASHA": "moasha", "random, same epochs": "random", "ASHA on score": "asha"}[method]
    spec = {
        "name": f"{name}_seed{seed}",
        "seed": seed,
        "base": base,
        "search_space": SPACE,
        "search": {
            "algorithm": "random",
            "num_samples": num_samples,
            "max_concurrent": QUICK_SLOTS if quick else SLOTS,
        },
        "resources": {"cpu": 1},
        "failure": {"max_failures": 0},
    }
    if method == "MOASHA":
        spec["objective"] = {"type": "pareto", "metrics": OBJECTIVES}
        spec["scheduler"] = {"type": "moasha", **RUNGS}
    elif method == "ASHA on score":
        spec["scheduler"] = {"type": "asha", **RUNGS}
    else:
        spec["scheduler"] = {"type": "none"}
    return spec


def search(spec: dict, storage: Path) -> dict:
    """Run one study; its hypervolume history, the final accuracies of each full-length configuration,
    and each trial's epochs and first-epoch values in number order (``arrivals``)."""
    from analysis.pareto import Objective, front

    log(f"pareto: {spec['name']}")
    wall, study = run_study(spec, storage)
    found, _ = front(study, Objective(OBJECTIVES, [True, True]))
    full = found.trials
    first = study.epochs[study.epochs["epoch"] == 1].set_index("number")
    arrivals = [
        {"number": int(n), "epochs": int(e), **{k: float(first.loc[n, k]) for k in (*OBJECTIVES, "score")}}
        for n, e in study.trials.sort_values("number")[["number", "epochs"]].itertuples(index=False)
    ]
    return {
        "wall_s": wall,
        "trials": len(study.trials),
        "full_trials": len(full),
        "front": int(full["on_front"].sum()),
        "epochs": found.epochs_spent,
        "hypervolume": found.hypervolume,
        "history": found.history[["epochs_spent", "hypervolume"]].to_numpy(float),
        "arrivals": arrivals,
        "configs": {
            tuple(round(float(row[k]), 12) for k in SPACE): tuple(float(row[m]) for m in OBJECTIVES)
            for _, row in full.iterrows()
        },
    }


def hypervolume_at(history: np.ndarray, epochs: float) -> float:
    """The hypervolume found within ``epochs`` epochs: that of the last trial whose epochs spent fit."""
    within = history[history[:, 0] <= epochs]
    return float(within[-1, 1]) if len(within) else 0.0


def run(quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2)) -> Result:
    n, epochs, slots = (QUICK_TRIALS, QUICK_EPOCHS, QUICK_SLOTS) if quick else (TRIALS, EPOCHS, SLOTS)
    runs: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="bench-pareto-") as tmp:
        for seed in seeds:
            runs["MOASHA"][seed] = moasha = search(study_spec("MOASHA", seed, quick, n), Path(tmp))
            same_epochs = max(1, moasha["epochs"] // epochs)
            runs["random, same epochs"][seed] = search(
                study_spec("random, same epochs", seed, quick, same_epochs), Path(tmp)
            )
            runs["ASHA on score"][seed] = search(study_spec("ASHA on score", seed, quick, n), Path(tmp))

    shared, mismatched = 0, 0
    for seed in seeds:
        configs = [runs[m][seed]["configs"] for m in METHODS]
        for i, a in enumerate(configs):
            for b in configs[i + 1 :]:
                for key in a.keys() & b.keys():
                    shared += 1
                    mismatched += a[key] != b[key]
    agreed = shared > 0 and not mismatched

    budget = min(r["epochs"] for by_seed in runs.values() for r in by_seed.values())
    steps = sorted({max(1, round(budget * f)) for f in (0.25, 0.5, 0.75, 1.0)})

    def mean_sd(values: list[float]) -> str:
        return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"

    rows = [
        [
            method,
            *(mean_sd([hypervolume_at(runs[method][s]["history"], e) for s in seeds]) for e in steps),
            mean_sd([runs[method][s]["hypervolume"] for s in seeds]),
            " / ".join(str(runs[method][s]["epochs"]) for s in seeds),
            " / ".join(f"{runs[method][s]['full_trials']} of {runs[method][s]['trials']}" for s in seeds),
            " / ".join(str(runs[method][s]["front"]) for s in seeds),
            " / ".join(f"{runs[method][s]['wall_s']:.0f}" for s in seeds),
        ]
        for method in METHODS
    ]
    headers = [
        "search",
        *(f"hypervolume at {e} epochs" for e in steps),
        "final hypervolume",
        "epochs spent (per seed)",
        "full-length trials",
        "front size",
        "wall s",
    ]
    body = f"""
Objectives: max `acc_1km`, max `acc_2500km` (hypervolume from (0, 0); 1 would be perfect on both).
Search space: {", ".join(f"`{k}`" for k in SPACE)} (`bench/bench_pareto.py`); every other setting as
`studies/quickstart.yaml`'s base, {epochs} epochs, `train.seed` 0. All three sample with Optuna's random
sampler and the same study seed (trial k has the same hyperparameters in each), {slots} trial(s) at a time,
1 CPU each. MOASHA and ASHA: {n} trials, grace period {RUNGS["grace_period"]}, reduction factor
{RUNGS["reduction_factor"]}; random: as many {epochs}-epoch trials as that seed's MOASHA run spent epochs.
Hypervolume at E epochs: of the full-length trials among the first trials (in number order) whose
epochs together fit in E; mean ± sd over study seeds {", ".join(map(str, seeds))}.

{table(headers, rows)}

Configurations trained to the end by two runs of the same seed: {shared}; same final accuracies in both:
{shared - mismatched} of {shared}.
"""
    figures = {
        method: {seed: {k: v for k, v in r.items() if k not in ("configs", "history")} for seed, r in by_seed.items()}
        for method, by_seed in runs.items()
    }
    figures |= {"steps": steps, "shared": shared, "mismatched": mismatched}
    return Result("Pareto search: MOASHA against random search and ASHA", body, agreed, figures)


def main(quick: bool = False) -> Result:
    return run(quick, seeds=(0,) if quick else (0, 1, 2))


if __name__ == "__main__":
    print(main("--quick" in sys.argv).markdown())
