"""A tiny offline cross-view benchmark for the tests, and a reading of its CVUSA layout written here
(independent of ``geoloc.data.crossview.cvusa``, so the layout is checked against the format itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoloc.data.crossview import CrossViewSet
from geoloc.data.crossview.offline import OfflineCrossViewConfig, build_offline_crossview

TINY = {"n_train": 40, "n_val": 10}


def tiny_benchmark(root: Path, **changes) -> tuple[OfflineCrossViewConfig, Path]:
    cfg = OfflineCrossViewConfig(root=str(root), **(TINY | changes))
    return cfg, build_offline_crossview(cfg)


def read_cvusa_layout(folder: Path, split: str) -> CrossViewSet:
    """CVUSA's split file (aerial, panorama, annotation; no header) and ``all.csv`` (row id - 1)."""
    rows = [line.split(",") for line in (folder / "splits" / f"{split}-19zl.csv").read_text().splitlines()]
    locations = np.loadtxt(folder / "split_locations" / "all.csv", delimiter=",", ndmin=2)
    ids = np.array([int(Path(aerial).stem) for aerial, _, _ in rows])
    return CrossViewSet(
        name=f"offline/{split}",
        queries=tuple(folder / ground for _, ground, _ in rows),
        references=tuple(folder / aerial for aerial, _, _ in rows),
        query_coords=locations[ids - 1, 2:4],
        reference_coords=locations[ids - 1, 0:2],
        positive=np.arange(len(rows)),
        semi_positives=np.zeros((len(rows), 0), dtype=np.int64),
    )
