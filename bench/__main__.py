"""``python -m bench [--quick] [--only NAME ...] [--out PATH]``: run the benchmarks, write a report.

Each benchmark compares two ways of doing the same work in one process run (repeats
interleaved, medians), checks that both computed the same result, and returns a markdown
section. The report starts with the machine and versions; it is rewritten after every
benchmark, so an interrupted run keeps what finished.

Default output: ``bench/RESULTS.md`` for the full run, ``bench/RESULTS-quick.md`` for
``--quick`` (small sizes, a minute or two; never overwrites the full figures); with ``--only``,
the report is printed and written only where ``--out`` says. Exit status 1 when any benchmark's
two sides disagreed or a benchmark failed.

``bench/bench_extraction.py`` (feature extraction) has its own command line; a full or quick run
calls its ``main(argv)`` too, and its figures, one heading level down, become the last section.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from .common import log, machine_header, set_threads

BENCHMARKS = [
    "bench_eval",
    "bench_location_encoder",
    "bench_train_step",
    "bench_memory",
    "bench_sweep",
    "bench_packing",
    "bench_pareto",
    "bench_neighbours",
    "bench_sampling",
    "bench_similarity",
    "bench_bank",
]
HERE = Path(__file__).resolve().parent


def run_one(name: str, quick: bool) -> tuple[str, bool]:
    """The markdown section of one benchmark and whether it agreed (failures become sections too)."""
    start = time.perf_counter()
    try:
        result = importlib.import_module(f"bench.{name}").main(quick=quick)
    except Exception:
        return f"## {name}: FAILED\n\n```\n{traceback.format_exc()}```\n", False
    return f"{result.markdown()}\n_`{name}`: {time.perf_counter() - start:.0f} s wall time._\n", result.agreed


def run_extraction(quick: bool) -> tuple[str, bool]:
    """``bench_extraction`` has its own command line: its ``main(argv)`` returns figures that its
    ``markdown(figures)`` renders; the section nests under ours, one heading level down."""
    from . import bench_extraction

    start = time.perf_counter()
    try:
        text = bench_extraction.markdown(bench_extraction.main(["--quick"] if quick else []))
    except Exception:
        return f"## bench_extraction: FAILED\n\n```\n{traceback.format_exc()}```\n", False
    text = "\n".join("#" + line if line.startswith("#") else line for line in text.strip().splitlines())
    return f"{text}\n\n_`bench_extraction`: {time.perf_counter() - start:.0f} s wall time._\n", True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run), no bf16 training runs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--out", type=Path, help="report file (default: see above)")
    args = parser.parse_args(argv)
    out = args.out or (None if args.only else HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md"))

    set_threads()
    mode = "--quick (small sizes: smoke figures, not results)" if args.quick else "full"
    head = f"# Benchmarks\n\n`python -m bench{' --quick' if args.quick else ''}`, mode: {mode}.\n\n{machine_header()}\n"
    head += (
        "\nEvery time is the median of interleaved repeats measured in the same process run; the\n"
        "machine is shared, so compare the ratios, not the absolute times.\n"
    )
    sections, all_agreed = [], True

    def write():
        report = "\n".join([head, *sections])
        if out:
            out.write_text(report)
        return report

    for name in args.only or BENCHMARKS:
        log(f"== {name}")
        section, agreed = run_one(name, args.quick)
        sections.append(section)
        all_agreed &= agreed
        write()
    if not args.only:
        section, agreed = run_extraction(args.quick)
        sections.append(section)
        all_agreed &= agreed
    report = write()
    print(report)
    if out:
        log(f"written: {out}")
    return 0 if all_agreed else 1


if __name__ == "__main__":
    sys.exit(main())
