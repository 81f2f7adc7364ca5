"""``python -m geoloc.data.crossview.check LAYOUT ROOT [--area same|cross]``: check a cross-view data set.

Reads both splits with the layout's reader (every row, every coordinate, every image's
existence; no image is decoded) and prints, per split, the number of queries, references and
distinct positive references; bad data exits with status 2 and one line ``error: ...`` naming
the file and the row.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from geoloc.data.cache import DataError
from geoloc.data.crossview import LAYOUTS, SPLITS, read_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geoloc.data.crossview.check",
        description="Check a cross-view data set in its published layout (split files, coordinates, image files).",
    )
    parser.add_argument("layout", choices=LAYOUTS, help="the data set's layout")
    parser.add_argument("root", help="the data set's folder, as published")
    parser.add_argument("--area", choices=("same", "cross"), default="same", help="VIGOR only: same-area or cross-area")
    args = parser.parse_args(argv)
    try:
        sets = [read_split(args.layout, args.root, split, area=args.area) for split in SPLITS]
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for data in sets:
        print(
            f"{data.name}: {len(data.queries)} queries, {len(data.references)} references, "
            f"{len(np.unique(data.positive))} positives"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
