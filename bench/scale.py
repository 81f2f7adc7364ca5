"""``python -m bench.scale [--rows N] [--gallery N] [--steps N] [--folder PATH] [--device D]``: an MP-16 trial's costs.

Issue 26, item 5: an MP-16-sized run without MP-16. Writes a synthetic training cache in the real
format (float16 features on disk, ``CacheWriter``; 768-d, one view; coordinates drawn from the
published 100K gallery with 1 km of GPS noise) of ``--rows`` rows (MP-16: 4.65M, about 7.1 GB),
a ``--gallery``-point gallery (MP-16's evaluation: 1M) and an Im2GPS3k-sized evaluation set with
TenCrop's 10 views, then measures, on ``--device`` (default: a GPU where one is visible, else the CPU):

- trial start-up: ``Trainer(cfg, data)`` twice, with GPS-neighbour batches (range 128) and 64 mined
  negatives per positive (half near from the gallery's 128 nearest); the first builds the lists
  beside the caches, the second reads them (what every later trial pays), the evaluation set's
  nearest gallery distances (its ceiling) included;
- host memory: the process's resident set after each start-up and its own peak (``VmHWM``);
- one epoch's data path (the queue full): the epoch's batch assembly (``Trainer.batches``), then ``--steps`` steps
  read from the cache (on the host, copied to the device) and trained (steps timed, not a full epoch; on a
  GPU each waited for), with and without the bank.

The epoch's estimate (steps x an MP-16 epoch's 9,083 steps at batch 512) is **extrapolated, not
measured**. On a GPU the same command runs in full (``--steps`` as many as an epoch has);
``make gpu-check``'s "scale" row runs it at 1M rows and the 100K gallery.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geoloc.data import Data
from geoloc.data.cache import CacheWriter, open_cache
from geoloc.data.synthetic import geoclip_gallery_coords
from geoloc.geo import gps_noise
from geoloc.study.config import parse_job
from geoloc.tasks.geoclip.trainer import Trainer

from .common import log, peak_rss_bytes, proc_status_kb, table

MP16_ROWS, MP16_BATCH = 4_650_000, 512
FEATURE_DIM, VAL_ROWS, VAL_VIEWS = 768, 2997, 10
WRITE_ROWS = 65_536  # rows written at a time


def coords(n: int, seed: int) -> np.ndarray:
    gallery = geoclip_gallery_coords()
    rows = np.random.default_rng(seed).integers(len(gallery), size=n)
    return gps_noise(torch.from_numpy(gallery[rows]), 1.0, torch.Generator().manual_seed(seed)).numpy()


def write_cache(path: Path, n: int, views: int, seed: int) -> Path:
    writer = CacheWriter(path, n, views, FEATURE_DIM)
    rng = np.random.default_rng(seed)
    for start in range(0, n, WRITE_ROWS):
        stop = min(start + WRITE_ROWS, n)
        writer.features[start:stop] = rng.standard_normal((stop - start, views, FEATURE_DIM), dtype=np.float32)
    writer.coords[:] = coords(n, seed)
    return writer.commit({"backbone": "synthetic"})


def rss_gib() -> str:
    """The resident set in GiB, split into anonymous memory (what the trial allocated) and mapped file
    pages (the memory-mapped cache and lists the trial touched; the kernel reclaims them under pressure)."""
    anon, files = (proc_status_kb(field) / 2**20 for field in ("RssAnon", "RssFile"))
    return f"{anon + files:.2f} ({anon:.2f} + {files:.2f})"


def run(
    rows: int, gallery_size: int, steps: int, folder: Path, device: str = "cpu", batch: int = MP16_BATCH, queue=4096
) -> tuple[str, dict]:
    """The report's markdown and its figures: seconds of each start-up and of a step, without and with the
    bank, and the peak host RSS in GiB (``batch`` and ``queue`` smaller only for ``gpu_check --quick``)."""
    log(f"scale: writing a {rows:,}-row cache and a {VAL_ROWS:,} x {VAL_VIEWS}-view evaluation set")
    start = time.perf_counter()
    train = open_cache(write_cache(folder / "train", rows, 1, 0))
    val = open_cache(write_cache(folder / "val", VAL_ROWS, VAL_VIEWS, 1))
    write_s = time.perf_counter() - start
    data = Data(train=train, val={"val": val}, gallery=coords(gallery_size, 2))
    figures: list[list] = [
        ["cache written (not a trial's cost)", f"{write_s:.1f} s", f"{train.nbytes / 2**30:.2f} GiB on disk"]
    ]
    step_s, startup_s = {}, {}
    on = torch.device(device)
    for bank in (False, True):
        negatives = {"mined": 64, "near_share": 0.5, "near_k": 128, "bank": bank, "bank_refresh_steps": 100}
        job = parse_job(
            {
                "train": {
                    "batch_size": batch,
                    "queue_size": queue,
                    "negatives": negatives,
                    "batches": {"type": "gps_neighbours", "neighbours": 32, "draw": 32, "range": 128},
                    "device": device,
                }
            }
        )
        for attempt in ("first (builds the lists)", "later (reads them)") if not bank else ("bank: true",):
            log(f"scale: trial start-up, {attempt}")
            start = time.perf_counter()
            trainer = Trainer(job, data)
            trainer.model.queue.push(torch.from_numpy(coords(queue, 3)).float().to(on))  # full, as after 8 steps
            startup_s[attempt] = time.perf_counter() - start
            figures.append([f"trial start-up, {attempt}", f"{startup_s[attempt]:.1f} s", rss_gib()])
        log(f"scale: batch assembly and {steps} steps, bank {bank}")
        start = time.perf_counter()
        batches = iter(trainer.batches())
        first = next(batches)  # the sampler assembles the whole epoch's batches before its first
        figures.append([f"an epoch's batch assembly (bank: {bank})", f"{time.perf_counter() - start:.1f} s", ""])
        times = []
        for step in range(steps + 1):  # the first is a warm-up (and the bank's first refresh)
            idx, views = first if step == 0 else next(batches)
            start = time.perf_counter()
            features = torch.from_numpy(train.read(idx, views)).to(on).float()
            trainer.train_step(features, trainer.train_coords[idx].to(on), idx)
            if on.type == "cuda":
                torch.cuda.synchronize(on)
            times.append(time.perf_counter() - start)
        step_s[bank] = float(np.median(times[1:]))
        figures.append(
            [
                f"one step, read + train, 64 mined (bank: {bank}), median of {steps}",
                f"{step_s[bank]:.2f} s (first: {times[0]:.1f} s)",
                rss_gib(),
            ]
        )
        del trainer
    peak = peak_rss_bytes() / 2**30
    epoch_steps = -(-MP16_ROWS // MP16_BATCH)
    lines = table(["what", "time", "host RSS after, GiB (anonymous + mapped files)"], figures)
    where = "this machine's CPU" if on.type == "cpu" else torch.cuda.get_device_name(on)
    text = f"""
## A trial at {rows:,} training rows, {gallery_size:,} gallery points ({where})

{lines}

Peak host RSS of the process: {peak:.2f} GiB. An MP-16 epoch ({epoch_steps:,} steps of {MP16_BATCH}) at these
step times would take {step_s[False] * epoch_steps / 3600:.2f} h without the bank and
{step_s[True] * epoch_steps / 3600:.2f} h with it (**extrapolated, not measured**).
"""
    return text, {"startup_s": startup_s, "step_s": step_s, "peak_gib": peak, "epoch_steps": epoch_steps}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=MP16_ROWS)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None, help="where the caches go (default: a temporary folder)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.folder is not None:
        return run(args.rows, args.gallery, args.steps, args.folder, args.device)[0]
    with tempfile.TemporaryDirectory() as tmp:
        return run(args.rows, args.gallery, args.steps, Path(tmp), args.device)[0]


if __name__ == "__main__":
    print(main())
