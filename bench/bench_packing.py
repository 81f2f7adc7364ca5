"""Packing: 1, 2 and 4 concurrent trials on one GPU with fractional GPU requests.

Each packing level K runs K identical trials at once through ``tune_main.py`` (a grid over
``train.seed`` 0..K-1, ``resources.gpu`` 1/K), at the published sizes (location encoder width
1024, batch 512, queue 4096, bf16) on an enlarged offline benchmark. Reported per level:
trial-epochs per hour end to end (all epochs over the study's wall time, Ray and trial start-up
included) and in steady state (K x 3600 / median seconds of an epoch after the first), and the
GPU's power draw (W, mean) and memory used (MiB, peak) sampled by ``nvidia-smi`` every 0.5 s
while the study ran.

The throughput columns are the measure of what packing gains: the work done per hour. Power draw
says how much of the card that work used (from its idle draw up to its power limit). The GPU's
``utilization.gpu`` is not reported: it is the share of time in which at least one kernel was
running, not how busy the card was: it reads 100% while kernels run back to back however few of
the SMs they occupy, so it says nothing of how much more work packing fits onto the card.

Without a GPU the same code packs trials onto the CPU cores instead (levels 1 and 2 on the
quickstart's sizes, ``resources.cpu`` = cores / K, so K trials share the same cores): the
question a laptop user has, and what this machine can measure.

Agreement check: the seed-0 trial, which every level runs, ends with the same score at every
level within 0.005 on GPU, whose kernels need not be bit-reproducible. On the CPU a trial's torch
threads are its CPU share, so K trials at once each run cores / K threads, and on some CPUs the
thread count changes the last digits of the sums (a 2-core Intel Xeon with AVX-512, 2026-12-06: one
quickstart epoch's loss 5.347990 with 1 thread, 5.348413 with 2; the AMD EPYCs before gave the same
digits): so each level's seed-0 score must equal, exactly, that of the seed-0 trial run alone with
the same share, which is run for each level above 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from .common import Result, log, quickstart_base, run_study, table

GPU_LEVELS, CPU_LEVELS = (1, 2, 4), (1, 2)
EPOCHS = 3
POWER_NOTE = (
    "\nThe trial-epochs per hour measure what packing gains; the power draw shows how much of the card the "
    "trials used. `utilization.gpu` is not shown: it is the share of time in which any kernel ran, not how busy "
    "the card was (kernels on a few SMs, back to back, read 100%).\n"
)


def study_spec(level: int, gpu: bool, quick: bool, alone: bool = False) -> dict:
    """K = ``level`` trials at once; ``alone``: only the seed-0 trial, with the CPU share it has among K."""
    base = quickstart_base()
    base["train"]["epochs"] = 2 if quick else EPOCHS
    if gpu:
        base["data"]["offline"] = {"n_train": 50_000, "n_gallery": 20_000}
        base["model"] = {}  # the published widths
        base["train"] |= {"batch_size": 512, "queue_size": 4096, "precision": "bf16", "device": "cuda"}
        resources = {"cpu": max(1, (os.cpu_count() or 1) // max(GPU_LEVELS)), "gpu": 1 / level}
    else:
        if quick:
            # 500 images: under a second a trial; the same benchmark as bench_sweep's quick run (built once)
            base["data"]["offline"] = {"n_train": 500, "n_val": 200, "n_gallery": 500, "feature_dim": 64}
            base["model"] = {"hidden_dim": 64, "depth": 1}
        resources = {"cpu": len(os.sched_getaffinity(0)) / level, "gpu": 0}
    return {
        "name": f"packing_{level}" + ("_alone" if alone else ""),
        "seed": 0,
        "base": base,
        "search_space": {"train.seed": {"type": "choice", "values": list(range(1 if alone else level))}},
        "search": {"algorithm": "grid", "max_concurrent": level},
        "scheduler": {"type": "none"},
        "resources": resources,
        "failure": {"max_failures": 0},
    }


QUERY = "power.draw,memory.used"  # not utilization.gpu: see the module docstring


def _number(field: str) -> float:
    """A value of ``nvidia-smi --format=csv,nounits``; NaN for ``[N/A]`` (e.g. no power sensor)."""
    try:
        return float(field)
    except ValueError:
        return float("nan")


class GpuSampler(threading.Thread):
    """``nvidia-smi`` power draw (W) and memory used (MiB) every 0.5 s until ``stop()``."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.proc = None

    def run(self) -> None:
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-lms", "500"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stdout:
            fields = line.split(",")
            if len(fields) >= 2:
                self.samples.append((_number(fields[0]), _number(fields[1])))

    def stop(self) -> dict:
        """Mean power draw (W) and peak memory used (MiB) over the samples; NaN where none was read."""
        if self.proc:
            self.proc.terminate()
        self.join(timeout=5)
        figures = {}
        for key, values, reduce in (("gpu_power_w", 0, np.mean), ("gpu_mem_mib", 1, np.max)):
            read = np.array([s[values] for s in self.samples], dtype=float)
            read = read[np.isfinite(read)]
            figures[key] = float(reduce(read)) if len(read) else float("nan")
        return figures


def seed0_alone(level: int, quick: bool, storage: Path) -> float:
    """The seed-0 trial's final score run alone with the CPU share it has among ``level`` trials."""
    log(f"packing: the seed-0 trial alone with the CPU share of {level} at once")
    _, study = run_study(study_spec(level, False, quick, alone=True), storage)
    return float(study.trials["final_score"].iloc[0])


def measure(level: int, gpu: bool, quick: bool, storage: Path) -> dict:
    log(f"packing: {level} trial(s) at once on the {'GPU' if gpu else 'CPU'}")
    sampler = GpuSampler() if gpu and shutil.which("nvidia-smi") else None
    if sampler:
        sampler.start()
    wall, study = run_study(study_spec(level, gpu, quick), storage)
    usage = sampler.stop() if sampler else {}
    epochs = study.epochs
    later = epochs[epochs["epoch"] > 1]
    epoch_s = float((later["train_s"] + later["eval_s"]).median())
    seed0 = study.trials[study.trials["train.seed"] == 0]
    return {
        "level": level,
        "trials": len(study.trials),
        "epochs": len(epochs),
        "wall_s": wall,
        "end_to_end_per_hour": len(epochs) / wall * 3600,
        "epoch_s": epoch_s,
        "steady_per_hour": level * 3600 / epoch_s,
        "seed0_score": float(seed0["final_score"].iloc[0]),
        **usage,
    }


def run(quick: bool = False) -> Result:
    gpu = torch.cuda.is_available()
    levels = GPU_LEVELS if gpu else CPU_LEVELS
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        results = [measure(level, gpu, quick, Path(tmp)) for level in levels]
        # The CPU's reference for each level: the seed-0 trial alone with the same threads (module docstring).
        alone = [
            r["seed0_score"] if gpu or r["level"] == 1 else seed0_alone(r["level"], quick, Path(tmp)) for r in results
        ]

    epochs = 2 if quick else EPOCHS
    scores = [r["seed0_score"] for r in results]
    same = max(scores) - min(scores) <= 0.005 if gpu else scores == alone
    agreed = same and all(r["trials"] == r["level"] and r["epochs"] == r["level"] * epochs for r in results)
    one = results[0]
    rows = [
        [
            r["level"],
            f"{r['wall_s']:.0f}",
            f"{r['end_to_end_per_hour']:.0f}",
            f"{r['end_to_end_per_hour'] / one['end_to_end_per_hour']:.2f}",
            f"{r['epoch_s']:.1f}",
            f"{r['steady_per_hour']:.0f}",
            f"**{r['steady_per_hour'] / one['steady_per_hour']:.2f}**",
            *([f"{r['gpu_power_w']:.0f}", f"{r['gpu_mem_mib']:.0f}"] if gpu else []),
            f"{r['seed0_score']:.4f}",
        ]
        for r in results
    ]
    headers = [
        "trials at once",
        "wall s",
        "trial-epochs / h",
        "x of 1",
        "s per epoch (after the 1st)",
        "steady trial-epochs / h",
        "x of 1",
        *(["GPU power draw (W, mean)", "GPU memory MiB (peak)"] if gpu else []),
        "seed-0 score",
    ]
    where = (
        f"one GPU ({torch.cuda.get_device_name(0)}), `resources.gpu` = 1 / K, published sizes, bf16"
        if gpu
        else f"no GPU on this machine, so CPU packing instead: {len(os.sched_getaffinity(0))} cores shared by K trials "
        "(`resources.cpu` = cores / K), quickstart sizes"
    )
    body = f"""
K identical trials at once ({epochs} epochs each, `train.seed` 0..K-1) on {where}.

{table(headers, rows)}

The seed-0 trial's final score at every level: {", ".join(f"{s:.4f}" for s in scores)}.{
        ""
        if gpu
        else " Alone with the same CPU share (the same torch threads): "
        + ", ".join(f"{s:.4f}" for s in alone)
        + (": equal." if scores == alone else ": **different**.")
    }
{POWER_NOTE if gpu else ""}"""
    return Result("Packing: concurrent trials on one device", body, agreed, {"gpu": gpu, "levels": results})


def main(quick: bool = False) -> Result:
    return run(quick)


if __name__ == "__main__":
    print(main("--quick" in sys.argv).markdown())
