"""CVUSA as published (the "19zl" split that Sample4Geo and most cross-view papers use).

Layout under the data set's root folder::

    splits/train-19zl.csv        no header; one pair per line: aerial path, ground panorama path,
    splits/val-19zl.csv          annotation path (relative to the root), such as
                                 bingmap/19/0000019.jpg,streetview/panos/0000019.jpg,streetview/annotations/0000019.png
    split_locations/all.csv      no header; line k holds place k: aerial lat, aerial lon, ground lat, ground lon, ...

A pair's id is the aerial file's number (``0000019`` -> 19) and its coordinates are line ``id``
of ``all.csv`` (Sample4Geo reads row ``id - 1`` of it). Queries are the ground panoramas with
the ground coordinates, references the aerial tiles with the aerial coordinates, one tile per
pair, so query ``i``'s positive is reference ``i``; there are no semi-positives. The
annotation images are not used and not looked for. The offline benchmark writes this layout too
(``layout: offline``), so this reader reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geoloc.data.cache import DataError
from geoloc.data.crossview.files import (
    FirstSeen,
    absolute_root,
    check_columns,
    check_exist,
    coordinate,
    read_lines,
    split_rows,
)
from geoloc.data.crossview.record import CrossViewSet

SPLIT_FILES = {"train": "splits/train-19zl.csv", "val": "splits/val-19zl.csv"}
LOCATIONS = "split_locations/all.csv"
COLUMNS = "aerial path, ground panorama path, annotation path"


def pair_id(aerial: str, where: str) -> int:
    """The number of an aerial file (``bingmap/19/0000019.jpg`` -> 19): its line in ``all.csv``."""
    stem = os.path.splitext(os.path.basename(aerial))[0]
    if not stem.isdigit() or int(stem) < 1:
        raise DataError(f"{where}: aerial file {aerial!r} is not named by a positive number (such as 0000019.jpg)")
    return int(stem)


def read_cvusa(root: str | Path, split: str, *, name: str = "cvusa") -> CrossViewSet:
    """The ``split`` ("train" or "val") of the CVUSA folder ``root``; a problem is a DataError naming file and line."""
    root = absolute_root(root)
    split_file = root / SPLIT_FILES[split]
    rows = split_rows(split_file, f"CVUSA {split} split ({COLUMNS})", sep=",")
    aerials, grounds, ids, lines = [], [], [], []
    seen_ids, seen_aerials, seen_grounds = FirstSeen("aerial id"), FirstSeen("aerial tile"), FirstSeen("panorama")
    for line, fields in rows:
        where = f"{split_file}: line {line}"
        check_columns(split_file, line, fields, 3, COLUMNS)
        aerial, ground = fields[0], fields[1]
        if not aerial or not ground:
            raise DataError(f"{where}: empty {'aerial' if not aerial else 'ground panorama'} path")
        seen_aerials.add(aerial, where)
        seen_grounds.add(ground, where)
        place = pair_id(aerial, where)
        seen_ids.add(str(place), where)
        aerials.append(aerial)
        grounds.append(ground)
        ids.append(place)
        lines.append(line)

    locations = root / LOCATIONS
    location_lines = read_lines(locations, "CVUSA coordinates (aerial lat, aerial lon, ground lat, ground lon, ...)")
    aerial_coords = np.empty((len(ids), 2))
    ground_coords = np.empty((len(ids), 2))
    for i, (place, line) in enumerate(zip(ids, lines, strict=True)):
        if place > len(location_lines):
            raise DataError(
                f"{split_file}: line {line}: aerial id {place} has no line in {locations} ({len(location_lines)} lines)"
            )
        where = f"{locations}: line {place}"
        fields = [field.strip() for field in location_lines[place - 1].split(",")]
        if len(fields) < 4:
            raise DataError(
                f"{where}: {len(fields)} columns, expected at least 4 (aerial lat, aerial lon, ground lat, ground lon)"
                f" for aerial id {place} of {split_file} line {line}"
            )
        aerial_coords[i] = coordinate(fields[0], fields[1], where, "aerial")
        ground_coords[i] = coordinate(fields[2], fields[3], where, "ground")

    queries = tuple(root / ground for ground in grounds)
    references = tuple(root / aerial for aerial in aerials)
    check_exist(queries, lambda i: f"{split_file}: line {lines[i]}", "ground panorama")
    check_exist(references, lambda i: f"{split_file}: line {lines[i]}", "aerial tile")
    n = len(queries)
    return CrossViewSet(
        name=f"{name}/{split}",
        queries=queries,
        references=references,
        query_coords=ground_coords,
        reference_coords=aerial_coords,
        positive=np.arange(n, dtype=np.int64),
        semi_positives=np.zeros((n, 0), dtype=np.int64),
    )
