"""GPU readiness: ``python -m bench.gpu_check`` (``make gpu-check``), at most 5 minutes on one GPU.

Prints a ``PASS <check>: <figures>`` or ``FAIL <check>: <error>`` line as each check finishes and
rewrites the table ``bench/GPU.md`` (card, versions, date, command, one row per check, the
targets) after each, so a run cut short keeps what finished. Exit status: 0 when every check
passed, 1 when any failed, 2 when something it needs cannot be imported. A check passes when it
ran and its assertions held; the targets (below) are benchmarks, reported as met or missed, and
do not change the exit status. Without a visible GPU it prints one line and exits 0 at once.

What the GPU node needs: Python 3.12 and torch (plus numpy, pandas, pyyaml, tqdm, tensorboard),
run from the repository root; no Ray and no install of this project. The rest (pydantic,
open_clip and geoclip's 100K gallery, with what they import) comes from the wheels in
``bench/wheels/`` that ``make gpu-wheels`` downloads on a machine with the project's ``.venv``:
a missing or older package is installed from them into a temporary folder put first on
``sys.path``. ``geoclip`` itself is never imported (its import pulls in transformers); its
folder is found with ``importlib.util.find_spec``.

The checks, at the published sizes (768-d features, batch 512, queue 4096 full, the published
model ``ModelConfig()``), on random features whose coordinates are drawn from the 100K gallery.
The training cache is written to disk with ``CacheWriter`` (30 batches, 2 views), so the trainer's
feed is the one a trial uses.

- **placement**: after an epoch and an evaluation, every tensor ``Trainer.tensors()`` yields
  (model, optimiser state, queue, feed, evaluators) is on the GPU; stragglers are named.
- **today vs now**: one epoch of ``Trainer.train_one_epoch`` against one epoch of today's path,
  rebuilt here from the commit before this work (``legacy_epoch``): each batch read with
  ``FeatureCache.read`` (``os.pread``), converted to float32 on the host and copied from pageable
  memory, then the step as it was (``torch.isfinite(loss)`` and ``loss.item()`` each step, the
  queue's position and fill read back from the GPU with ``int()``, the projection's sqrt(3) made
  on the device each call, a default ``Adam``). Same card, same model, bf16, epochs interleaved
  (today, now, today, now, ...); the speed-up is the median of the per-round ratios. Target: 5x.
- **step bf16 / fp32 / tf32**: ``Trainer.train_step`` on one batch already on the GPU.
  *Wall* ms/step = the time of N steps with one synchronisation at the end, divided by N.
  *Host* ms/step = the median time the Python thread spends in one ``train_step`` call, each
  call started on an idle GPU (synchronised before, not inside): the cost of issuing a step when
  the host is not held up by the GPU. *GPU* ms/step (busy) = the time covered by the CUDA kernels
  and copies of N steps in ``torch.profiler`` (``ProfilerActivity.CUDA``; the union of their
  intervals, so overlapping work counts once), divided by N. Wall close to GPU busy means the GPU
  is the limit; close to host, the host is.
  *GPU span* = CUDA events recorded before and after one step started on an idle GPU: busy time
  plus the gaps where the GPU waited for the host (it needs no profiler).
  *MFU* = FLOPs of one step (forward and backward; ``torch.utils.flop_counter.FlopCounterMode``,
  which counts matrix products) / wall time / the card's dense peak in that arithmetic. The
  peak comes from the spec sheet for H100, H200 and A100 (``PEAKS``); on other cards it is
  measured (an 8192^3 matrix product in that dtype, "measured peak"). The row also gives the
  location encoder alone: forward and backward of ``model.location_encoder`` on batch + queue
  (4,608 points), both under ``Trainer.precision()``, timed with CUDA events, its FLOPs counted
  the same way. Target: its MFU at least 40% in bf16.
- **graph step**: the whole step as one CUDA graph (``train.graph_step``). Two fp32 trainers with the
  graph step's optimiser, one replaying its graph and one eager, train an epoch to the same losses,
  queue and weights (the module graphs' tolerance, 1e-4); then bf16 epochs of today's path, of the
  default step (module graphs) and of the graph step, interleaved: ms per step, the graph step's host
  time per call and its speed-up over today's path (target 5x, as "today vs now"), and an MP-16
  epoch (9,083 steps of 512) at its time per step (from the step; target 15 s on an H100).
- **resume**: a checkpoint saved by a GPU trainer after two steps loads into a fresh GPU trainer
  and a fresh CPU trainer (fp32); every model tensor must equal the saved one exactly, the learning
  rate too, and one more step must run on each. Again with ``train.graph_step`` after enough steps
  to capture (its capturable optimiser's state and device learning rate in the checkpoint).
- **lists**: similarity lists (``geoloc.parts.similarity``). On 1,000 x 16-d unit rows without
  near-tied scores, k 9: the GPU's exact lists, its re-scored lists (TF32 candidates, the way above
  200K keys), faiss's exact flat index (CPU) and a float64 brute force must be equal. Then the
  re-scored way on 4.65M x 512-d clustered unit rows, k 128: 65,536 query rows against all keys,
  timed and scaled to 4.65M rows (rows are independent), its recall against exact fp32 lists
  measured on 1,000 rows. Target: all 4.65M rows' lists in at most 2 minutes.
- **bank**: a bf16 step at the published sizes with 64 mined negatives per positive from the 100K
  gallery, encoded with the batch and looked up in the memory bank (``train.negatives.bank``,
  refreshed every 100 steps: the lookup step plus a hundredth of one timed refresh), each against
  the published step. Target: the bank's at most 1.3x.
- **scale**: ``bench.scale`` on the GPU at 1M training rows (float16, on disk) and the 100K gallery: a
  trial's start-up building its lists and reading them, steps with 64 mined negatives per positive
  read from the cache with and without the bank, an MP-16 epoch at those steps (from the steps), and
  the process's host peak (``VmHWM``; the checking process's, which holds the other checks' data).
- **eval 100K**: ``Trainer.evaluate`` of 3,000 TenCrop images (10 views, an on-disk cache)
  against the 100K gallery: seconds of the first and of a second call, and the peak of
  ``torch.cuda.max_memory_allocated`` above what was allocated before (peak stats reset).
  ``setup`` is the trainer's construction (the evaluator's gallery ceiling is computed there).
- **eval 1M**: the same against a 1M gallery of seeded points uniform on the sphere.
- **memory per trial**: one training process (spawned, so it holds nothing else) at batch 1024,
  queue 16384, bf16: peak allocated and reserved GPU memory after a warm-up epoch and one more, and
  the process's own host peak (``VmHWM``; ``ru_maxrss`` would count the checking process it was
  forked from: the 9.66 GiB of the first GPU run, ``bench.common.peak_rss_bytes``).
- **packing**: 1, then 4 training processes on the card at once (``multiprocessing`` spawn, no
  Ray), each a ``Trainer(cfg, data, gpu_share=1/K)`` at the published size in bf16: a warm-up
  epoch, a barrier, then 6 timed epochs. Aggregate throughput = all processes' steps / (last
  end - first start). Target: 4 processes at least 2x the throughput of one.
- **extraction**: ViT-L-14 with random weights (``geoloc.data.backbone.load_backbone``,
  ``pretrained="random"``, image tower only), fp16 autocast under ``inference_mode`` as the
  extraction runs it, batches of 256 random 224x224 images: images/s and MFU. Where open_clip
  cannot be imported on the node (it needs torchvision built for the node's torch), the same
  architecture in plain torch (``PlainViT``, same layers and FLOPs) is timed, and the row says so.
- **cross-view epoch**: one end-to-end epoch of the cross-view task (Sample4Geo's ConvNeXt-B,
  random weights, 384 x 768 panoramas and 384 x 384 tiles, batch 32, bf16) on 256 pairs of the
  offline cross-view benchmark and its evaluation on 128: seconds, pairs/s, peak GPU memory.

``--device cpu --quick`` runs every check at tiny sizes on the CPU (2 processes instead of 4,
a tiny ViT), the script's own test (tests/test_gpu_check.py), so that the GPU run meets no code
that never ran; its table goes to ``--out`` (default ``bench/out/GPU-quick.md``, as for ``--only
CHECK ...``, which runs some of the checks, e.g. again after a failure). Product API
this script expected but did not find is listed at the end of the run and in the table.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import faulthandler
import importlib.metadata
import importlib.util
import math
import multiprocessing
import os
import platform
import queue as queue_module
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoloc.parts.precision import tf32  # torch alone: importable before the wheels are installed

from .common import interleave, median, paired_speedup, peak_rss_bytes, table

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "bench" / "wheels"
GPU_REPORT = ROOT / "bench" / "GPU.md"
QUICK_REPORT = ROOT / "bench" / "out" / "GPU-quick.md"
BUDGET_S = 300  # the whole run on the GPU
CHECK_START_LIMIT_S = 270  # a check that has not started by then is skipped (FAIL), so the run stays in budget
HANG_GUARD_S = 340  # a run still going then (a hung kernel or process) prints its stacks and exits

# Wheel distribution (normalised) -> the module it provides. A wheel is installed when its module
# is missing or its distribution is older than the wheel; torchvision only when missing (it must
# match the node's torch build, so an existing one is never replaced).
WHEEL_MODULES = {
    "geoclip": "geoclip",
    "open_clip_torch": "open_clip",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic_core",
    "annotated_types": "annotated_types",
    "typing_inspection": "typing_inspection",
    "typing_extensions": "typing_extensions",
    "ftfy": "ftfy",
    "wcwidth": "wcwidth",
    "regex": "regex",
    "torchvision": "torchvision",
    "timm": "timm",  # the cross-view backbones
    "huggingface_hub": "huggingface_hub",  # timm imports it (nothing is downloaded)
    "safetensors": "safetensors",
    "faiss_cpu": "faiss",  # the similarity lists' exact cross-check
    "packaging": "packaging",  # faiss imports it
}
ONLY_IF_MISSING = {"torchvision"}
NEEDED = ("pydantic", "open_clip", "geoclip")  # modules the checks need beyond the node's own

# Dense peak TFLOP/s (bf16 = fp16, tf32, fp32) from the spec sheets; the first substring of the
# device name that matches wins, so the PCIe / NVL variants come before the SXM parts.
PEAKS = [
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}, "H100 PCIe spec sheet"),
    ("H100 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}, "H100 NVL spec sheet"),
    ("H200 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}, "H200 NVL spec sheet"),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}, "H100/H200 SXM spec sheet"),
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}, "H100/H200 SXM spec sheet"),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}, "A100 spec sheet"),
]

VIT_L_14 = {"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14}}
VIT_TINY = {  # --quick: the same kind of model, small enough for a CPU
    "embed_dim": 32,
    "vision_cfg": {"image_size": 56, "layers": 2, "width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}


@dataclass(frozen=True)
class Sizes:
    name: str
    feature_dim: int
    batch: int
    queue: int
    model: dict  # ModelConfig overrides ({} = the published model)
    epoch_batches: int  # batches in the on-disk training cache: one epoch
    views: int  # views per image in the training cache
    steps: int  # timed steps per step measurement
    warmup: int  # untimed steps before
    rounds: int  # interleaved rounds of today vs now
    eval_images: int
    eval_views: int
    big_gallery: int
    mem_batch: int
    mem_queue: int
    packed: int  # processes on the card at once
    packed_epochs: int  # timed epochs per process
    vit: dict  # open_clip model config of the extraction
    vit_name: str | None  # an open_clip model name, or None: the config above, written to a file
    vit_batch: int
    vit_batches: int
    peak_n: int  # side of the matrix product that measures a peak
    small_gallery: int  # gallery of the training checks
    eval_gallery: int | None  # points of the 100K gallery the evaluation uses (None: all)
    val_images: int  # evaluation set of the training checks
    list_keys: int  # embeddings of the similarity lists' timing (MP-16's 4.65M)
    list_rows: int  # query rows timed against all of them (scaled to list_keys rows)
    scale: tuple[int, int, int, int, int]  # bench.scale's rows, gallery, steps, batch, queue


FULL = Sizes(
    "published", 768, 512, 4096, {}, 30, 2, 30, 5, 3, 3000, 10, 1_000_000, 1024, 16384, 4, 6,
    VIT_L_14, "ViT-L-14", 256, 5, 8192, 2000, None, 256, 4_650_000, 65_536,
    (1_000_000, 100_000, 30, 512, 4096),
)  # fmt: skip
QUICK = Sizes(
    "quick", 64, 32, 64, {"hidden_dim": 64, "image_hidden_dim": 64, "embed_dim": 32, "rff_features": 16},
    4, 2, 3, 1, 2, 30, 10, 20_000, 64, 256, 2, 1, VIT_TINY, None, 2, 1, 256, 500, 5000, 32, 20_000, 2_000,
    (3000, 2000, 1, 96, 64),  # 96: one anchor with its 32 neighbours and 32 drawn
)  # fmt: skip


def say(line: str) -> None:
    print(line, flush=True)


# -- what the node lacks, from the wheels ------------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:4])


def _wheel_name(path: Path) -> tuple[str, str]:
    """(normalised distribution, version) of a wheel file name."""
    dist, version = path.name.split("-")[:2]
    return re.sub(r"[-_.]+", "_", dist).lower(), version


def wheels_to_install(wheels: list[Path]) -> list[Path]:
    """The wheels whose module is missing here, or whose distribution here is older than the wheel."""
    chosen = []
    for wheel in wheels:
        dist, version = _wheel_name(wheel)
        module = WHEEL_MODULES.get(dist, dist)
        if importlib.util.find_spec(module) is None:
            chosen.append(wheel)
            continue
        if dist in ONLY_IF_MISSING:
            continue
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue  # importable from somewhere without metadata (the source tree): keep it
        if _version_key(have) < _version_key(version):
            chosen.append(wheel)
    return chosen


def install_wheels(wheels: list[Path], target: Path) -> str:
    """Install into ``target`` with pip (offline, no dependencies); unpack the wheels where pip is missing."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--disable-pip-version-check", "--target", str(target), *map(str, wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode == 0:
        return "pip"
    for wheel in wheels:  # a wheel is a zip laid out for site-packages
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
    return f"unzip (pip: {(done.stderr.strip().splitlines() or ['failed'])[-1]})"


def provide_needs(wheel_dir: Path) -> tuple[list[str], list[str]]:
    """Make pydantic, open_clip and geoclip's folder importable: (what came from the wheels, what is still missing)."""
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    chosen = wheels_to_install(wheels) if missing else []
    if chosen:
        target = Path(tempfile.mkdtemp(prefix="gpu_check_wheels."))
        atexit.register(shutil.rmtree, target, True)
        how = install_wheels(chosen, target)
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
        for dist in (_wheel_name(w)[0] for w in chosen):  # a newer copy of a module torch imported already
            sys.modules.pop(WHEEL_MODULES.get(dist, dist), None)
        installed = [f"{_wheel_name(w)[0]} {_wheel_name(w)[1]}" for w in chosen]
        return [f"{', '.join(installed)} (from {os.path.relpath(wheel_dir, ROOT)}, {how})"], [
            m for m in NEEDED if importlib.util.find_spec(m) is None
        ]
    return [], missing


def product_modules() -> None:
    """Import every project module the checks use (none of them imports Ray, Optuna or moocore)."""
    import geoloc.data  # noqa: F401
    import geoloc.data.backbone  # noqa: F401
    import geoloc.data.cache  # noqa: F401
    import geoloc.data.synthetic  # noqa: F401
    import geoloc.geo  # noqa: F401
    import geoloc.study.config  # noqa: F401
    import geoloc.tasks.geoclip.evaluate  # noqa: F401
    import geoloc.tasks.geoclip.trainer  # noqa: F401


API_GAPS: set[str] = set()  # product API the checks expected and did not find


def gap(what: str) -> None:
    API_GAPS.add(what)


# -- small tools ----------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], n: int, device: torch.device, warmup: int = 2) -> float:
    """Wall seconds per call of ``fn`` over ``n`` calls (CUDA events on a GPU, one sync at the end)."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3 / n


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # kineto's activities that occupy the GPU


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time covered by at least one of them."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def kernel_seconds(fn: Callable[[], object], n: int, device: torch.device) -> float | None:
    """Time the GPU is busy with kernels and copies during ``n`` calls, per call (None on the CPU).

    The union of the intervals of the device events ``torch.profiler`` records, so that concurrent
    work is counted once; annotations of ranges on the GPU's timeline are not work and are left out.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            fn()
        sync(device)
    if device.type != "cuda":
        return None
    intervals = [
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == DeviceType.CUDA
        and getattr(e, "activity_type", None) in (*DEVICE_WORK, None)
        and not (getattr(e, "activity_type", None) is None and getattr(e, "is_user_annotation", False))
    ]
    us = busy_us(intervals)
    if us <= 0:
        raise RuntimeError("the profiler recorded no CUDA kernels (CUPTI unavailable?)")
    return us / 1e6 / n


def host_hotspots(fn: Callable[[], object], n: int, device: torch.device, top: int = 6) -> str:
    """Where a call's host time goes: the ``top`` operators by self CPU time per call, and the
    kernel launches per call (what CUDA graphs save)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
        sync(device)
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
    parts = [f"{e.key} {e.self_cpu_time_total / n / 1e3:.2f} ms ({e.count / n:.0f}x)" for e in averages[:top]]
    return f"{launches / n:.0f} kernel launches per call; host time by operator: " + ", ".join(parts)


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:.2f} GiB"


def num(x: float) -> str:
    """A figure with three significant digits, or one decimal from 100 up (so tiny --quick figures are not 0.0)."""
    return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.3g}"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def peak_tflops(device: torch.device, precision: str, n: int, cache: dict) -> tuple[float, str]:
    """The card's dense peak in ``precision`` (bf16 also stands for fp16): spec sheet, or measured."""
    if precision in cache:
        return cache[precision]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    for part, peaks, source in PEAKS:
        if device.type == "cuda" and part in name:
            cache[precision] = (peaks[precision], source)
            return cache[precision]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with tf32(precision == "tf32"):
        seconds = seconds_per_call(lambda: a @ b, 3 if device.type == "cuda" else 1, device, warmup=1)
    cache[precision] = (2 * n**3 / seconds / 1e12, f"measured peak ({n}^3 {precision} matmul)")
    return cache[precision]


# -- rows and the report ----------------------------------------------------------------------------------


@dataclass
class Row:
    check: str
    ok: bool = True
    figures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    target: str = ""  # the benchmark target this row measures, if any
    measured: str = ""
    met: bool | None = None
    seconds: float = 0.0

    def add(self, text: str) -> None:
        self.figures.append(text)

    def fail(self, error: str) -> None:
        self.ok = False
        self.errors.append(error)

    def attempt(self, label: str, fn: Callable[[], object]):
        """Run one part of a check; an error there fails the row but keeps its other figures."""
        try:
            return fn()
        except Exception as e:
            self.fail(f"{label}: {one_line(e)}")
            return None

    def line(self) -> str:
        text = "; ".join(self.figures)
        if self.ok:
            return f"PASS {self.check}: {text}"
        return f"FAIL {self.check}: {' | '.join(self.errors)}" + (f" (figures: {text})" if text else "")


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text[:400]}"


def header(args, sizes: Sizes, device: torch.device, provided: list[str], peaks: dict) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = f"{props.name} ({props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
        card += f"compute capability {props.major}.{props.minor})"
    else:
        card = f"none: --device cpu ({platform.processor() or platform.machine()})"
    rows = [
        ["card", card],
        ["torch / CUDA / cuDNN", f"{torch.__version__} / {torch.version.cuda} / {torch.backends.cudnn.version()}"],
        ["python", platform.python_version()],
        ["CPUs usable", len(os.sched_getaffinity(0))],
        ["date", time.strftime("%Y-%m-%d %H:%M %Z")],
        ["command", "python -m bench.gpu_check " + " ".join(args.argv)],
        ["sizes", sizes.name + (" (tiny sizes: a test of the script, not figures)" if sizes is QUICK else "")],
        ["from wheels", "; ".join(provided) or "nothing (all present)"],
        ["peaks (dense TFLOP/s)", "; ".join(f"{p} {num(v)} ({src})" for p, (v, src) in peaks.items()) or "-"],
    ]
    return table(["", ""], rows)


def write_report(path: Path, head: str, rows: list[Row], elapsed: float) -> None:
    checks = [
        [
            r.check,
            "PASS" if r.ok else "**FAIL**",
            "; ".join(r.figures + [f"error: {e}" for e in r.errors]).replace("|", "/"),
            r.target or "-",
            f"{r.seconds:.0f} s",
        ]
        for r in rows
    ]
    targets = [
        [r.target, r.measured or "-", {True: "yes", False: "**no**", None: "not measured"}[r.met]]
        for r in rows
        if r.target
    ]
    gaps = "\n".join(f"- {g}" for g in sorted(API_GAPS)) or "none"
    text = f"""# GPU readiness check

{head}

## Checks ({elapsed:.0f} s in all)

{table(["check", "result", "figures", "target", "time"], checks)}

## Targets (benchmarks: they do not fail the check)

{table(["target", "measured", "met"], targets)}

Product API expected and not found: {gaps}

Definitions (wall, host and GPU time, MFU, aggregate throughput): the docstring of `bench/gpu_check.py`.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- data and trainers ------------------------------------------------------------------------------------


def uniform_sphere(n: int, seed: int) -> np.ndarray:
    """(n, 2) (lat, lon) degrees, uniform on the sphere."""
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return np.stack([lat, rng.uniform(-180.0, 180.0, n)], axis=1)


def write_cache(path: Path, n: int, views: int, dim: int, coords: np.ndarray, seed: int):
    """An on-disk feature cache of random float16 features (``CacheWriter``), opened."""
    from geoloc.data.cache import CacheWriter, open_cache

    rng = np.random.default_rng(seed)
    writer = CacheWriter(path, n, views, dim)
    for start in range(0, n, 4096):
        stop = min(n, start + 4096)
        writer.features[start:stop] = rng.standard_normal((stop - start, views, dim), dtype=np.float32)
    writer.coords[:] = coords
    writer.commit({"backbone": "random", "source": "bench.gpu_check"})
    return open_cache(path)


class Context:
    """What the checks share: sizes, device, the data written once, the trainers built once."""

    def __init__(self, sizes: Sizes, device: torch.device):
        self.sizes, self.device = sizes, device
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check."))
        atexit.register(shutil.rmtree, self.work, True)
        self.peaks: dict[str, tuple[float, str]] = {}
        self.trainers: dict[str, object] = {}
        self._data = None

    @property
    def gallery(self) -> np.ndarray:
        from geoloc.data.synthetic import geoclip_gallery_coords

        if not hasattr(self, "_gallery"):
            self._gallery = geoclip_gallery_coords()
        return self._gallery

    def data(self):
        """Training cache (on disk), a small evaluation set and gallery; also saved for spawned processes."""
        if self._data is None:
            from geoloc.data import Data

            s, rng = self.sizes, np.random.default_rng(0)
            n = s.epoch_batches * s.batch
            picks = rng.choice(len(self.gallery), n + s.val_images + s.small_gallery + s.mem_queue, replace=False)
            coords = self.gallery[picks]
            train = write_cache(self.work / "train", n, s.views, s.feature_dim, coords[:n], seed=1)
            rest = coords[n:]
            val = write_cache(self.work / "val", s.val_images, 1, s.feature_dim, rest[: s.val_images], seed=2)
            small = rest[s.val_images : s.val_images + s.small_gallery]
            np.save(self.work / "gallery.npy", small)
            np.save(self.work / "queue.npy", rest[s.val_images + s.small_gallery :])
            self._data = Data(train=train, val={"val": val}, gallery=small)
        return self._data

    def queue_coords(self, size: int) -> torch.Tensor:
        self.data()
        return torch.from_numpy(np.load(self.work / "queue.npy")[:size]).float()

    def trainer(self, precision: str):
        """The published-size trainer in ``precision``, queue full, built once."""
        if precision not in self.trainers:
            s = self.sizes
            trainer = new_trainer(job(s, precision, self.device.type), self.data())
            trainer.model.queue.push(self.queue_coords(s.queue).to(self.device))
            self.trainers[precision] = trainer
        return self.trainers[precision]

    def batch(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One fixed training batch (view 0 of the first rows), float32, on ``device``."""
        device = device or self.device
        cache, b = self.data().train, self.sizes.batch
        features = torch.from_numpy(np.asarray(cache.features[:b, 0], dtype=np.float32))
        return features.to(device), torch.from_numpy(cache.coords[:b]).float().to(device)

    def release(self) -> None:
        self.trainers.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def job(sizes: Sizes, precision: str, device: str, batch: int | None = None, queue: int | None = None, **train):
    from geoloc.study.config import parse_job

    train = {
        "batch_size": batch or sizes.batch,
        "queue_size": sizes.queue if queue is None else queue,
        "precision": precision,
        "device": device,
        "seed": 0,
        **train,
    }
    return parse_job({"model": sizes.model, "train": train})


def new_trainer(cfg, data, gpu_share: float = 1.0):
    from geoloc.tasks.geoclip.trainer import Trainer

    return Trainer(cfg, data, gpu_share=gpu_share)


def steps_per_epoch(trainer) -> int:
    return -(-len(trainer.data.train) // trainer.cfg.train.batch_size)


# -- today's path --------------------------------------------------------------------------------------------


def legacy_equal_earth(latlon: torch.Tensor) -> torch.Tensor:
    """``geoloc.geo.equal_earth_projection`` as it was: sqrt(3) made as a tensor on the device each call."""
    from geoloc.geo import A1, A2, A3, A4, SF

    lat, lon = torch.deg2rad(latlon[:, 0]), torch.deg2rad(latlon[:, 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0, dtype=latlon.dtype, device=latlon.device))
    theta = torch.asin(sqrt3 / 2 * torch.sin(lat))
    denominator = 3 * (9 * A4 * theta**8 + 7 * A3 * theta**6 + 3 * A2 * theta**2 + A1)
    x = (2 * sqrt3 * lon * torch.cos(theta)) / denominator
    y = A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta
    return (torch.stack((x, y), dim=1) * SF) / 180


class LegacyQueue:
    """``GPSQueue`` as it was: its write position and fill level read back from the GPU (``int()``) each use."""

    def __init__(self, size: int, device: torch.device):
        self.size = size
        self.coords = torch.zeros(size, 2, device=device)
        self.ptr = torch.zeros((), dtype=torch.long, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)

    def contents(self) -> torch.Tensor:
        return self.coords[: int(self.count)]

    @torch.no_grad()
    def push(self, gps: torch.Tensor) -> None:
        if self.size == 0:
            return
        gps = gps[-self.size :]
        idx = (int(self.ptr) + torch.arange(len(gps), device=gps.device)) % self.size
        self.coords[idx] = gps.to(self.coords.dtype)
        self.ptr.fill_((int(self.ptr) + len(gps)) % self.size)
        self.count.fill_(min(self.size, int(self.count) + len(gps)))


class Legacy:
    """Today's training path, on a trainer's model: the epoch loop, feed and step of the commit before.

    The forward pass is written out over the model's parameters by their published names (the
    names the published weights load by), so it stays today's whatever the modules become.
    """

    def __init__(self, trainer):
        self.trainer, self.device = trainer, trainer.device
        cfg = trainer.cfg.train
        self.cache = trainer.data.train
        self.coords = torch.from_numpy(self.cache.coords).float()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.params = trainer.model.state_dict(keep_vars=True)
        self.branches = sorted(
            int(m.group(1))
            for k in self.params
            if (m := re.fullmatch(r"location_encoder\.LocEnc(\d+)\.capsule\.0\.b", k))
        )
        if not self.branches or "image_head.0.weight" not in self.params:
            raise KeyError("the model's parameters do not have the published names (location_encoder.LocEnc0...)")
        self.depth = sum(1 for k in self.params if re.fullmatch(r"location_encoder\.LocEnc0\.capsule\.\d+\.weight", k))
        self.optimizer = torch.optim.Adam(
            [p for p in trainer.model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.queue = LegacyQueue(cfg.queue_size, self.device)
        self.queue.push(trainer.model.queue.contents().detach().clone())
        self.bf16 = cfg.precision == "bf16"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def encode_images(self, features: torch.Tensor) -> torch.Tensor:
        p = self.params
        hidden = F.relu(F.linear(features, p["image_head.0.weight"], p["image_head.0.bias"]))
        return F.normalize(F.linear(hidden, p["image_head.2.weight"], p["image_head.2.bias"]), dim=-1)

    def encode_locations(self, latlon: torch.Tensor) -> torch.Tensor:
        projected, out = legacy_equal_earth(latlon), None
        for i in self.branches:
            p = f"location_encoder.LocEnc{i}."
            with torch.autocast(latlon.device.type, enabled=False):
                vp = 2 * math.pi * projected.float() @ self.params[p + "capsule.0.b"].T.float()
                x = torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)
            for j in range(self.depth):
                layer = f"{p}capsule.{2 * j + 1}."
                x = F.relu(F.linear(x, self.params[layer + "weight"], self.params[layer + "bias"]))
            x = F.linear(x, self.params[p + "head.0.weight"], self.params[p + "head.0.bias"])
            out = x if out is None else out + x
        return F.normalize(out, dim=-1)

    def step(self, features: torch.Tensor, gps: torch.Tensor) -> float:
        scale = self.params["logit_scale"]
        locations = torch.cat([gps, self.queue.contents()])  # noise off (the default): gps_noise returned its input
        with self.autocast():
            image_emb = self.encode_images(features)
            location_emb = self.encode_locations(locations)
            logits = scale.exp() * image_emb @ location_emb.T
        loss = F.cross_entropy(logits.float(), torch.arange(len(gps), device=self.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if scale.requires_grad:
            with torch.no_grad():
                scale.clamp_(0, math.log(100.0))
        self.queue.push(gps)
        return loss.item()

    def epoch(self) -> float:
        """One epoch as ``Trainer.train_one_epoch`` ran it; returns the mean loss."""
        n, bs = len(self.cache), self.trainer.cfg.train.batch_size
        order = torch.randperm(n, generator=self.generator)
        views = torch.randint(self.cache.views, (n,), generator=self.generator)
        losses = []
        for start in range(0, n, bs):
            idx = order[start : start + bs].sort().values.numpy()
            features = torch.from_numpy(self.cache.read(idx, views[idx].numpy()).astype(np.float32)).to(self.device)
            losses.append(self.step(features, self.coords[idx].to(self.device)))
        return float(np.mean(losses))


def legacy_epoch(legacy: Legacy) -> float:
    return legacy.epoch()


# -- the checks ------------------------------------------------------------------------------------------------


def check_placement(ctx: Context) -> Row:
    row = Row("placement")
    trainer = ctx.trainer("bf16")
    trainer.train_one_epoch()
    trainer.evaluate()
    tensors = list(trainer.tensors())
    if not tensors:
        raise AssertionError("Trainer.tensors() yielded nothing")
    wrong = [f"{name} ({t.device})" for name, t in tensors if t.device.type != ctx.device.type]
    nbytes = sum(t.numel() * t.element_size() for _, t in tensors)
    row.add(f"{len(tensors) - len(wrong)}/{len(tensors)} tensors on {ctx.device.type} ({mib(nbytes)})")
    row.add(
        "training cache resident on the device" if trainer.feed.resident else "training cache streamed from the host"
    )
    if wrong:
        row.fail(f"not on {ctx.device.type}: {', '.join(wrong[:12])}" + (" ..." if len(wrong) > 12 else ""))
    return row


def check_syncs(ctx: Context) -> Row:
    """Host-GPU synchronisations in steady-state steps, counted by torch's sync debug mode (each
    ``.item()``, ``int()`` of a GPU tensor, pageable copy or ``nonzero`` that waits for the GPU warns)."""
    row = Row("host syncs")
    trainer = ctx.trainer("bf16")
    if ctx.device.type != "cuda":
        row.add("no GPU: nothing waits (n/a)")
        return row
    n = 16
    batches = trainer.feed.epoch(trainer.batches())
    trainer.train_step(*next(batches))  # the first step's one-time work (lazy init, caches) is not counted
    sync(ctx.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            done = 0
            for _, (features, gps) in zip(range(n), batches, strict=False):
                trainer.train_step(features, gps)
                done += 1
        finally:
            torch.cuda.set_sync_debug_mode("default")
            batches.close()
    n = max(1, done)
    syncs = [  # the mode's own notice that it is a prototype is no synchronisation
        str(w.message).splitlines()[0]
        for w in caught
        if "synchroniz" in str(w.message).lower() and "debug mode is a prototype" not in str(w.message)
    ]
    row.add(f"{len(syncs) / n:.2f} per step over {n} steps (feed included)")
    if syncs:
        row.fail(f"{len(syncs)} synchronising calls in {n} steps, first: {syncs[0][:200]}")
    return row


def check_today_vs_now(ctx: Context) -> Row:
    row = Row("today vs now", target="bf16 step >= 5x faster than today's path")
    trainer = ctx.trainer("bf16")
    legacy = Legacy(trainer)
    device, steps = ctx.device, steps_per_epoch(trainer)

    def now():
        trainer.train_one_epoch()
        sync(device)

    def today():
        legacy_epoch(legacy)
        sync(device)

    times, _ = interleave({"today": today, "now": now}, ctx.sizes.rounds, warmup=1)
    speedup = paired_speedup(times["today"], times["now"])
    row.add(f"today {ms(median(times['today']) / steps)}/step, now {ms(median(times['now']) / steps)}/step")
    row.add(f"{speedup:.1f}x faster ({ctx.sizes.rounds} interleaved epochs of {steps} steps each)")
    row.measured, row.met = f"{speedup:.1f}x", speedup >= 5
    return row


def location_encoder_figures(ctx: Context, trainer, precision: str) -> tuple[float, float, float]:
    """(seconds, FLOPs, MFU) of forward + backward of the location encoder on batch + queue points."""
    encoder = trainer.model.location_encoder
    points = torch.cat([ctx.batch()[1], ctx.queue_coords(ctx.sizes.queue).to(ctx.device)])
    with torch.no_grad(), trainer.precision():
        shape = encoder(points[:2]).shape[1:]
    grad = torch.randn(len(points), *shape, device=ctx.device)

    def once():
        with trainer.precision():  # the backward too: TF32 is a global flag, read when each product runs
            out = trainer.graphs.run(encoder, points)
            out.backward(grad.to(out.dtype))

    flops = count_flops(lambda: eagerly(trainer, once))
    seconds = seconds_per_call(once, ctx.sizes.steps, ctx.device)
    trainer.optimizer.zero_grad(set_to_none=True)
    peak, _ = peak_tflops(ctx.device, precision, ctx.sizes.peak_n, ctx.peaks)
    return seconds, flops, flops / seconds / 1e12 / peak


def eagerly(trainer, fn: Callable[[], object]):
    """``fn()`` with the trainer's CUDA graphs off: a replayed graph hides its kernels from the FLOP counter."""
    graphs = trainer.graphs
    enabled, graphs.enabled = graphs.enabled, False
    try:
        return fn()
    finally:
        graphs.enabled = enabled


def check_step(ctx: Context, precision: str) -> Row:
    row = Row(f"step {precision}")
    if precision == "bf16":
        row.target = "location encoder MFU >= 40% in bf16"
    trainer = ctx.trainer(precision)
    features, gps = ctx.batch()
    device, n = ctx.device, ctx.sizes.steps

    def step():
        return trainer.train_step(features, gps)

    for _ in range(ctx.sizes.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        loss = step()
    sync(device)
    wall = (time.perf_counter() - start) / n
    if not math.isfinite(float(loss)):
        row.fail(f"loss is {float(loss)}")
    if not isinstance(loss, torch.Tensor):
        gap("Trainer.train_step returning the loss as a tensor (no host sync)")
    host, spans = [], []
    for _ in range(n):
        sync(device)
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if device.type == "cuda" else []
        if marks:
            marks[0].record()
        t = time.perf_counter()
        step()
        host.append(time.perf_counter() - t)
        if marks:
            marks[1].record()
            spans.append(marks)
    sync(device)
    row.add(f"wall {ms(wall)}/step ({1 / wall:,.0f} steps/s), host {ms(median(host))}")
    gpu = row.attempt("GPU time", lambda: kernel_seconds(step, min(n, 10), device))
    if gpu is not None:
        row.add(f"GPU {ms(gpu)} busy")
    if precision == "bf16":
        hot = row.attempt("host hotspots", lambda: host_hotspots(step, min(n, 10), device))
        if hot:
            row.add(hot)
    if spans:
        row.add(f"GPU span {ms(median([a.elapsed_time(b) / 1e3 for a, b in spans]))}")
    flops = row.attempt("FLOPs", lambda: count_flops(lambda: eagerly(trainer, step)))
    peak, source = peak_tflops(device, precision, ctx.sizes.peak_n, ctx.peaks)
    if flops:
        row.add(
            f"{num(flops / 1e9)} GFLOP/step, {num(flops / wall / 1e12)} TFLOP/s, MFU {flops / wall / 1e12 / peak:.1%}"
        )
        if gpu:
            row.add(f"MFU over the GPU's busy time {flops / gpu / 1e12 / peak:.1%}")
    enc = row.attempt("location encoder", lambda: location_encoder_figures(ctx, trainer, precision))
    if enc is not None:
        seconds, enc_flops, mfu = enc
        points = ctx.sizes.batch + ctx.sizes.queue
        row.add(f"location encoder ({points:,} points, fwd+bwd) {ms(seconds)}, MFU {mfu:.1%}")
        if precision == "bf16":
            row.measured, row.met = f"{mfu:.1%}", mfu >= 0.40
    row.add(f"peak {num(peak)} TFLOP/s ({source})")
    return row


def same_epoch(row: Row, replayed, eager, what: str) -> None:
    """Train ``replayed`` and ``eager`` (two trainers from one seed) one epoch each; figures of how far their
    losses, weights and queues are apart, and a failure beyond the run-to-run noise of GPU kernels (1e-4)."""
    losses = {}
    for name, trainer in (("replayed", replayed), ("eager", eager)):
        losses[name] = torch.stack([trainer.train_step(f, g) for f, g in trainer.feed.epoch(trainer.batches())]).cpu()
    loss_dev = float((losses["replayed"] - losses["eager"]).abs().max())
    weights = eager.model.state_dict()
    weight_dev = max(float((v - weights[k]).abs().max()) for k, v in replayed.model.state_dict().items())
    queue_same = torch.equal(replayed.model.queue.contents(), eager.model.queue.contents())
    row.add(f"{len(losses['eager'])} steps; max |loss difference| {loss_dev:.2e}")
    row.add(f"max |weight difference| {weight_dev:.2e}, queues {'equal' if queue_same else 'DIFFER'}")
    if loss_dev > 1e-4 or weight_dev > 1e-4 or not queue_same:
        row.fail(f"{what} and eager runs differ (loss {loss_dev:.2e}, weights {weight_dev:.2e})")


def check_graphs(ctx: Context) -> Row:
    """CUDA graphs compute what the modules compute: two fp32 trainers from one seed, one with graphs and
    one without, train an epoch (the queue fills, then the graphed shapes run) to the same losses,
    queue and weights, up to the run-to-run noise of GPU kernels."""
    row = Row("graphs = eager")
    s, data = ctx.sizes, ctx.data()
    graphed, eager = (new_trainer(job(s, "fp32", ctx.device.type, cuda_graphs=g), data) for g in (True, False))
    same_epoch(row, graphed, eager, "graphed")
    used = len(graphed.graphs.graphed)
    row.add(f"{used} modules graphed")
    if ctx.device.type == "cuda" and used != 2:
        row.fail(f"{used} of 2 modules were graphed")
    return row


MP16_STEPS = -(-4_650_000 // 512)  # an MP-16 epoch at batch 512


def check_graph_step(ctx: Context) -> Row:
    """The whole step as one CUDA graph (``train.graph_step``). Equal: two fp32 trainers with the graph step's
    optimiser (capturable fused Adam, learning rate on the device), one replaying, one eager
    (``steps.enabled`` off), train an epoch to the same losses, queue and weights, within the module
    graphs' tolerance. Fast: bf16 epochs of today's path, of the default step (module graphs) and of the
    graph step, interleaved; an MP-16 epoch (4.65M images, batch 512) at the graph step's time per step
    (from the step, not a run of that size)."""
    row = Row("graph step", target="bf16 step >= 5x faster than today's path, whole step captured")
    s, data, device = ctx.sizes, ctx.data(), ctx.device
    graphed, eager = (new_trainer(job(s, "fp32", device.type, graph_step=True), data) for _ in range(2))
    eager.steps.enabled = False  # the same optimiser (capturable, learning rate on the device), run eagerly
    same_epoch(row, graphed, eager, "graph step")
    row.add(f"{len(graphed.steps.graphs)} step graph(s)")
    if device.type == "cuda" and len(graphed.steps.graphs) != 1:
        row.fail(f"{len(graphed.steps.graphs)} step graphs captured, expected 1")
    del graphed, eager

    default = ctx.trainer("bf16")
    captured = new_trainer(job(s, "bf16", device.type, graph_step=True), data)
    captured.model.queue.push(ctx.queue_coords(s.queue).to(device))
    legacy = Legacy(default)
    steps = steps_per_epoch(default)

    def epoch_of(run):
        def go():
            run()
            sync(device)

        return go

    ways = {
        "today": epoch_of(lambda: legacy_epoch(legacy)),
        "module graphs": epoch_of(default.train_one_epoch),
        "graph step": epoch_of(captured.train_one_epoch),
    }
    times, _ = interleave(ways, s.rounds, warmup=1)
    per_step = {name: median(values) / steps for name, values in times.items()}
    speedup = paired_speedup(times["today"], times["graph step"])
    features, gps = ctx.batch()
    host = []
    for _ in range(s.steps):
        sync(device)
        t = time.perf_counter()
        captured.train_step(features, gps)
        host.append(time.perf_counter() - t)
    row.add(
        f"bf16 per step: today {ms(per_step['today'])}, module graphs {ms(per_step['module graphs'])}, graph step "
        f"{ms(per_step['graph step'])} (host {ms(median(host))}); {speedup:.1f}x today's ({s.rounds} interleaved "
        f"epochs of {steps} steps); an MP-16 epoch ({MP16_STEPS:,} steps) at this step: "
        f"{MP16_STEPS * per_step['graph step']:.1f} s (from the step)"
    )
    row.measured, row.met = f"{speedup:.1f}x", speedup >= 5
    return row


def check_resume(ctx: Context) -> Row:
    """A checkpoint of a GPU trainer loads into a fresh GPU trainer and a CPU one (fp32) with every model tensor
    equal, and one more step runs on each: for the default step (2 steps before saving) and for the graph
    step (``train.graph_step``: enough steps to fill the queue and capture, so the checkpoint holds the
    capturable optimiser's state and its learning rate)."""
    from geoloc.parts.graphs import CapturedSteps

    row = Row("resume")
    s, data = ctx.sizes, ctx.data()
    features, gps = ctx.batch()
    captured_after = -(-s.queue // s.batch) + CapturedSteps.WARMUP + 2
    for label, graph_step, n_steps in (("", False, 2), ("graph step ", True, captured_after)):
        first = new_trainer(job(s, "bf16", ctx.device.type, graph_step=graph_step), data)
        for _ in range(n_steps):
            first.train_step(features, gps)
        path = ctx.work / "resume.pt"
        first.save(path)
        saved = {k: v.detach().cpu().clone() for k, v in first.model.state_dict().items()}
        lr = float(first.optimizer.param_groups[0]["lr"])
        del first
        resumed = {
            ctx.device.type: (
                new_trainer(job(s, "bf16", ctx.device.type, graph_step=graph_step), data),
                (features, gps),
            ),
            "cpu (fp32)": (new_trainer(job(s, "fp32", "cpu"), data), ctx.batch(torch.device("cpu"))),
        }
        for where, (trainer, batch) in resumed.items():
            trainer.load(path)
            state = trainer.model.state_dict()
            differ = [k for k, v in saved.items() if k not in state or not torch.equal(v, state[k].detach().cpu())]
            if differ:
                row.fail(
                    f"{label}on {where}: {len(differ)} model tensors differ from the checkpoint "
                    f"({', '.join(differ[:5])})"
                )
            if float(trainer.optimizer.param_groups[0]["lr"]) != lr:
                row.fail(
                    f"{label}on {where}: learning rate {float(trainer.optimizer.param_groups[0]['lr'])}, saved {lr}"
                )
            loss = float(trainer.train_step(*batch))
            if not math.isfinite(loss):
                row.fail(f"{label}on {where}: the step after loading gave loss {loss}")
            row.add(
                f"{label}on {where}: {len(saved) - len(differ)}/{len(saved)} model tensors equal, "
                f"next step loss {loss:.3f}"
            )
    return row


def clustered_embeddings(n: int, dim: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(n, dim) unit rows of ``bench.bench_similarity.embeddings``'s kind (its centres and noise), made on
    ``device`` (4.65M x 512 in float64 on the host would take 19 GB and minutes)."""
    from .bench_similarity import CENTRES, NOISE

    g = torch.Generator(device).manual_seed(seed)
    centres = F.normalize(torch.randn(CENTRES, dim, generator=g, device=device), dim=1)
    pick = torch.randint(CENTRES, (n,), generator=g, device=device)
    return F.normalize(centres[pick] + NOISE * torch.randn(n, dim, generator=g, device=device) / dim**0.5, dim=1)


def check_lists(ctx: Context) -> Row:
    """Similarity lists (``geoloc.parts.similarity``): on a small set with distinct scores the device's exact
    and re-scored lists, faiss's exact index and a float64 brute force agree; then the re-scored way on
    ``list_keys`` x 512-d clustered embeddings, ``list_rows`` query rows timed and scaled to all rows,
    its recall against exact lists measured on 1,000 rows."""
    from geoloc.parts.similarity import (
        RESCORE_MARGIN,
        faiss_lists,
        ranked_lists,
        recall,
        rescored_lists,
        rows_at_once,
    )

    row = Row("lists")
    s, device = ctx.sizes, ctx.device
    row.target = f"similarity lists, {s.list_keys / 1e6:.2f}M x 512-d, k 128, <= 2 min"
    for seed in range(20):  # the first seeded set whose lists have no near-ties (float32 may order those either way)
        small = F.normalize(torch.randn(1000, 16, generator=torch.Generator().manual_seed(seed)), dim=1).numpy()
        scores = small.astype(np.float64) @ small.astype(np.float64).T
        np.fill_diagonal(scores, -np.inf)
        if np.all(-np.diff(-np.sort(-scores, axis=1)[:, :11], axis=1) > 1e-6):
            break
    else:
        row.fail("20 seeded small sets all had near-tied scores")
    brute = np.argsort(-scores, axis=1, kind="stable")[:, :9]
    on_device = torch.from_numpy(small).to(device)
    ways = {
        "exact": lambda: ranked_lists(on_device, on_device, 9).lists,
        # A GPU's way above 200K keys; on a CPU (--quick) that way is faiss IVF, so the function itself.
        "re-scored": lambda: (
            ranked_lists(on_device, on_device, 9, approximate_above=0).lists
            if device.type == "cuda"
            else rescored_lists(on_device, on_device, 9)
        ),
        "faiss exact": lambda: faiss_lists(small, small, 9),
    }
    for name, way in ways.items():
        lists = row.attempt(name, way)
        if lists is not None and not np.array_equal(lists, brute):
            row.fail(f"{name} lists differ from the brute force on {int((lists != brute).any(axis=1).sum())} rows")
    row.add(f"1,000 x 16-d, k 9: {', '.join(ways)} and float64 brute force {'equal' if row.ok else 'DIFFER'}")

    n, q = s.list_keys, min(s.list_rows, s.list_keys)
    keys = clustered_embeddings(n, 512, device)
    at_once = rows_at_once(n, device)
    lists = rescored_lists(keys[:1000], keys, 128, exclude_self=False, chunk=at_once)  # also the warm-up
    exact = ranked_lists(keys[:1000], keys, 128, exclude_self=False, approximate_above=n).lists
    share = recall(lists, exact)
    seconds = seconds_per_call(
        lambda: rescored_lists(keys[:q], keys, 128, exclude_self=False, chunk=at_once), 1, device, warmup=0
    )
    full = seconds * n / q
    row.add(
        f"{n:,} x 512-d, k 128, TF32 candidates + {RESCORE_MARGIN} re-scored: {q:,} rows in {seconds:.1f} s "
        f"({at_once} at once), all {n:,} rows {full:.0f} s (scaled, rows are independent); recall against "
        f"exact fp32 lists {share:.4f} (1,000 rows)"
    )
    row.measured, row.met = f"{full:.0f} s (recall {share:.3f})", full <= 120
    return row


def check_bank(ctx: Context) -> Row:
    """64 mined negatives per positive from the 100K gallery, encoded with the batch (``bank: false``) and looked
    up in the memory bank (``bank: true``, refreshed every 100 steps), against the published step: bf16,
    the published sizes, queue full, one fixed batch. A bank step costs its lookup step plus a hundredth
    of one refresh (timed on its own)."""
    from geoloc.data import Data

    row = Row("bank")
    row.target = "64 mined per positive with the bank <= 1.3x the published step"
    s, device, data = ctx.sizes, ctx.device, ctx.data()
    pool = ctx.gallery if s.name == "published" else data.gallery  # --quick: the small gallery
    pooled = Data(train=data.train, val=data.val, gallery=pool)
    mined = {"mined": 64, "near_share": 0.5, "near_k": 128}
    ways = {
        "published": {},
        "encoded": {"negatives": mined},
        "bank": {"negatives": {**mined, "bank": True, "bank_refresh_steps": 100}},
    }
    features, gps = ctx.batch()
    rows = np.arange(s.batch)
    times = {}
    for name, train in ways.items():
        trainer = new_trainer(job(s, "bf16", device.type, **train), pooled)
        trainer.model.queue.push(ctx.queue_coords(s.queue).to(device))
        times[name] = seconds_per_call(lambda t=trainer: t.train_step(features, gps, rows), s.steps, device)
        if name == "bank":
            bank, encode = trainer.bank, trainer.model.encode_locations
            refresh = seconds_per_call(lambda b=bank, e=encode: b.refresh(e), 3, device, warmup=1)
        del trainer
    banked = (times["bank"] + refresh / 100) / times["published"]
    row.add(
        f"published {ms(times['published'])}/step; 64 mined encoded {times['encoded'] / times['published']:.2f}x; "
        f"bank {times['bank'] / times['published']:.2f}x, {banked:.2f}x with a hundredth of a refresh "
        f"({ms(refresh)} for {len(pool):,} points)"
    )
    row.measured, row.met = f"{banked:.2f}x", banked <= 1.3
    return row


def check_scale(ctx: Context) -> Row:
    """``bench.scale`` on the GPU at 1M training rows and the 100K gallery: a trial's start-up (lists built,
    then read), its host peak, and steps with 64 mined per positive read from the cache, without and
    with the bank; an MP-16 epoch at those steps (from the steps)."""
    from . import scale

    row = Row("scale")
    rows, gallery, steps, batch, queue = ctx.sizes.scale
    _, figures = scale.run(rows, gallery, steps, ctx.work / "scale", ctx.device.type, batch, queue)
    first, later, _ = figures["startup_s"].values()  # building the lists, reading them, the bank's trial
    step, epoch = figures["step_s"], figures["epoch_steps"]
    row.add(
        f"{rows:,} rows, {gallery:,} gallery points: start-up {first:.1f} s building the lists, {later:.1f} s "
        f"reading them; a step read from the cache with 64 mined {ms(step[False])}, with the bank "
        f"{ms(step[True])} (median of {steps}); an MP-16 epoch at these steps {step[False] * epoch:.0f} s "
        f"/ {step[True] * epoch:.0f} s (from the steps); host peak {figures['peak_gib']:.2f} GiB"
    )
    return row


def _eval_row(ctx: Context, name: str, gallery: np.ndarray) -> Row:
    from geoloc.data import Data

    s = ctx.sizes
    row = Row(name)
    if not hasattr(ctx, "tencrop"):
        coords = ctx.gallery[np.random.default_rng(3).choice(len(ctx.gallery), s.eval_images, replace=False)]
        ctx.tencrop = write_cache(ctx.work / "tencrop", s.eval_images, s.eval_views, s.feature_dim, coords, seed=4)
    data = Data(train=ctx.data().train, val={"tencrop": ctx.tencrop}, gallery=gallery)
    start = time.perf_counter()
    trainer = new_trainer(job(s, "bf16", ctx.device.type), data)
    setup = time.perf_counter() - start
    seconds = []
    for _ in range(2):
        if ctx.device.type == "cuda":
            sync(ctx.device)
            torch.cuda.reset_peak_memory_stats(ctx.device)
            before = torch.cuda.memory_allocated(ctx.device)
        start = time.perf_counter()
        metrics = trainer.evaluate()
        sync(ctx.device)
        seconds.append(time.perf_counter() - start)
    if not all(math.isfinite(metrics[k]) for k in ("val_loss", "score")):
        row.fail(f"non-finite metrics: val_loss {metrics['val_loss']}, score {metrics['score']}")
    row.add(f"{s.eval_images:,} images x {s.eval_views} views vs {len(gallery):,} points")
    row.add(f"{seconds[0]:.2f} s first, {seconds[1]:.2f} s second call (setup {setup:.1f} s)")
    if ctx.device.type == "cuda":
        row.add(f"peak +{mib(torch.cuda.max_memory_allocated(ctx.device) - before)} allocated")
    else:
        row.add("peak memory: n/a on the CPU")
    return row


def check_eval_100k(ctx: Context) -> Row:
    return _eval_row(ctx, "eval 100K", ctx.gallery[: ctx.sizes.eval_gallery])


def check_eval_1m(ctx: Context) -> Row:
    return _eval_row(ctx, "eval 1M", uniform_sphere(ctx.sizes.big_gallery, seed=5))


def _trial_process(rank: int, spec: dict, barrier, results) -> None:
    """One training process of the memory and packing checks (spawned): warm-up epoch, barrier, timed epochs."""
    try:
        from geoloc.data import Data
        from geoloc.data.cache import open_cache
        from geoloc.study.config import parse_job

        device = torch.device(spec["device"])
        data = Data(
            train=open_cache(spec["train"]), val={"val": open_cache(spec["val"])}, gallery=np.load(spec["gallery"])
        )
        trainer = new_trainer(parse_job(spec["job"]), data, spec["gpu_share"])
        trainer.model.queue.push(torch.from_numpy(np.load(spec["queue"])[: spec["queue_size"]]).float().to(device))
        trainer.train_one_epoch()
        sync(device)
        barrier.wait(timeout=spec["timeout"])
        start = time.monotonic()
        for _ in range(spec["epochs"]):
            trainer.train_one_epoch()
        sync(device)
        end = time.monotonic()
        out = {"rank": rank, "start": start, "end": end, "steps": spec["epochs"] * steps_per_epoch(trainer)}
        out["rss"] = peak_rss_bytes()
        if device.type == "cuda":
            out["allocated"] = torch.cuda.max_memory_allocated(device)
            out["reserved"] = torch.cuda.max_memory_reserved(device)
        out["gaps"] = sorted(API_GAPS)
        results.put(out)
    except BaseException as e:  # noqa: B036 (the parent must hear of any end, then the process ends anyway)
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put({"rank": rank, "error": one_line(e), "gaps": sorted(API_GAPS)})


def run_processes(ctx: Context, k: int, batch: int, queue: int, epochs: int, timeout: float) -> list[dict]:
    """``k`` training processes at once on the device; each one's report (start, end, steps, memory)."""
    from geoloc.common.devices import cpu_share

    ctx.data()
    threads = max(1, cpu_share() // k)
    spec = {
        "device": ctx.device.type,
        "train": str(ctx.work / "train"),
        "val": str(ctx.work / "val"),
        "gallery": str(ctx.work / "gallery.npy"),
        "queue": str(ctx.work / "queue.npy"),
        "queue_size": queue,
        "gpu_share": 1.0 / k,
        "epochs": epochs,
        "timeout": timeout,
        "job": job(ctx.sizes, "bf16", ctx.device.type, batch, queue, threads=threads).model_dump(mode="json"),
    }
    mp = multiprocessing.get_context("spawn")
    barrier, results = mp.Barrier(k), mp.Queue()
    procs = [mp.Process(target=_trial_process, args=(r, spec, barrier, results), daemon=True) for r in range(k)]
    for p in procs:
        p.start()
    reports, deadline = [], time.monotonic() + timeout
    try:
        while len(reports) < k and time.monotonic() < deadline:
            try:
                reports.append(results.get(timeout=1.0))
            except queue_module.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(5)
    for report in reports:
        API_GAPS.update(report.get("gaps", []))
    errors = [f"process {r['rank']}: {r['error']}" for r in reports if "error" in r]
    if errors:
        raise RuntimeError("; ".join(errors))
    if len(reports) < k:
        codes = ", ".join(str(p.exitcode) for p in procs)
        raise TimeoutError(f"{k - len(reports)} of {k} processes did not report within {timeout:.0f} s (exit {codes})")
    return reports


def throughput(reports: list[dict]) -> float:
    """Aggregate steps per second: every process's steps over the span from the first start to the last end."""
    return sum(r["steps"] for r in reports) / (max(r["end"] for r in reports) - min(r["start"] for r in reports))


def check_memory(ctx: Context) -> Row:
    s = ctx.sizes
    row = Row("memory per trial")
    (report,) = run_processes(ctx, 1, s.mem_batch, s.mem_queue, 1, timeout=90)
    row.add(f"batch {s.mem_batch}, queue {s.mem_queue:,}, bf16")
    if ctx.device.type == "cuda":
        row.add(f"peak {mib(report['allocated'])} allocated, {mib(report['reserved'])} reserved")
    row.add(f"host peak RSS {mib(report['rss'])}, {ms((report['end'] - report['start']) / report['steps'])}/step")
    return row


def check_packing(ctx: Context) -> Row:
    k = ctx.sizes.packed
    row = Row(f"packing 1 vs {k}", target=f"{k} processes >= 2x the throughput of 1")
    epochs = ctx.sizes.packed_epochs
    one = throughput(run_processes(ctx, 1, ctx.sizes.batch, ctx.sizes.queue, epochs, timeout=90))
    reports = run_processes(ctx, k, ctx.sizes.batch, ctx.sizes.queue, epochs, timeout=120)
    many = throughput(reports)
    overlap = min(r["end"] for r in reports) - max(r["start"] for r in reports)
    span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    row.add(f"1 process {one:,.0f} steps/s, {k} processes {many:,.0f} steps/s together: {many / one:.2f}x")
    row.add(f"all {k} running for {max(overlap, 0) / span:.0%} of the {span:.1f} s span")
    row.measured, row.met = f"{many / one:.2f}x", many / one >= 2
    return row


class _Block(nn.Module):
    """open_clip's ``ResidualAttentionBlock``: pre-norm attention, then a pre-norm GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class PlainViT(nn.Module):
    """open_clip's ``VisionTransformer`` (GELU, class token pooled, 64-wide heads) in plain torch:
    the same layers, shapes and FLOPs, for a node where open_clip cannot be imported. Random weights."""

    def __init__(self, image_size: int, layers: int, width: int, patch_size: int, output_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch_size, patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(_Block(width, width // 64) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @classmethod
    def from_config(cls, config: dict) -> PlainViT:
        v = config["vision_cfg"]
        return cls(v["image_size"], v["layers"], v["width"], v["patch_size"], config["embed_dim"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(len(x), 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj


def extraction_model(ctx: Context, plain: bool = False) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The image tower to time and what it is: open_clip's (``load_backbone``), else ``PlainViT``."""
    s = ctx.sizes
    why = "asked for"
    if not plain:
        try:
            import json

            from geoloc.data.backbone import load_backbone

            name = s.vit_name
            if name is None:
                name = str(ctx.work / "ViT-check-tiny.json")
                Path(name).write_text(json.dumps(s.vit))
            backbone = load_backbone(name, pretrained="random", device=ctx.device)
            version = importlib.metadata.version("open_clip_torch")
            return backbone.model.encode_image, f"open_clip {version} {s.vit_name or 'tiny ViT'}"
        except Exception as e:  # open_clip missing what it imports (torchvision built for this torch)
            why = f"open_clip unusable here: {one_line(e)[:160]}"
    with ctx.device:  # initialised where it runs: 300M random numbers are drawn far faster on a GPU
        model = PlainViT.from_config(s.vit).requires_grad_(False).eval()
    return model, f"PlainViT twin of {s.vit_name or 'tiny ViT'} ({why})"


def check_extraction(ctx: Context) -> Row:
    s = ctx.sizes
    row = Row("extraction")
    encode, what = extraction_model(ctx)
    size = s.vit["vision_cfg"]["image_size"]
    images = torch.randn(s.vit_batch, 3, size, size, device=ctx.device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=torch.float16):
            return encode(x)

    if not torch.isfinite(run(images).float()).all():
        row.fail("non-finite features")
    seconds = seconds_per_call(lambda: run(images), s.vit_batches, ctx.device)
    flops = count_flops(lambda: run(images[:1])) * s.vit_batch
    peak, source = peak_tflops(ctx.device, "bf16", s.peak_n, ctx.peaks)
    row.add(f"{what}, fp16 autocast, batch {s.vit_batch} at {size}x{size}")
    mfu = flops / seconds / 1e12 / peak
    row.add(f"{num(s.vit_batch / seconds)} images/s, MFU {mfu:.1%} of {num(peak)} TFLOP/s ({source})")
    return row


CROSS_VIEW = {  # one end-to-end epoch of the cross-view task: Sample4Geo's architecture and image sizes
    "published": {"backbone": "convnext_base.fb_in22k_ft_in1k_384", "query": [384, 768], "reference": [384, 384],
                  "pairs": 256, "batch": 32, "val": 128},
    "quick": {"backbone": "test_convnext", "query": [32, 64], "reference": [32, 32], "pairs": 32, "batch": 8,
              "val": 16},
}  # fmt: skip


def check_cross_view(ctx: Context) -> Row:
    """One end-to-end epoch of the cross-view task (``CrossViewTrainer.run_epoch``: decoding, paired
    augmentation, bf16 forward and backward of both views, AdamW, then the retrieval evaluation) on
    the offline cross-view benchmark, the backbone randomly initialised (no weights on the node)."""
    from geoloc.study.config import parse_job
    from geoloc.tasks.cross_view.trainer import CrossViewTrainer

    size = CROSS_VIEW[ctx.sizes.name]
    row = Row("cross-view epoch")
    cfg = parse_job(
        {
            "task": "cross_view",
            "data": {
                "layout": "offline",
                "offline": {"n_train": size["pairs"], "n_val": size["val"], "root": str(ctx.work / "crossview")},
                "cache_root": str(ctx.work / "crossview-cache"),
            },
            "model": {
                "backbone": {"name": size["backbone"], "trainable": True},
                "query_size": size["query"],
                "reference_size": size["reference"],
            },
            "train": {"epochs": 1, "batch_size": size["batch"], "precision": "bf16", "device": ctx.device.type},
        }
    )
    trainer = CrossViewTrainer(cfg)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    metrics = trainer.run_epoch()
    sync(ctx.device)
    if not math.isfinite(metrics["train_loss"]) or not 0 <= metrics["recall_1"] <= 1:
        row.fail(f"train_loss {metrics['train_loss']}, recall_1 {metrics['recall_1']}")
    steps = -(-size["pairs"] // size["batch"])
    row.add(f"{size['backbone']} shared, {size['query']} + {size['reference']} px, batch {size['batch']}, bf16")
    row.add(f"{steps} steps in {metrics['train_s']:.1f} s ({size['pairs'] / metrics['train_s']:.1f} pairs/s)")
    row.add(f"evaluation of {size['val']} pairs {metrics['eval_s']:.1f} s, recall_1 {metrics['recall_1']:.3f}")
    if ctx.device.type == "cuda":
        row.add(f"peak {mib(torch.cuda.max_memory_allocated(ctx.device))}")
    return row


def checks(sizes: Sizes) -> list[tuple[str, Callable[[Context], Row]]]:
    steps = [(f"step {p}", lambda ctx, p=p: check_step(ctx, p)) for p in ("bf16", "fp32", "tf32")]
    return [
        ("placement", check_placement),
        ("host syncs", check_syncs),
        ("today vs now", check_today_vs_now),
        *steps,
        ("graphs = eager", check_graphs),
        ("graph step", check_graph_step),
        ("resume", check_resume),
        ("lists", check_lists),
        ("bank", check_bank),
        ("eval 100K", check_eval_100k),
        ("eval 1M", check_eval_1m),
        ("memory per trial", check_memory),
        (f"packing 1 vs {sizes.packed}", check_packing),
        ("extraction", check_extraction),
        ("cross-view epoch", check_cross_view),
        ("scale", check_scale),
    ]


# -- the command line ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: only with --quick, to test")
    parser.add_argument("--quick", action="store_true", help="every check at tiny sizes (the script's own test)")
    parser.add_argument(
        "--out", type=Path, help="the table (default bench/GPU.md; bench/out/GPU-quick.md for --quick or --only)"
    )
    parser.add_argument("--wheels", type=Path, default=WHEELS, help="where the wheels of the missing packages are")
    parser.add_argument(
        "--only", nargs="+", metavar="CHECK", help="run the checks whose name starts with one of these (e.g. step eval)"
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    if args.device == "cuda" and not torch.cuda.is_available():
        say(f"no GPU visible (torch {torch.__version__}, CUDA unavailable): nothing to check")
        return 0
    sizes = QUICK if args.quick else FULL
    chosen = [(label, check) for label, check in checks(sizes) if not args.only or label.startswith(tuple(args.only))]
    if not chosen:
        say(f"gpu_check: no check starts with {' or '.join(args.only)}: {', '.join(n for n, _ in checks(sizes))}")
        return 2
    provided, missing = provide_needs(args.wheels)
    if missing:
        say(
            f"gpu_check: cannot import {', '.join(missing)} and {args.wheels} does not provide it; "
            "run `make gpu-wheels` where the project's .venv is, and bring bench/wheels/ along"
        )
        return 2
    try:
        product_modules()
    except ImportError as e:
        say(f"gpu_check: cannot import the project's modules: {one_line(e)}")
        return 2
    faulthandler.dump_traceback_later(HANG_GUARD_S, exit=True)
    out = args.out or (GPU_REPORT if args.device == "cuda" and not args.quick and not args.only else QUICK_REPORT)
    device = torch.device(args.device)
    ctx = Context(sizes, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
    say(
        f"gpu_check on {name}, {sizes.name} sizes; table: {out}" + (f"; from wheels: {provided[0]}" if provided else "")
    )
    rows: list[Row] = []
    for label, check in chosen:
        elapsed = time.monotonic() - started
        if elapsed > CHECK_START_LIMIT_S:
            row = Row(label)
            row.fail(f"skipped: {elapsed:.0f} s of the {BUDGET_S} s budget spent")
        else:
            t = time.monotonic()
            try:
                row = check(ctx)
            except Exception as e:
                row = Row(label)
                row.fail(one_line(e))
                traceback.print_exc(file=sys.stderr)
            row.seconds = time.monotonic() - t
        rows.append(row)
        say(row.line())
        if label.startswith("step tf32"):
            ctx.release()  # the step checks are the last to use the shared trainers
        if device.type == "cuda":
            torch.cuda.empty_cache()  # what a check freed goes back to the card before the next one
        write_report(out, header(args, sizes, device, provided, ctx.peaks), rows, time.monotonic() - started)
    faulthandler.cancel_dump_traceback_later()
    failed = [r.check for r in rows if not r.ok]
    for r in rows:
        if r.target:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[r.met]
            say(f"target {r.target}: {r.measured or '-'} ({verdict})")
    if API_GAPS:
        say("product API expected and not found: " + "; ".join(sorted(API_GAPS)))
    say(f"{len(rows) - len(failed)}/{len(rows)} checks passed in {time.monotonic() - started:.0f} s; table: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
