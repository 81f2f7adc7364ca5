"""Shared helpers of the benchmarks: interleaved timing, the machine header, markdown, the published model.

Every figure in ``bench/RESULTS.md`` is a ratio of two ways of doing the same work, timed in
the same process run with their repeats interleaved (A, B, A, B, ...), each way summarised by
the median of its repeats. On a shared machine absolute times drift with other people's load;
interleaving exposes both ways to the same drift, so the ratio stays meaningful.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class Result:
    """One benchmark's outcome: a markdown section, whether both sides agreed, and its key figures."""

    title: str
    body: str
    agreed: bool
    figures: dict = field(default_factory=dict)

    def markdown(self) -> str:
        verdict = "yes" if self.agreed else "**NO**"
        return f"## {self.title}\n\nBoth sides agreed: {verdict}\n\n{self.body.strip()}\n"


def set_threads() -> int:
    """Torch threads as a trial gets them (``OMP_NUM_THREADS``, else every CPU it may run on)."""
    from geoloc.common.devices import cpu_share

    n = cpu_share()
    torch.set_num_threads(n)
    return n


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed_cpu(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall seconds, process CPU seconds (user + system, all threads) and the output of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def interleave(
    ways: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Time each way ``repeats`` times in the order A, B, A, B, ... after ``warmup`` untimed rounds.

    Returns the seconds of every timed repeat per way and the last output of each way.
    """
    times: dict[str, list[float]] = {name: [] for name in ways}
    outputs: dict[str, object] = {}
    for round_ in range(warmup + repeats):
        for name, fn in ways.items():
            seconds, outputs[name] = timed(fn)
            if round_ >= warmup:
                times[name].append(seconds)
    return times, outputs


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_speedup(base: list[float], other: list[float]) -> float:
    """How many times faster ``other`` ran than ``base``: the median of the per-round ratios of two
    interleaved timings (each round's pair ran back to back, under nearly the same load)."""
    return median([b / o for b, o in zip(base, other, strict=True)])


def spread(values: list[float]) -> str:
    """``median (min-max, n=...)`` in seconds or milliseconds, whichever reads better."""
    lo, mid, hi = min(values), median(values), max(values)
    if hi < 1:
        return f"{mid * 1e3:.1f} ms ({lo * 1e3:.1f}-{hi * 1e3:.1f}, n={len(values)})"
    return f"{mid:.2f} s ({lo:.2f}-{hi:.2f}, n={len(values)})"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table; floats are written as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def proc_status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmHWM``, ``VmRSS``, ``RssAnon``); 0 where there is none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_bytes() -> int:
    """This process's own peak resident set (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``: Linux keeps
    that across ``fork`` and ``execve``, so a spawned child reports at least its parent's resident set
    at the fork (measured: a child that peaked at 33 MiB reported 2.03 GiB beside a 2 GiB parent). That
    is where the GPU check's "host peak RSS 9.66 GiB" of one trial came from: the checking process's
    own size when it spawned the trial."""
    return proc_status_kb("VmHWM") * 1024


def machine_header() -> str:
    """Where and with what the figures were measured."""
    from importlib.metadata import version

    import geoclip  # noqa: F401  (version below)

    from geoloc.study.manifest import cpu_model

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [
        ["CPU", cpu_model()],
        ["cores (usable / online)", f"{len(os.sched_getaffinity(0))} / {os.cpu_count()}"],
        ["torch threads", torch.get_num_threads()],
        ["python", platform.python_version()],
        ["torch", torch.__version__],
        ["numpy", np.__version__],
        ["geoclip (published)", version("geoclip")],
        ["load average at start (1, 5, 15 min)", load],
        ["date", time.strftime("%Y-%m-%d %H:%M %Z")],
    ]
    return table(["", ""], rows)


@contextlib.contextmanager
def quiet():
    """Silence stdout and stderr (the published evaluation prints progress bars and results)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def published_geoclip(queue_size: int = 4096):
    """The published ``geoclip.GeoCLIP`` with its weights, its frozen CLIP replaced by the identity.

    Our trainer runs on cached backbone features, so the comparison is of everything after the
    backbone (as in tests/test_parity.py). ``CLIPModel`` is swapped for the identity while the
    model is built, which spares building (and then discarding) a random 400M-parameter ViT-L.
    """
    from unittest import mock

    import geoclip
    from geoclip.model import image_encoder

    class Features(torch.nn.Module):
        def get_image_features(self, pixel_values):
            return pixel_values

    with mock.patch.object(image_encoder, "CLIPModel", lambda config: Features()), quiet():
        model = geoclip.GeoCLIP(from_pretrained=True, queue_size=queue_size, clip_pretrained=False)
    return model


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


ROOT = Path(__file__).resolve().parents[1]


def quickstart_base() -> dict:
    """The run configuration of ``studies/quickstart.yaml``, the starting point of the sweep benchmarks."""
    import yaml

    return yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())["base"]


def run_study(spec: dict, storage: Path):
    """Write ``spec`` as a study file, run it with ``tune_main.py`` (real Ray, real Optuna) into
    ``storage``; returns its wall seconds and the study as ``analysis.read_study`` reads it."""
    import subprocess

    import yaml

    from analysis.load import read_study

    path = storage / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "tune_main.py"), str(path), "--storage", str(storage), "--no-analysis"],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start, read_study(storage / spec["name"])


@contextlib.contextmanager
def bf16_fourier_features():
    """The location encoder's random Fourier features as ``geoloc.tasks.geoclip.model`` computed them before it
    kept them in fp32: under bf16 autocast, ``v @ b.T`` then runs in bf16.

    With the sigma=256 branch the phases reach about 2*pi*1000 radians, where bf16 (8
    significant bits) is off by whole radians, so cos and sin of them are noise. The benchmarks
    patch this in for a ``with`` block to show what the fp32 rule buys.
    """
    import math

    from geoloc.tasks.geoclip.model import GaussianFourierFeatures

    def forward(self, v):
        vp = 2 * math.pi * v @ self.b.T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)

    original = GaussianFourierFeatures.forward
    GaussianFourierFeatures.forward = forward
    try:
        yield
    finally:
        GaussianFourierFeatures.forward = original
