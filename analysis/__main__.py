"""``python -m analysis STUDY_DIR [--out DIR] [--by PARAM ...] [--format md,tex,csv] [--epoch N|final|best]
[--baseline VALUE] [--bins N] [--min-country-images N] [--no-plots]``."""

from __future__ import annotations

import argparse
import sys

from geoloc.study.folders import Status, TrialFolder

from .budget import epoch_label
from .load import AnalysisError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Tables, plots and a report from a study directory written by tune_main.py "
        "(finished or still running; read from its files, no Ray needed).",
    )
    p.add_argument(
        "study_dir",
        metavar="STUDY_DIR",
        help=f"the study directory: one folder per trial, each with {TrialFolder.TRIAL}",
    )
    p.add_argument("--out", metavar="DIR", help="where to write (default: STUDY_DIR/analysis)")
    p.add_argument(
        "--by", metavar="PARAM", nargs="+", help="hyperparameters to tabulate (default: each one the study varied)"
    )
    p.add_argument(
        "--format", default="md,tex,csv", help="table formats, comma-separated subset of md,tex,csv (default: all)"
    )
    p.add_argument(
        "--epoch",
        metavar="N|final|best",
        help="compare trials at epoch N >= 1 (those that reached it, with their values there), or each trial's "
        "final or best epoch (which mixes budgets when trials ran different numbers of epochs). Default: the "
        "epoch every finished or stopped trial ran, else the highest epoch at least half of them reached. "
        "Epoch 0, the evaluation before training (eval.at_start), is no budget: it is each ablation table's "
        "first row",
    )
    # Earlier names of --epoch final|best, so that existing commands still work.
    for old in ("--which", "--values"):
        p.add_argument(old, dest="epoch", choices=("final", "best"), default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument(
        "--baseline",
        metavar="VALUE",
        help="the arm every other arm is compared with, for each parameter that has this value "
        "(default: the base configuration's value)",
    )
    p.add_argument(
        "--bins", type=int, default=4, help="quantile bins for a numeric parameter with many values (default: 4)"
    )
    p.add_argument(
        "--min-country-images",
        type=int,
        default=30,
        metavar="N",
        help="a country gets rows of its own in GeoCLIP's accuracy-by-region table from N images on the primary "
        "evaluation set (default: 30); every continent is listed",
    )
    p.add_argument("--no-plots", action="store_true", help="tables and report only")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .pipeline import analyse  # after parsing: --help stays instant

    try:
        result = analyse(
            args.study_dir,
            args.out,
            by=args.by,
            formats=args.format,
            epoch=args.epoch,
            baseline=args.baseline,
            bins=args.bins,
            plots=not args.no_plots,
            min_country_images=args.min_country_images,
        )
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = result["counts"]
    statuses = (Status.FINISHED, Status.STOPPED, Status.ERRORED, Status.RUNNING)
    compared = f"{c['compared']} compared at {epoch_label(result['epoch'])}; " if result["epoch"] is not None else ""
    print(
        f"{c['total']} trials ({', '.join(f'{c[s.value]} {s.value}' for s in statuses)}); "
        f"{compared}{len(result['files'])} files in {result['out_dir']}"
    )
    print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
