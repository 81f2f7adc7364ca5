"""CVACT as published (Liu and Li, CVPR 2019; Canberra), read the way Sample4Geo reads it.

Layout under the data set's root folder::

    ACT_data.mat                                   MATLAB file:
        panoIds                                    N place ids (a char matrix; a cell array is read too)
        utm                                        N x 2 UTM coordinates of each place, metres
        trainSet.trainInd, valSet.valInd           1-based indices into panoIds of each split
    ANU_data_small/streetview/<id>_grdView.jpg               the ground panorama of place <id>
    ANU_data_small/satview_polish/<id>_satView_polish.jpg    its aerial tile, centred on the place

Sample4Geo takes ``panoIds[trainSet[0][0][1] - 1]`` (the struct's field by position, which is
``trainInd``) and the same for ``valSet``; this reader takes the fields by name. Queries are the
panoramas, references the tiles of the same split in the same order (query ``i``'s positive is
reference ``i``), no semi-positives. Sample4Geo skips ids whose images are missing; here a missing
image is a DataError naming the index row (the harness never drops data in silence).

Coordinates. The file has no latitude and longitude, only ``utm`` (Sample4Geo and the CVACT code
use it as planar metres). Canberra lies in UTM zone 55 south, so ``utm`` is converted from zone 55
south on the WGS84 ellipsoid to degrees with Krüger's series (to third order in the third
flattening n, as given in the UTM article's inverse formulas; error about a millimetre within the
zone; checked against Snyder's worked example and the meridian arc in the tests). The data set
does not say which column is the easting: an easting lies within [100 km, 900 km] of the false
origin and Canberra's southern-hemisphere northing is millions of metres, so the column whose
values all lie in the easting range is the easting; if that cannot be told, a DataError. Both a
query and its positive tile get the place's coordinates (the tile is centred on the panorama).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoloc.data.cache import DataError
from geoloc.data.crossview.files import FirstSeen, absolute_root, check_exist, check_range
from geoloc.data.crossview.record import CrossViewSet

MAT_FILE = "ACT_data.mat"
GROUND = "ANU_data_small/streetview/{}_grdView.jpg"
AERIAL = "ANU_data_small/satview_polish/{}_satView_polish.jpg"
SPLIT_FIELDS = {"train": ("trainSet", "trainInd"), "val": ("valSet", "valInd")}
UTM_ZONE, UTM_SOUTH = 55, True  # Canberra
EASTING_RANGE = (100_000.0, 900_000.0)  # metres; every UTM easting lies here, no northing of Canberra does
WGS84_A, WGS84_F = 6378137.0, 1 / 298.257223563
UTM_K0, UTM_FALSE_EASTING, UTM_FALSE_NORTHING_SOUTH = 0.9996, 500_000.0, 10_000_000.0


def utm_to_latlon(easting, northing, zone: int, *, south: bool, a: float = WGS84_A, f: float = WGS84_F):
    """(lat, lon) degrees of UTM ``easting``/``northing`` (metres, arrays) in ``zone``: Krüger's series.

    ``a`` and ``f`` are the ellipsoid's semi-major axis and flattening (WGS84 by default).
    """
    x = (np.asarray(easting, dtype=np.float64) - UTM_FALSE_EASTING) / UTM_K0
    y = (np.asarray(northing, dtype=np.float64) - (UTM_FALSE_NORTHING_SOUTH if south else 0.0)) / UTM_K0
    n = f / (2 - f)
    rectifying_radius = a / (1 + n) * (1 + n**2 / 4 + n**4 / 64)
    beta = (n / 2 - 2 * n**2 / 3 + 37 * n**3 / 96, n**2 / 48 + n**3 / 15, 17 * n**3 / 480)
    delta = (2 * n - 2 * n**2 / 3 - 2 * n**3, 7 * n**2 / 3 - 8 * n**3 / 5, 56 * n**3 / 15)
    xi, eta = y / rectifying_radius, x / rectifying_radius
    xi_prime, eta_prime = xi.copy(), eta.copy()
    for j, b in enumerate(beta, start=1):
        xi_prime -= b * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_prime -= b * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    conformal_lat = np.arcsin(np.sin(xi_prime) / np.cosh(eta_prime))
    lat = conformal_lat.copy()
    for j, d in enumerate(delta, start=1):
        lat += d * np.sin(2 * j * conformal_lat)
    central_meridian = 6.0 * zone - 183.0
    lon = central_meridian + np.degrees(np.arctan2(np.sinh(eta_prime), np.cos(xi_prime)))
    return np.degrees(lat), lon


def _load(path: Path) -> dict:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not path.is_file():
        raise DataError(f"{path}: CVACT data file not found (expected {MAT_FILE} at the data set's root)")
    try:
        # simplify_cells: structs become dicts and cell arrays lists, so fields are taken by name.
        return loadmat(path, simplify_cells=True)
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from None


def _pano_ids(mat: dict, path: Path) -> list[str]:
    if "panoIds" not in mat:
        raise DataError(f"{path}: no variable panoIds (variables: {', '.join(sorted(_variables(mat)))})")
    raw = mat["panoIds"]
    items = [raw] if isinstance(raw, str) else list(np.asarray(raw, dtype=object).ravel())
    ids = []
    for row, item in enumerate(items, start=1):
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{path}: panoIds: row {row}: {item!r} is not a place id (text)")
        ids.append(item.strip())
    return ids


def _variables(mat: dict) -> list[str]:
    return [key for key in mat if not key.startswith("__")]


def _split_indices(mat: dict, path: Path, split: str, n_ids: int) -> np.ndarray:
    """0-based rows of panoIds in the split, checked: whole numbers in [1, n_ids], none twice."""
    struct, field = SPLIT_FIELDS[split]
    name = f"{struct}.{field}"
    if not isinstance(mat.get(struct), dict) or field not in mat[struct]:
        raise DataError(f"{path}: no {name} (the 1-based panoIds indices of the {split} split)")
    raw = np.atleast_1d(np.asarray(mat[struct][field])).ravel()
    if raw.size == 0:
        raise DataError(f"{path}: {name} is empty")
    try:
        values = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {name} holds non-numbers (dtype {raw.dtype})") from None
    seen = FirstSeen("panoIds index")
    for row, value in enumerate(values, start=1):
        where = f"{path}: {name}: row {row}"
        if not np.isfinite(value) or value != np.floor(value) or not 1 <= value <= n_ids:
            raise DataError(f"{where}: index {raw[row - 1]} is not a whole number in [1, {n_ids}] (panoIds rows)")
        seen.add(str(int(value)), where)
    return values.astype(np.int64) - 1


def _place_coords(mat: dict, path: Path, rows: np.ndarray, n_ids: int, name: str) -> np.ndarray:
    """(lat, lon) of the given panoIds rows from ``utm`` (see the module docstring)."""
    if "utm" not in mat:
        raise DataError(f"{path}: no variable utm (the N x 2 UTM coordinates of the places)")
    try:
        utm = np.asarray(mat["utm"], dtype=np.float64).reshape(n_ids, 2)
    except (TypeError, ValueError):
        shape = np.shape(mat["utm"])
        raise DataError(f"{path}: utm has shape {shape}, expected ({n_ids}, 2) numbers, one row per panoIds") from None
    chosen = utm[rows]
    bad = np.flatnonzero(~np.isfinite(chosen).all(axis=1))
    if len(bad):
        raise DataError(
            f"{path}: utm: row {rows[bad[0]] + 1}: {chosen[bad[0]].tolist()} is not two finite numbers ({name})"
        )
    low, high = EASTING_RANGE
    in_range = (chosen >= low) & (chosen <= high)
    east = 0 if in_range[:, 0].sum() >= in_range[:, 1].sum() else 1
    fits = in_range[:, east] & ~in_range[:, 1 - east]
    if not fits.all():
        row = np.flatnonzero(~fits)[0]
        raise DataError(
            f"{path}: utm: row {rows[row] + 1}: {chosen[row].tolist()}: cannot tell easting from northing "
            f"(one column must lie within [{low:.0f}, {high:.0f}] m in every row of the {name} split, the other "
            f"outside it; UTM zone {UTM_ZONE} {'south' if UTM_SOUTH else 'north'} is assumed)"
        )
    easting, northing = chosen[:, east], chosen[:, 1 - east]
    lat, lon = utm_to_latlon(easting, northing, UTM_ZONE, south=UTM_SOUTH)
    for i in range(len(rows)):
        check_range(lat[i], lon[i], f"{path}: utm: row {rows[i] + 1}", "converted")
    return np.stack([lat, lon], axis=1)


def read_cvact(root: str | Path, split: str) -> CrossViewSet:
    """The ``split`` ("train" or "val") of the CVACT folder ``root``; a problem is a DataError naming file and row."""
    root = absolute_root(root)
    path = root / MAT_FILE
    mat = _load(path)
    ids = _pano_ids(mat, path)
    rows = _split_indices(mat, path, split, len(ids))
    coords = _place_coords(mat, path, rows, len(ids), split)
    struct, field = SPLIT_FIELDS[split]
    place_ids = [ids[row] for row in rows]
    seen = FirstSeen("place id")
    for k, place in enumerate(place_ids):
        seen.add(place, f"{path}: {struct}.{field}: row {k + 1} (panoIds row {rows[k] + 1})")
    queries = tuple(root / GROUND.format(place) for place in place_ids)
    references = tuple(root / AERIAL.format(place) for place in place_ids)

    def where(k: int) -> str:
        return f"{path}: {struct}.{field}: row {k + 1} (panoIds row {rows[k] + 1}, id {place_ids[k]})"

    check_exist(queries, where, "ground panorama")
    check_exist(references, where, "aerial tile")
    n = len(queries)
    return CrossViewSet(
        name=f"cvact/{split}",
        queries=queries,
        references=references,
        query_coords=coords,
        reference_coords=coords.copy(),
        positive=np.arange(n, dtype=np.int64),
        semi_positives=np.zeros((n, 0), dtype=np.int64),
    )
