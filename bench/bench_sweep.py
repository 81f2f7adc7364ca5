"""Sweep efficiency and harness overhead, on the offline benchmark.

The same search space runs twice through ``tune_main.py`` (real Ray, real Optuna): as an
exhaustive grid without early stopping, and as Optuna TPE + ASHA with the same seeds. Reported:
the best score each found, the epochs each spent, and the harness overhead of each run: the sum
of the trials' own training + evaluation time over (wall time x concurrent slots).
Targets: TPE + ASHA reaches >= 95% of the grid's best score with <= 30% of its epochs; overhead
ratio >= 0.85 on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

SPACE = {
    "train.noise.batch_sigma": [0.0, 1.0, 10.0],
    "train.queue_size": [0, 256, 1024],
    "train.lr": [1e-4, 3e-4, 1e-3],
}


def study(name: str, algorithm: str, quick: bool) -> dict:
    base = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())["base"]
    base["train"]["epochs"] = 2 if quick else 4
    if quick:
        base["data"]["offline"] = {"n_train": 1500, "n_val": 200, "n_gallery": 1500, "feature_dim": 64}
        base["model"] = {"hidden_dim": 64, "depth": 1}
    space = {k: {"type": "choice", "values": v[:2] if quick else v} for k, v in SPACE.items()}
    out = {"name": name, "seed": 0, "base": base, "search_space": space, "resources": {"cpu": 1}, "failure": {"max_failures": 0}}
    if algorithm == "grid":
        out |= {"search": {"algorithm": "grid", "max_concurrent": 2}, "scheduler": {"type": "none"}}
    else:
        n = 4 if quick else 12
        out |= {"search": {"algorithm": "tpe", "num_samples": n, "max_concurrent": 2, "n_startup_trials": n // 2},
                "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3}}
    return out


def run(spec: dict, storage: Path) -> dict:
    path = storage / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "tune_main.py"), str(path), "--storage", str(storage), "--no-analysis"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    epochs, busy, best = 0, 0.0, 0.0
    for metrics_file in (storage / spec["name"]).glob("trial_*/metrics.jsonl"):
        lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
        epochs += len(lines)
        busy += sum(m["train_s"] + m["eval_s"] for m in lines)
        best = max([best] + [lines[-1]["score"]])
    return {"wall_s": wall, "epochs": epochs, "best_score": best, "overhead_ratio": busy / (wall * spec["search"]["max_concurrent"])}


def main(quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        grid = run(study("grid", "grid", quick), Path(tmp))
        tpe = run(study("tpe_asha", "tpe", quick), Path(tmp))
    result = {
        "grid": grid, "tpe_asha": tpe,
        "score_ratio": tpe["best_score"] / grid["best_score"] if grid["best_score"] else float("nan"),
        "epoch_ratio": tpe["epochs"] / grid["epochs"],
    }
    print("\n## Sweep efficiency (offline benchmark, quickstart model, 2 trials at a time)\n")
    print("| run | best score | epochs | wall s | overhead ratio |\n| --- | --- | --- | --- | --- |")
    for name in ("grid", "tpe_asha"):
        r = result[name]
        print(f"| {name} | {r['best_score']:.4f} | {r['epochs']} | {r['wall_s']:.0f} | {r['overhead_ratio']:.2f} |")
    print(f"\nTPE + ASHA / grid: best score {result['score_ratio']:.3f} (target >= 0.95), "
          f"epochs {result['epoch_ratio']:.3f} (target <= 0.30)")
    return result


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
