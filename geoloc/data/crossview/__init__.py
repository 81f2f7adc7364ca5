"""Cross-view data sets: ground-level queries matched against aerial references (Sample4Geo's task).

A split of a data set is a ``CrossViewSet``: the query images (ground panoramas), the reference
images (aerial tiles), both views' coordinates, and for each query the index of its true
reference (and, for VIGOR, of its semi-positive tiles). The readers take the folders as the
publishers ship them, untouched (``cvusa.py``, ``cvact.py``, ``vigor.py``); the offline
benchmark (``offline.py``) renders a small synthetic data set in CVUSA's layout, so the CVUSA
reader reads it too. Every problem is a ``DataError`` naming the file and the row (exit 2 at the
command line). ``read_split`` picks the reader by ``data.layout``.

Nothing here imports torch: the launcher checks the data before any trial starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoloc.data.cache import DataError

LAYOUTS = ("cvusa", "cvact", "vigor", "offline")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class CrossViewSet:
    """One split of a cross-view data set; arrays are read-only once built."""

    name: str
    """``layout/split`` (VIGOR: ``vigor-same/train`` or ``vigor-cross/val``); names caches and lists."""
    queries: tuple[Path, ...]
    """The ground images, absolute paths; query ``i`` is row ``i`` of every query array."""
    references: tuple[Path, ...]
    """The aerial tiles, absolute paths, each once (VIGOR: a tile may be the positive of several queries)."""
    query_coords: np.ndarray
    """(n, 2) float64, (lat, lon) degrees of each ground image."""
    reference_coords: np.ndarray
    """(m, 2) float64, (lat, lon) degrees of each tile's centre."""
    positive: np.ndarray
    """(n,) int64: the index in ``references`` of query ``i``'s true tile."""
    semi_positives: np.ndarray
    """(n, s) int64: indices of query ``i``'s semi-positive tiles, -1 where fewer; s = 0 except VIGOR (3)."""

    def __post_init__(self) -> None:
        n, m = len(self.queries), len(self.references)
        if self.query_coords.shape != (n, 2) or self.reference_coords.shape != (m, 2):
            raise ValueError(f"{self.name}: coordinates do not match the images ({n} queries, {m} references)")
        if self.positive.shape != (n,) or self.semi_positives.ndim != 2 or len(self.semi_positives) != n:
            raise ValueError(f"{self.name}: positive/semi_positives must have one row per query")
        for array in (self.query_coords, self.reference_coords, self.positive, self.semi_positives):
            array.flags.writeable = False

    def __len__(self) -> int:
        return len(self.queries)


def read_split(layout: str, root: str | Path, split: str, *, area: str = "same") -> CrossViewSet:
    """The ``split`` ("train" or "val") of the data set at ``root`` in a published ``layout``.

    ``area`` (VIGOR only): "same" (same-area split, all four cities) or "cross" (train on NewYork
    and Seattle, evaluate on Chicago and SanFrancisco). ``offline`` reads a built offline
    benchmark folder (``offline.build_offline_crossview`` returns it) in CVUSA's layout.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root: {root} is not a folder")
    if layout in ("cvusa", "offline"):
        from geoloc.data.crossview.cvusa import read_cvusa

        return read_cvusa(root, split, name=layout)
    if layout == "cvact":
        from geoloc.data.crossview.cvact import read_cvact

        return read_cvact(root, split)
    if layout == "vigor":
        from geoloc.data.crossview.vigor import read_vigor

        return read_vigor(root, split, area)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
