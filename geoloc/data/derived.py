"""Data derived from a feature cache (neighbour lists, mined pools, a fitted semivariogram), kept beside it.

A derived file lives in ``CACHE/derived/`` and is named by what it is and a digest of everything
it was computed from (``fingerprint``), so a changed input is a new file, never a stale one. The
first process to need a file builds it while holding a file lock; every other trial of a study
(another Ray worker, another node on a shared file system) waits for that lock and then reads the
finished file instead of building it again. Writes are atomic (``geoloc.common.atomic``), so a crash
leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.common.atomic import atomic_file, file_lock, read_json, write_json

FOLDER = "derived"


def fingerprint(*parts: Any) -> str:
    """A 16-hex digest of arrays (their dtype, shape and bytes) and JSON-able values, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.data)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def derived_path(cache_path: str | Path, name: str, key: str, suffix: str) -> Path:
    """``CACHE/derived/<name>-<key>.<suffix>`` (the folder is made when missing)."""
    folder = Path(cache_path) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{key}.{suffix}"


def cached_array(cache_path: str | Path, name: str, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """The array ``build()`` returns, computed once per (cache, name, key) and kept as a ``.npy`` file,
    memory-mapped read-only: the trials (and seeds) on one machine share its pages."""
    path = derived_path(cache_path, name, key, "npy")
    with file_lock(path):
        if not path.exists():
            with atomic_file(path) as f:
                np.save(f, build())
    return np.load(path, mmap_mode="r")


def cached_json(cache_path: str | Path, name: str, key: str, build: Callable[[], Any]) -> Any:
    """The JSON value ``build()`` returns, computed once per (cache, name, key) and kept as a ``.json`` file."""
    path = derived_path(cache_path, name, key, "json")
    with file_lock(path):
        value = read_json(path)
        if value is None:
            value = build()
            write_json(path, value)
    return value
