"""Tiny cross-view data sets in the published layouts (CVUSA, CVACT, VIGOR), for tests and benchmarks.

Each ``write_*`` function writes a folder that the matching reader in ``geoloc/data/crossview/``
reads as if it were the real data set: the split files as published, real image files (a few
pixels of seeded noise, decodable by pillow) and coordinates given by the small functions below,
so that a test can state the known answer. ``size`` is the ground panorama's (height, width);
aerial tiles are square, ``height`` pixels a side. Everything is deterministic in ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from geoloc.data.crossview.vigor import CITIES, CROSS_AREA_FILE, SAME_AREA_FILES

CVUSA_SPLITS = {"train": "splits/train-19zl.csv", "val": "splits/val-19zl.csv"}
CVACT_GROUND = "ANU_data_small/streetview/{}_grdView.jpg"
CVACT_AERIAL = "ANU_data_small/satview_polish/{}_satView_polish.jpg"
VIGOR_CITY_ORIGIN = {  # near each city's centre; a tile or panorama lies a few hundred metres off it
    "Chicago": (41.88, -87.63),
    "NewYork": (40.71, -74.0),
    "SanFrancisco": (37.77, -122.42),
    "Seattle": (47.6, -122.33),
}


def write_image(path: Path, height: int, width: int, rng: np.random.Generator) -> Path:
    """A ``height`` x ``width`` RGB image of seeded noise; the suffix picks the format (JPEG or PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------------- CVUSA


def cvusa_ids(n_train: int, n_val: int) -> dict[str, list[int]]:
    """The pair ids of each split: odd numbers for train, even for val, so that ids skip lines of all.csv."""
    return {"train": [2 * i + 1 for i in range(n_train)], "val": [2 * i + 2 for i in range(n_val)]}


def cvusa_coords(place: int) -> tuple[float, float, float, float]:
    """Line ``place`` of ``split_locations/all.csv``: aerial lat, aerial lon, ground lat, ground lon."""
    lat, lon = round(40 + 0.01 * place, 6), round(-90 - 0.01 * place, 6)
    return lat, lon, round(lat + 0.0001, 6), round(lon - 0.0001, 6)


def cvusa_paths(place: int) -> tuple[str, str, str]:
    """A pair's aerial, ground and annotation paths as the split file writes them."""
    return f"bingmap/19/{place:07d}.jpg", f"streetview/panos/{place:07d}.jpg", f"streetview/annotations/{place:07d}.png"


def write_cvusa(root: str | Path, n_train: int = 3, n_val: int = 2, size=(8, 16), seed: int = 0) -> Path:
    """CVUSA's layout: the two 19zl split files, ``all.csv`` (one spare line at the end) and the images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = cvusa_ids(n_train, n_val)
    for split, places in ids.items():
        rows = [",".join(cvusa_paths(place)) for place in places]
        _write_text(root / CVUSA_SPLITS[split], rows)
        for place in places:
            aerial, ground, _ = cvusa_paths(place)
            write_image(root / aerial, size[0], size[0], rng)
            write_image(root / ground, size[0], size[1], rng)
    last = max(ids["train"] + ids["val"]) + 1
    lines = [",".join(str(value) for value in cvusa_coords(place)) + ",0" for place in range(1, last + 1)]
    _write_text(root / "split_locations" / "all.csv", lines)
    return root


# --------------------------------------------------------------------------------------------- CVACT


def cvact_id(row: int) -> str:
    """The place id in ``panoIds`` row ``row`` (0-based); all the same length, as in a MATLAB char matrix."""
    return f"act{row:04d}Pano_x"


def cvact_utm(row: int) -> tuple[float, float]:
    """(easting, northing) metres of ``panoIds`` row ``row``, in Canberra (UTM zone 55 south)."""
    return 690_000.0 + 150.0 * row, 6_090_000.0 + 100.0 * row


def cvact_split_rows(n_train: int, n_val: int) -> dict[str, list[int]]:
    """0-based ``panoIds`` rows of each split, not in file order; the last row of the file is in no split."""
    rows = list(range(n_train + n_val))
    return {"train": rows[:n_train][::-1], "val": rows[n_train:][::-1]}


def write_cvact(
    root: str | Path, n_train: int = 3, n_val: int = 2, size=(8, 16), seed: int = 0, utm_order: str = "en"
) -> Path:
    """CVACT's layout: ``ACT_data.mat`` (written by scipy) and the images; ``utm_order`` "ne" swaps utm's columns."""
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    n = n_train + n_val + 1
    utm = np.array([cvact_utm(row) for row in range(n)])
    if utm_order == "ne":
        utm = utm[:, ::-1]
    splits = cvact_split_rows(n_train, n_val)

    def one_based(rows: list[int]) -> np.ndarray:
        return (np.asarray(rows, dtype=np.float64) + 1).reshape(-1, 1)  # MATLAB's doubles, a column

    mat = {
        "panoIds": np.array([cvact_id(row) for row in range(n)]),  # a char matrix in the file
        "utm": utm,
        "trainSet": {"trainNum": float(n_train), "trainInd": one_based(splits["train"])},
        "valSet": {"valNum": float(n_val), "valInd": one_based(splits["val"])},
    }
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "ACT_data.mat", mat)
    for rows in splits.values():
        for row in rows:
            write_image(root / CVACT_GROUND.format(cvact_id(row)), size[0], size[1], rng)
            write_image(root / CVACT_AERIAL.format(cvact_id(row)), size[0], size[0], rng)
    return root


# --------------------------------------------------------------------------------------------- VIGOR


def vigor_tile(city: str, t: int) -> tuple[str, float, float]:
    """Tile ``t`` of ``city``: its name and centre (lat, lon)."""
    lat0, lon0 = VIGOR_CITY_ORIGIN[city]
    lat, lon = round(lat0 + 0.001 * t, 6), round(lon0 + 0.002 * t, 6)
    return f"satellite_{lat}_{lon}.png", lat, lon


def vigor_labels(p: int, n_tiles: int) -> list[int]:
    """Panorama ``p``'s tiles: the positive ``p // 2`` (so panoramas 0 and 1 share one), then three semi-positives."""
    positive = p // 2
    return [positive] + [(positive + k) % n_tiles for k in (1, 2, 3)]


def vigor_panorama(city: str, p: int, n_tiles: int) -> tuple[str, float, float]:
    """Panorama ``p`` of ``city``: its file name (``<id>,<lat>,<lon>,.jpg``) and location, near its positive tile."""
    _, lat, lon = vigor_tile(city, vigor_labels(p, n_tiles)[0])
    lat, lon = round(lat + 0.0001, 6), round(lon - 0.0002, 6)
    return f"-{city[:3]}Pano{p:03d}_x,{lat},{lon},.jpg", lat, lon


def write_vigor(
    root: str | Path, n_tiles: int = 5, n_train: int = 3, n_test: int = 2, size=(8, 16), seed: int = 0
) -> Path:
    """VIGOR's layout for all four cities: tile lists, same-area and cross-area panorama lists, images.

    In each city panoramas ``0 .. n_train - 1`` are same-area train, the next ``n_test`` same-area
    test, all of them in ``pano_label_balanced.txt``; the last tile is no panorama's positive.
    """
    if (n_train + n_test - 1) // 2 >= n_tiles - 1 or n_tiles < 4:
        raise ValueError("need n_tiles >= 4 and more tiles than (n_train + n_test) / 2 + 1")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for city in CITIES:
        splits = root / "splits" / city
        tiles = [vigor_tile(city, t) for t in range(n_tiles)]
        _write_text(splits / "satellite_list.txt", [name for name, _, _ in tiles])
        for name, _, _ in tiles:
            write_image(root / "satellite" / city / name, size[0], size[0], rng)
        rows = []
        for p in range(n_train + n_test):
            name, _, _ = vigor_panorama(city, p, n_tiles)
            fields = [name]
            for k, t in enumerate(vigor_labels(p, n_tiles)):
                fields += [tiles[t][0], f"{1.5 * k + 0.25}", f"{-2.0 * k - 0.5}"]
            rows.append(" ".join(fields))
            write_image(root / "ground" / city / name, size[0], size[1], rng)
        _write_text(splits / SAME_AREA_FILES["train"], rows[:n_train])
        _write_text(splits / SAME_AREA_FILES["val"], rows[n_train:])
        _write_text(splits / CROSS_AREA_FILE, rows)
    return root


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
