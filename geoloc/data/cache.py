"""The feature cache: what every trial reads instead of running the frozen backbone.

A cache is a folder::

    manifest.json   format, backbone, weights, views, feature_dim, n, source hash, ...
    features.npy    float16 (n, views, feature_dim); training reads its rows with os.pread
    coords.npy      float64 (n, 2), (lat, lon) degrees

Real data (geoloc.data.features) and the offline benchmark (geoloc.data.synthetic) both write
it. Writers build into a temporary sibling folder and rename it into place (``geoloc.common.atomic``),
so a reader never sees a half-written cache.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoloc.common.atomic import publish_dir, temporary_dir
from geoloc.geo import check_coordinates

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class DataError(ValueError):
    """A user's data problem; the message names the file, row or key."""


@dataclass
class FeatureCache:
    """An opened cache: features stay on disk, coordinates are in memory."""

    path: Path
    features: np.ndarray  # (n, views, feature_dim) float16 memmap
    coords: np.ndarray  # (n, 2) float64
    manifest: dict
    rows: np.ndarray | None = None  # a subset's rows of ``features`` (``subset``); None: every row, in order
    source: FeatureCache | None = field(default=None, repr=False, compare=False)  # the whole cache of a subset
    _file: io.RawIOBase | None = field(default=None, init=False, repr=False)  # opened by the first read

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = self

    def __len__(self) -> int:
        return len(self.coords)

    def subset(self, rows: np.ndarray) -> FeatureCache:
        """The cache of these rows only (sorted row numbers of this cache); nothing is copied from disk."""
        rows = np.asarray(rows, dtype=np.int64)
        return FeatureCache(self.path, self.features, self.coords[rows], self.manifest, self._rows(rows), self.source)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        """Row numbers of ``features`` for this cache's rows ``idx``."""
        return np.asarray(idx, dtype=np.int64) if self.rows is None else self.rows[idx]

    def block(self, start: int, stop: int) -> np.ndarray:
        """Every view of this cache's rows ``start:stop``, (stop - start, views, feature_dim) float16, in memory."""
        if self.rows is None:
            return np.array(self.features[start:stop])
        return self.features[self.rows[start:stop]]

    @property
    def nbytes(self) -> int:
        """Bytes of this cache's features (of its rows only, for a subset)."""
        return len(self) * self.views * self.feature_dim * self.features.dtype.itemsize

    def read(self, idx: np.ndarray, views: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``features[idx, views]`` as (len(idx), feature_dim) float16, read with ``os.pread``
        (into ``out`` when given: a pinned buffer that the GPU copies from).

        Why not index the memory map: every page it touches (and the 64 KiB the kernel maps
        around each fault) stays counted in the process's RSS, so a trial on a 1M-image cache
        looked 1.2 GiB larger than one on a 10K cache (bench/bench_memory.py); pread copies just
        the rows and maps nothing. Where there is no ``os.pread`` (Windows) the memory map is used.
        """
        if out is None:
            out = np.empty((len(idx), self.feature_dim), dtype=self.features.dtype)
        idx = self._rows(idx)
        if not hasattr(os, "pread") or getattr(self.features, "filename", None) is None:  # Windows; in memory
            out[:] = self.features[idx, views]
            return out
        if self._file is None:
            self._file = open(self.features.filename, "rb", buffering=0)  # noqa: SIM115 (lives as long as the cache)
        fd, row_bytes = self._file.fileno(), self.feature_dim * self.features.dtype.itemsize
        rows = out.view(np.uint8).reshape(len(idx), row_bytes)
        for k, row in enumerate(np.asarray(idx, np.int64) * self.views + np.asarray(views, np.int64)):
            rows[k] = np.frombuffer(os.pread(fd, row_bytes, self.features.offset + int(row) * row_bytes), np.uint8)
        return out

    @property
    def views(self) -> int:
        return self.features.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[2]


def open_cache(path: str | Path, expect: dict | None = None) -> FeatureCache:
    """Open and check a cache; ``expect`` lists manifest entries that must match (e.g. backbone)."""
    path = Path(path).expanduser()
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise DataError(f"{path}: not a feature cache (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{manifest_file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{manifest_file}: format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            raise DataError(f"{manifest_file}: {key} is {manifest.get(key)!r}, expected {value!r}; rebuild the cache")
    try:
        features = np.load(path / "features.npy", mmap_mode="r")
        coords = np.load(path / "coords.npy")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable cache arrays ({e})") from None
    if features.ndim != 3 or coords.shape != (features.shape[0], 2):
        raise DataError(f"{path}: features {features.shape} and coords {coords.shape} do not match")
    try:
        check_coordinates(coords, f"{path / 'coords.npy'}")
    except ValueError as e:
        raise DataError(str(e)) from None
    return FeatureCache(path, features, coords.astype(np.float64), manifest)


class CacheWriter:
    """Write a cache into a temporary folder, then ``commit()`` renames it into ``path``.

    ``features`` is a writable memmap, so caches larger than memory are filled in chunks.
    """

    def __init__(self, path: str | Path, n: int, views: int, feature_dim: int):
        self.path = Path(path).expanduser()
        self.tmp = temporary_dir(self.path)
        self.features = np.lib.format.open_memmap(
            self.tmp / "features.npy", mode="w+", dtype=np.float16, shape=(n, views, feature_dim)
        )
        self.coords = np.zeros((n, 2), dtype=np.float64)

    def commit(self, manifest: dict) -> Path:
        self.features.flush()
        del self.features
        np.save(self.tmp / "coords.npy", self.coords)
        manifest = {"format": FORMAT_VERSION, "n": len(self.coords), **manifest}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        publish_dir(self.tmp, self.path, MANIFEST)  # another process's cache, published first, is kept
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
