"""Memory: peak resident memory of a trial-like process with a small and a very large feature cache.

Each measurement is a fresh subprocess (``python -m bench.bench_memory --child TRAIN VAL STEPS
GALLERY READER``) that does what a trial does: opens the caches (``open_cache``, through
``Trainer``), builds a ``Trainer`` (quickstart sizes: batch 128, queue 1024, location-encoder
width 256; gallery: the training coordinates thinned to GALLERY points, the same for both
caches), runs STEPS training steps reading the batches with READER (``pread``: ``os.pread``
through ``FeatureCache.read``, as the trainer does; ``memmap``: indexing the memory map, as it
did before), then one evaluation, and prints its memory as JSON. The caches hold random float16
features, 1 view x 768, written in chunks with ``CacheWriter`` into a temporary folder that is
deleted afterwards.

Reported: peak RSS (VmHWM from /proc/self/status, the high-water mark of what ``top`` shows;
``getrusage``'s maxrss is not used: a child inherits it from the parent at fork); peak anonymous
memory (the process's own allocations; RssAnon sampled every 10 ms); and the cache's pages
mapped into the process at the end (from /proc/self/smaps): RSS also counts mapped file pages
(libraries, and the memory-mapped cache), which are shared page cache the kernel can drop at
any time, not allocations.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import Result, log, proc_status_kb, table

FEATURE_DIM = 768
CHUNK = 65_536
MB = 2**20


def build_cache(path: Path, n: int, seed: int) -> Path:
    """A cache of ``n`` random images (1 view), written chunk by chunk (a 1M cache needs little memory)."""
    from geoloc.data.cache import CacheWriter

    rng = np.random.default_rng(seed)
    writer = CacheWriter(path, n, 1, FEATURE_DIM)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        writer.features[start : start + m] = rng.standard_normal((m, 1, FEATURE_DIM), dtype=np.float32).astype(
            np.float16
        )
    writer.coords[:] = np.column_stack([rng.uniform(-80, 80, n), rng.uniform(-180, 180, n)])
    return writer.commit({"backbone": "random", "views": 1, "feature_dim": FEATURE_DIM})


# -- the child process --------------------------------------------------------------------------


def _mapped_kb(path: Path) -> int:
    """Resident pages of the mappings of ``path`` (the memory-mapped cache), from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's header line
                inside = len(head) == 6 and head[5].strip() == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


class PeakSampler(threading.Thread):
    """Records the highest RssAnon seen, every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval, self.peak_anon = interval, 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        self.peak_anon = max(self.peak_anon, proc_status_kb("RssAnon"))

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()


def child(train: str, val: str, steps: int, gallery_size: int, reader: str) -> dict:
    import torch

    from geoloc.study.config import parse_job
    from geoloc.tasks.geoclip.trainer import Trainer

    sampler = PeakSampler()
    baseline_kb = proc_status_kb("VmRSS")
    sampler.start()
    cfg = parse_job(
        {
            "data": {"train": train, "val": [val], "gallery": "train", "gallery_size": gallery_size},
            "model": {"hidden_dim": 256},
            "train": {"batch_size": 128, "queue_size": 1024, "lr": 3e-4, "device": "cpu"},
        }
    )
    trainer = Trainer(cfg)  # opens the caches with open_cache (memory-mapped)
    init_peak_kb = proc_status_kb("VmHWM")
    cache = trainer.data.train
    read = cache.read if reader == "pread" else lambda idx, views: cache.features[idx, views]
    reads_agree, done = True, 0
    while done < steps:  # epochs as Trainer.train_one_epoch runs them, until STEPS steps
        for idx, views in trainer.batches():
            rows = read(idx, views)
            if done == 0 and reader == "pread":  # the same rows as the memory map gives (then unmapped again)
                reads_agree = bool(
                    np.array_equal(rows, np.load(Path(train) / "features.npy", mmap_mode="r")[idx, views])
                )
            trainer.train_step(torch.from_numpy(np.asarray(rows, dtype=np.float32)), trainer.train_coords[idx])
            done += 1
            if done == steps:
                break
    metrics = trainer.evaluate()
    sampler.stop()
    return {
        "n": len(cache),
        "reader": reader,
        "steps": done,
        "reads_agree": reads_agree,
        "baseline_mb": baseline_kb / 1024,
        "init_peak_mb": init_peak_kb / 1024,
        "peak_rss_mb": proc_status_kb("VmHWM") / 1024,
        "peak_anon_mb": sampler.peak_anon / 1024,
        "cache_mapped_mb": _mapped_kb(Path(train).resolve() / "features.npy") / 1024,
        "acc_2500km": metrics["acc_2500km"],
    }


# -- the parent --------------------------------------------------------------------------------

READERS = {
    "memmap": "indexing the memory map, as `Trainer.train_one_epoch` read before",
    "pread": "`os.pread` of the chosen rows, `FeatureCache.read`, as `Trainer.train_one_epoch` reads now",
}


def measure(train: Path, val: Path, steps: int, gallery_size: int, reader: str) -> dict:
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_memory",
            "--child",
            str(train),
            str(val),
            str(steps),
            str(gallery_size),
            reader,
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one torch thread (Trainer's cpu_share): quicker on a busy machine
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start}


KEYS = {  # figure -> column
    "init_peak_mb": "peak RSS up to the end of Trainer()",
    "peak_rss_mb": "peak RSS",
    "peak_anon_mb": "peak anonymous",
    "cache_mapped_mb": "cache pages mapped at the end",
    "wall_s": "child wall time (s)",
}


def run(
    small: int = 10_000,
    large: int = 1_000_000,
    n_val: int = 1000,
    steps: int = 300,
    repeats: int = 2,
    parallel: int = 1,
) -> Result:
    """Each (reader, cache) child runs ``repeats`` times, small and large interleaved; medians reported.

    ``parallel`` children run at once (the full run: 1, one after the other). Each child measures its
    own process, and the caches' pages are in the page cache either way, so running several at once
    leaves the memory figures as they are and stretches only the wall times; a small child spends
    most of its time importing torch, so a smoke run starts them together.
    """
    from concurrent.futures import ThreadPoolExecutor

    gallery_size = min(10_000, small)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        log(f"memory: writing caches of {small:,} and {large:,} images into {tmp}")
        val = build_cache(tmp / "val", n_val, seed=1)
        caches = {small: build_cache(tmp / "small", small, seed=2)}
        start = time.perf_counter()
        caches[large] = build_cache(tmp / "large", large, seed=3)
        build_s = time.perf_counter() - start
        large_bytes = os.path.getsize(caches[large] / "features.npy")
        runs: dict[tuple[str, int], list[dict]] = {(reader, n): [] for reader in READERS for n in caches}
        jobs = [(i, reader, n) for i in range(repeats) for reader in READERS for n in caches]

        def one(job: tuple[int, str, int]) -> dict:
            i, reader, n = job
            log(f"memory: child {i + 1}/{repeats} on {n:,} images ({reader}), {steps} steps + 1 evaluation")
            return measure(caches[n], val, steps, gallery_size, reader)

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:  # map: results in the order of jobs
            for (_, reader, n), r in zip(jobs, pool.map(one, jobs), strict=True):
                runs[reader, n].append(r)

    agreed = all(r["steps"] == steps and r["reads_agree"] for rs in runs.values() for r in rs)
    results = {key: {k: float(np.median([r[k] for r in rs])) for k in KEYS} for key, rs in runs.items()}
    rows, diffs = [], {}
    for reader in READERS:
        a, b = results[reader, small], results[reader, large]
        diffs[reader] = {k: b[k] - a[k] for k in KEYS}
        for n, r in ((small, a), (large, b)):
            rows.append([reader, f"{n:,}", *(f"{r[k]:.0f}" for k in KEYS)])
        rows.append([reader, "**difference**", *(f"**{diffs[reader][k]:+.0f}**" for k in KEYS)])
    verdict = lambda d: "under" if d < 100 else "**over**"  # noqa: E731
    lines = "\n".join(
        f"- {reader} ({what}): peak RSS {diffs[reader]['peak_rss_mb']:+.0f} MiB "
        f"({verdict(diffs[reader]['peak_rss_mb'])} "
        f"the 100 MiB limit), peak anonymous memory {diffs[reader]['peak_anon_mb']:+.0f} MiB "
        f"({verdict(diffs[reader]['peak_anon_mb'])} it)."
        for reader, what in READERS.items()
    )
    spread = max(max(r["peak_rss_mb"] for r in rs) - min(r["peak_rss_mb"] for r in rs) for rs in runs.values())
    baseline_mb = np.median([r["baseline_mb"] for rs in runs.values() for r in rs])
    at_once = f"; {parallel} children at once, so their wall times overlap" if parallel > 1 else ""
    body = f"""
Trial-like process in a fresh subprocess: `Trainer` on a cache of N random images (1 view x 768
float16; the {large:,}-image cache is {large_bytes / MB:,.0f} MiB on disk, written in {build_s:.0f} s), validation cache
of {n_val:,} images, gallery = training coordinates thinned to {gallery_size:,}, quickstart model sizes,
{steps} training steps and one evaluation, one torch thread. The caches were just written, so their pages were in
the page cache: the case where a memory map shows most of them. Each configuration ran
{repeats} times (interleaved{at_once}); medians in MiB (identical runs differed by up to {spread:.0f} MiB in peak
RSS: allocator noise). RSS right after the imports: {baseline_mb:.0f} MiB, mostly torch's libraries.

{table(["reader", "images", *KEYS.values()], rows)}

From {small:,} to {large:,} images:

{lines}

With the memory map, RSS grows with the cache pages the run touched: {steps} x 128 random rows
of 1.5 KiB each, but for each faulting page the kernel also maps the pages around it (fault-around,
64 KiB) that sit in the page cache; `madvise(MADV_RANDOM)` does not stop that (checked on this
kernel, Linux {platform.release()}). Those pages are page cache shared with any reader of the file, which
the kernel can reclaim; they are not memory the trial allocated, but `top`, psutil's RSS and the
OOM killer's score count them. Reading the rows with `os.pread` maps nothing (both readers
returned the same rows). What does grow with N is the coordinates: N x 2 float64 kept in memory,
their float32 copy, each epoch's permutation and view draws (40 bytes per image, {large * 40 / MB:.0f} MiB at
{large:,}), and transients while opening (`np.unique` of the training coordinates for the gallery,
coordinate checks: about {large * 35 / MB:.0f} MiB more at the peak).
"""
    figures = {"diffs": diffs, "results": {f"{k[0]}/{k[1]}": v for k, v in results.items()}}
    return Result(f"Memory: {small:,} vs {large:,}-image cache", body, agreed, figures)


def main(quick: bool = False) -> Result:
    if quick:  # a smoke run: the children at once, as many as there are cores
        return run(small=2_000, large=20_000, n_val=200, steps=10, repeats=1, parallel=len(os.sched_getaffinity(0)))
    return run()


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])))
    else:
        print(main("--quick" in sys.argv).markdown())
