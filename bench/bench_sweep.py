"""Sweep efficiency: one search space as an exhaustive grid and as Optuna TPE + ASHA.

Both run through ``tune_main.py`` (real Ray, real Optuna storage) on the offline benchmark at
the quickstart's sizes, 2 trials at a time, 1 CPU each, with ``train.seed`` 0 in every trial:
the grid runs every cell for all epochs without early stopping; TPE + ASHA runs a fixed number
of trials, once per study seed. Reported per run: the best score of a trial that ran all epochs
(what a researcher would pick), the epochs spent, the wall time, and the harness overhead (the
trials' own training + evaluation seconds over wall time x concurrent slots). Target: TPE + ASHA
reaches >= 95% of the grid's best score with <= 30% of its epochs.

Agreement check: every grid cell ran all epochs, every TPE run ran its trials, and a cell that
both a TPE run and the grid trained to the end scored the same in both (same configuration and
seed, so the runs must be deterministic across searchers and Ray workers).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import Result, log, quickstart_base, run_study, table

SPACE = {
    "train.noise.batch_sigma": [0.0, 1.0, 10.0],
    "train.queue_size": [0, 256, 1024],
    "train.lr": [1e-4, 3e-4, 1e-3],
}
EPOCHS = 4
TPE_TRIALS = 12  # of the grid's 27 cells
# A quick (smoke) run: the first values of each axis, 1 x 2 x 2 = 4 cells (queue size and lr, whose scores
# differ from the first epoch, so that ASHA has trials to stop), and 4 TPE + ASHA trials. Each study pays
# Ray's and the trial workers' start-up (tens of seconds on 2 busy cores); each cell adds about a second.
QUICK_VALUES = {"train.noise.batch_sigma": 1, "train.queue_size": 2, "train.lr": 2}
QUICK_TPE_TRIALS = 4
ASHA = {"type": "asha", "grace_period": 1, "reduction_factor": 3}  # rungs at epochs 1 and 3 of 4
SLOTS = 2


def space_values(quick: bool) -> dict[str, list]:
    """The values of each axis searched: all of them, or in a quick run the first ``QUICK_VALUES``."""
    return {k: v[: QUICK_VALUES[k]] if quick else v for k, v in SPACE.items()}


def _cell_text(cell) -> str:
    """A grid cell as "batch_sigma=1, queue_size=256, lr=0.0003"; "-" for none."""
    return ", ".join(f"{k.split('.')[-1]}={v:g}" for k, v in zip(SPACE, cell, strict=True)) if cell else "-"


def expected_best_of_random(scores: list[float], k: int) -> float:
    """Expected best of ``k`` cells drawn without replacement from ``scores`` (exact, no sampling):
    the i-th smallest score is the best of the draw with probability C(i-1, k-1) / C(n, k)."""
    from math import comb

    ranked, n = sorted(scores), len(scores)
    k = min(max(k, 1), n)
    return sum(s * comb(i, k - 1) for i, s in enumerate(ranked)) / comb(n, k)


def study_spec(name: str, algorithm: str, seed: int, quick: bool) -> dict:
    base = quickstart_base()
    base["train"]["epochs"] = 2 if quick else EPOCHS
    if quick:  # a smoke run: tiny data and model, few values per axis
        # 500 images: under a second a trial; the same benchmark as bench_packing's quick run (built once)
        base["data"]["offline"] = {"n_train": 500, "n_val": 200, "n_gallery": 500, "feature_dim": 64}
        base["model"] = {"hidden_dim": 64, "depth": 1}
    space = {k: {"type": "choice", "values": v} for k, v in space_values(quick).items()}
    spec = {
        "name": name,
        "seed": seed,
        "base": base,
        "search_space": space,
        "resources": {"cpu": 1},
        "failure": {"max_failures": 0},
    }
    if algorithm == "grid":
        return spec | {"search": {"algorithm": "grid", "max_concurrent": SLOTS}, "scheduler": {"type": "none"}}
    n = QUICK_TPE_TRIALS if quick else TPE_TRIALS
    return spec | {
        "search": {"algorithm": "tpe", "num_samples": n, "max_concurrent": SLOTS, "n_startup_trials": n // 2},
        "scheduler": ASHA,
    }


def sweep(spec: dict, storage: Path) -> dict:
    """Run one study; its figures and ``cells``: the final score of each cell run to the end."""
    log(f"sweep: {spec['name']} ({spec['search']['algorithm']}, seed {spec['seed']})")
    wall, study = run_study(spec, storage)
    trials, epochs = study.trials, study.epochs
    full = trials[trials["epochs"] == spec["base"]["train"]["epochs"]]
    cells = {tuple(row[k] for k in SPACE): float(row["final_score"]) for _, row in full.iterrows()}
    return {
        "wall_s": wall,
        "trials": len(trials),
        "full_trials": len(full),
        "epochs": int(trials["epochs"].sum()),
        "best_score": max(cells.values(), default=float("nan")),
        "best_cell": max(cells, key=cells.get) if cells else None,
        "overhead_ratio": float((epochs["train_s"] + epochs["eval_s"]).sum()) / (wall * SLOTS),
        "cells": cells,
    }


def run(quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2)) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        grid = sweep(study_spec("grid", "grid", 0, quick), Path(tmp))
        tpe = {seed: sweep(study_spec(f"tpe_asha_seed{seed}", "tpe", seed, quick), Path(tmp)) for seed in seeds}

    n_cells = int(np.prod([len(s["values"]) for s in study_spec("grid", "grid", 0, quick)["search_space"].values()]))
    shared = [(cell, score, grid["cells"].get(cell)) for r in tpe.values() for cell, score in r["cells"].items()]
    mismatched = [(cell, a, b) for cell, a, b in shared if b is None or abs(a - b) > 1e-9]
    n_tpe = QUICK_TPE_TRIALS if quick else TPE_TRIALS
    agreed = len(grid["cells"]) == n_cells and all(r["trials"] == n_tpe for r in tpe.values()) and not mismatched

    for r in tpe.values():
        r["score_ratio"] = r["best_score"] / grid["best_score"]
        r["epoch_ratio"] = r["epochs"] / grid["epochs"]
        r["wall_ratio"] = r["wall_s"] / grid["wall_s"]
        epochs_per_trial = grid["epochs"] / len(grid["cells"])
        r["random_ratio"] = (
            expected_best_of_random(list(grid["cells"].values()), int(r["epochs"] // epochs_per_trial))
            / grid["best_score"]
        )
    met = [r["score_ratio"] >= 0.95 and r["epoch_ratio"] <= 0.30 for r in tpe.values()]
    rows = [
        [
            "grid",
            "-",
            grid["trials"],
            grid["epochs"],
            f"{grid['best_score']:.4f}",
            _cell_text(grid["best_cell"]),
            "1",
            "1",
            "-",
            f"{grid['wall_s']:.0f}",
            f"{grid['overhead_ratio']:.2f}",
        ]
    ]
    rows += [
        [
            "TPE + ASHA",
            seed,
            r["trials"],
            r["epochs"],
            f"{r['best_score']:.4f}",
            _cell_text(r["best_cell"]),
            f"**{r['score_ratio']:.3f}**",
            f"**{r['epoch_ratio']:.3f}**",
            f"{r['random_ratio']:.3f}",
            f"{r['wall_s']:.0f}",
            f"{r['overhead_ratio']:.2f}",
        ]
        for seed, r in tpe.items()
    ]
    ranked = sorted(grid["cells"].values(), reverse=True)
    body = f"""
Search space ({n_cells} cells): {", ".join(f"`{k}` in {v}" for k, v in space_values(quick).items())};
every other setting as `studies/quickstart.yaml`'s base, {2 if quick else EPOCHS} epochs, `train.seed` 0.
Grid: every cell, all epochs, no early stopping. TPE + ASHA: {n_tpe} trials (half of them random
start-up trials), ASHA with grace period {ASHA["grace_period"]} and reduction factor {
        ASHA["reduction_factor"]
    }, one run per study seed.
{SLOTS} trials at a time, 1 CPU each. Best score = best final score of a trial that ran all epochs.

{
        table(
            [
                "run",
                "study seed",
                "trials",
                "epochs",
                "best score",
                "best cell",
                "score / grid",
                "epochs / grid",
                "random search, same epochs: expected score / grid",
                "wall s",
                "harness overhead ratio",
            ],
            rows,
        )
    }

Target: score / grid >= 0.95 with epochs / grid <= 0.30; met in {sum(met)} of {len(met)} TPE + ASHA runs.
The grid's scores spread from {ranked[-1]:.4f} to {ranked[0]:.4f} (second best {ranked[1]:.4f}), so 95%
of its best is reached by {sum(s >= 0.95 * ranked[0] for s in ranked)} of its {n_cells} cells. The baseline column is
random search without early stopping given the same epochs (as many full trials as they pay for):
its expected best over all draws of that many grid cells, computed exactly from the grid's scores.
Cells that a TPE run and the grid both trained to the end: {len(shared)}; scores equal in both:
{len(shared) - len(mismatched)} of {len(shared)}.
Harness overhead ratio: the trials' own training + evaluation seconds over wall seconds x {SLOTS} slots;
the rest is Ray and trial start-up (worker, imports, opening the caches, the gallery ceiling).
"""
    figures = {
        "grid": {k: v for k, v in grid.items() if k != "cells"},
        "tpe": {seed: {k: v for k, v in r.items() if k != "cells"} for seed, r in tpe.items()},
        "shared_cells": len(shared),
        "mismatched_cells": len(mismatched),
        "targets_met": sum(met),
    }
    return Result("Sweep efficiency: grid versus TPE + ASHA", body, agreed, figures)


def main(quick: bool = False) -> Result:
    return run(quick, seeds=(0,) if quick else (0, 1, 2))


if __name__ == "__main__":
    print(main("--quick" in sys.argv).markdown())
