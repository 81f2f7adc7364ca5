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

from pathlib import Path

from geoloc.data.cache import DataError
from geoloc.data.crossview.record import CrossViewSet

LAYOUTS = ("cvusa", "cvact", "vigor", "offline")
SPLITS = ("train", "val")
__all__ = ["LAYOUTS", "SPLITS", "CrossViewSet", "read_split"]


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
