"""The record of one split of a cross-view data set (``CrossViewSet``), apart from the package so that
the readers can build it without importing the package that dispatches to them (no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
