"""VIGOR as published (Zhu, Yang, Chen; CVPR 2021), same-area and cross-area, read as Sample4Geo reads it.

Layout under the data set's root folder, for each city of Chicago, NewYork, SanFrancisco, Seattle::

    splits/<city>/satellite_list.txt             one tile name per line: satellite_<lat>_<lon>.png (its centre)
    splits/<city>/same_area_balanced_train.txt   same-area splits, one panorama per line, 13 columns split by
    splits/<city>/same_area_balanced_test.txt    whitespace: panorama, positive tile, its two pixel offsets,
    splits/<city>/pano_label_balanced.txt        then three semi-positive tiles each with two offsets
                                                 (columns 0, 1, 4, 7, 10 are names); cross-area: all panoramas
    ground/<city>/<panorama>                     the panoramas, named <id>,<lat>,<lon>,.jpg
    satellite/<city>/<tile>                      the tiles

Splits. Same-area: the ``same_area_balanced_{train,test}.txt`` of all four cities ("val" is the
test file). Cross-area: train on every panorama of NewYork and Seattle, evaluate on Chicago and
SanFrancisco (``pano_label_balanced.txt``). References of a split are all tiles in the
``satellite_list.txt`` of its cities, in city order then list order: VIGOR evaluates against
all of them, tiles without a panorama included. One tile may be the positive of two panoramas.

Coordinates. A tile's centre is in its name. A panorama's location is in its name too (the
published names carry it, ``--Bm25YXcr-aJ-Nbdz0oIw,47.593046,-122.300124,.jpg``), which is exact;
the alternative, the positive tile's centre plus the pixel offset, would need each city's
metres per pixel, which the files do not give. A panorama name without coordinates is a
DataError. The offsets are checked to be numbers but not used. In ``satellite_list.txt`` the
first field of a line is the tile's name; further fields, if any, are ignored (as Sample4Geo does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoloc.data.cache import DataError
from geoloc.data.crossview.files import (
    FirstSeen,
    absolute_root,
    check_columns,
    check_exist,
    coordinate,
    number,
    split_rows,
)
from geoloc.data.crossview.record import CrossViewSet

CITIES = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
CROSS_AREA_CITIES = {"train": ("NewYork", "Seattle"), "val": ("Chicago", "SanFrancisco")}
AREAS = ("same", "cross")
SATELLITE_LIST = "satellite_list.txt"
SAME_AREA_FILES = {"train": "same_area_balanced_train.txt", "val": "same_area_balanced_test.txt"}
CROSS_AREA_FILE = "pano_label_balanced.txt"
ROW_COLUMNS = 13
TILE_COLUMNS = (1, 4, 7, 10)  # the positive, then the three semi-positives
OFFSET_COLUMNS = (2, 3, 5, 6, 8, 9, 11, 12)
ROW_MEANING = "panorama, positive tile, 2 offsets, then 3 semi-positive tiles with 2 offsets each"


def tile_centre(name: str, where: str) -> tuple[float, float]:
    """(lat, lon) of a tile named ``satellite_<lat>_<lon>.png``."""
    parts = Path(name).stem.split("_")
    if len(parts) != 3 or parts[0] != "satellite":
        raise DataError(f"{where}: tile name {name!r} does not read satellite_<lat>_<lon>.png")
    return coordinate(parts[1], parts[2], where, f"tile {name}")


def panorama_location(name: str, where: str) -> tuple[float, float]:
    """(lat, lon) of a panorama named ``<id>,<lat>,<lon>,.jpg``."""
    parts = name.split(",")
    if len(parts) < 4:
        raise DataError(
            f"{where}: panorama name {name!r} carries no coordinates (VIGOR names them <id>,<lat>,<lon>,.jpg)"
        )
    return coordinate(parts[-3], parts[-2], where, f"panorama {name}")


def split_cities(split: str, area: str) -> tuple[tuple[str, ...], str]:
    """The cities of a split and the file that lists its panoramas in each city's ``splits`` folder."""
    if area not in AREAS:
        raise ValueError(f"area must be one of {AREAS}, got {area!r}")
    if area == "same":
        return CITIES, SAME_AREA_FILES[split]
    return CROSS_AREA_CITIES[split], CROSS_AREA_FILE


def read_vigor(root: str | Path, split: str, area: str = "same") -> CrossViewSet:
    """The ``split`` ("train" or "val") of the VIGOR folder ``root`` in the ``area`` setting ("same" or "cross")."""
    cities, list_name = split_cities(split, area)
    root = absolute_root(root)
    references: list[Path] = []
    reference_coords: list[tuple[float, float]] = []
    reference_where: list[str] = []
    queries: list[Path] = []
    query_coords: list[tuple[float, float]] = []
    query_where: list[str] = []
    tiles: list[list[int]] = []
    panoramas = FirstSeen("panorama")
    for city in cities:
        tile_list = root / "splits" / city / SATELLITE_LIST
        index: dict[str, int] = {}
        listed = FirstSeen("tile")
        for line, fields in split_rows(tile_list, f"VIGOR tile list of {city}", sep=None):
            where = f"{tile_list}: line {line}"
            name = fields[0]
            listed.add(name, where)
            reference_coords.append(tile_centre(name, where))
            index[name] = len(references)
            references.append(root / "satellite" / city / name)
            reference_where.append(where)

        panorama_list = root / "splits" / city / list_name
        for line, fields in split_rows(panorama_list, f"VIGOR {area}-area {split} panorama list of {city}", sep=None):
            where = f"{panorama_list}: line {line}"
            check_columns(panorama_list, line, fields, ROW_COLUMNS, ROW_MEANING)
            for column in OFFSET_COLUMNS:
                number(fields[column], where, f"column {column + 1} (a pixel offset)")
            row_tiles = []
            for column in TILE_COLUMNS:
                if fields[column] not in index:
                    kind = "positive tile" if column == TILE_COLUMNS[0] else "semi-positive tile"
                    raise DataError(f"{where}: {kind} {fields[column]} (column {column + 1}) is not in {tile_list}")
                row_tiles.append(index[fields[column]])
            panorama = fields[0]
            panoramas.add(f"{city}/{panorama}", where)
            query_coords.append(panorama_location(panorama, where))
            queries.append(root / "ground" / city / panorama)
            query_where.append(where)
            tiles.append(row_tiles)

    check_exist(queries, query_where.__getitem__, "panorama")
    check_exist(references, reference_where.__getitem__, "tile")
    labels = np.asarray(tiles, dtype=np.int64).reshape(len(queries), len(TILE_COLUMNS))
    return CrossViewSet(
        name=f"vigor-{area}/{split}",
        queries=tuple(queries),
        references=tuple(references),
        query_coords=np.asarray(query_coords, dtype=np.float64).reshape(-1, 2),
        reference_coords=np.asarray(reference_coords, dtype=np.float64).reshape(-1, 2),
        positive=labels[:, 0].copy(),
        semi_positives=labels[:, 1:].copy(),
    )
