"""``python -m analysis.semivariogram CACHE|offline [--out DIR]``: a feature cache's semivariogram as a CSV and a plot.

The estimate and the fit are ``geoloc.parts.semivariogram``'s (the same numbers a study derives from
the cache); this module only draws and writes them. Everything is computed and the figure
rendered in memory before the first file is written, and each file is written under a temporary
name and renamed, so bad input or a crash leaves no half-written output.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from geoloc.common.atomic import write_bytes, write_text
from geoloc.data.cache import DataError, FeatureCache, open_cache
from geoloc.data.config import OFFLINE, OfflineBenchmarkConfig
from geoloc.data.synthetic import benchmark_dir, build_offline_benchmark
from geoloc.parts.semivariogram import PRACTICAL_RANGE, Semivariogram, SemivariogramError, estimate_semivariogram

CSV, PNG = "semivariogram.csv", "semivariogram.png"
DPI = 110


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.semivariogram",
        description="The empirical semivariogram of a feature cache (view 0 of sampled image pairs, log-spaced "
        "great-circle distance bins from 0.1 to 20,000 km) and a variogram model fitted to it: writes "
        f"{CSV} (the bins) and {PNG}, and prints the fitted range, sill and nugget.",
    )
    p.add_argument(
        "cache",
        metavar="CACHE|offline",
        help="a feature cache folder, or the word 'offline': the training cache of the bundled offline "
        "benchmark with its default configuration (built first when missing, about a minute; a folder "
        "named offline is ./offline)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where to write (default: ./semivariogram-NAME, NAME being the cache folder's name, or 'offline')",
    )
    return p


def open_argument(spec: str) -> FeatureCache:
    """The cache a command-line argument names; DataError naming the path when it is none."""
    if spec == OFFLINE:
        cfg = OfflineBenchmarkConfig()
        if not (benchmark_dir(cfg) / "DONE").exists():
            print(f"building the offline benchmark in {benchmark_dir(cfg)} (once, about a minute)", file=sys.stderr)
        return open_cache(build_offline_benchmark(cfg) / "train")
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: no such folder")
    return open_cache(path)


def figure(result: Semivariogram, title: str) -> bytes:
    """The semivariogram as PNG bytes: empirical bins (area by pair count), the model, range, sill and nugget."""
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    full = result.bins[result.bins["pairs"] > 0]
    size = 8 + 120 * np.sqrt(full["pairs"] / full["pairs"].max())
    ax.scatter(full["centre_km"], full["gamma"], s=size, alpha=0.7, label="bins (area ~ pairs)", zorder=3)
    x = np.geomspace(full["lower_km"].iloc[0], full["upper_km"].iloc[-1], 400)
    ax.plot(x, result.curve(x), color="C1", label=f"{result.model} model (r2 {result.r2:.3f})")
    ax.axvline(
        result.range_km, color="C2", label=f"range {result.range_km:.4g} km ({PRACTICAL_RANGE:.0%} of partial sill)"
    )
    ax.axhline(result.sill, color="C3", linestyle="--", label=f"sill {result.sill:.4g}")
    ax.axhline(result.nugget, color="C4", linestyle="--", label=f"nugget {result.nugget:.4g}")
    ax.set_xscale("log")
    ax.set_xlabel("great-circle distance (km)")
    ax.set_ylabel("semivariance")
    ax.set_title(f"{title}: {result.pairs:,} pairs", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_outputs(out: Path, result: Semivariogram, png: bytes) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / CSV, out / PNG
    write_text(csv_path, result.bins.to_csv(index=False))
    write_bytes(png_path, png)
    return csv_path, png_path


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        cache = open_argument(args.cache)
        result = estimate_semivariogram(cache, progress=True)
    except (DataError, SemivariogramError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = OFFLINE if args.cache == OFFLINE else cache.path.name
    out = Path(args.out or f"semivariogram-{name}").expanduser()
    try:
        csv_path, png_path = write_outputs(out, result, figure(result, str(cache.path)))
    except OSError as exc:
        print(f"error: {out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(
        f"range {result.range_km:.4g} km, sill {result.sill:.4g}, nugget {result.nugget:.4g}, "
        f"model {result.model} (r2 {result.r2:.3f}), {result.pairs} pairs; wrote {csv_path} and {png_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
