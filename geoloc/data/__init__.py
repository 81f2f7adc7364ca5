"""Data for one run: the training cache, the evaluation caches and the GPS gallery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoloc.data.cache import DataError, FeatureCache, open_cache
from geoloc.data.config import OFFLINE, OFFLINE_VAL_SET, UNION, DataConfig, eval_set_name
from geoloc.data.synthetic import build_offline_benchmark, geoclip_gallery_coords, read_gallery
from geoloc.geo import invalid_coordinate_rows

GALLERY_THINNING_SEED = 0  # the same thinned gallery for every trial, so scores compare
TRAIN_SUBSET_SEED = 0  # the same training subset (data.train_fraction) for every trial of every study


@dataclass
class Data:
    train: FeatureCache
    val: dict[str, FeatureCache]  # name -> cache; the first drives ``score``
    gallery: np.ndarray  # (G, 2) float64


def prepare_offline(cfg: DataConfig) -> Path | None:
    """Build the offline benchmark if this configuration names it (call once before trials start)."""
    uses = OFFLINE in (cfg.train, cfg.gallery, *cfg.val)
    return build_offline_benchmark(cfg.offline) if uses else None


def load_data(cfg: DataConfig) -> Data:
    """Open (memory-map) every cache the configuration names and load its gallery."""
    benchmark = prepare_offline(cfg)
    train = training_subset(open_cache(benchmark / "train" if cfg.train == OFFLINE else cfg.train), cfg.train_fraction)
    val = {}
    for spec in cfg.val:
        cache = open_cache(benchmark / OFFLINE_VAL_SET if spec == OFFLINE else spec)
        name = eval_set_name(spec)
        if name in val:  # metrics are keyed by this name: two sets must not share it
            raise DataError(
                f"{spec}: data.val names two evaluation sets {name!r} (names come from folder names); rename one"
            )
        if cache.feature_dim != train.feature_dim:
            raise DataError(
                f"{spec}: feature_dim {cache.feature_dim} differs from the training cache's {train.feature_dim}"
            )
        val[name] = cache
    return Data(train, val, load_gallery(cfg, train, benchmark))


def training_subset(cache: FeatureCache, fraction: float) -> FeatureCache:
    """The seeded ``data.train_fraction`` of the training cache (at least one image); the cache itself at 1.0."""
    if fraction >= 1.0:
        return cache
    n = max(1, round(fraction * len(cache)))
    rows = np.random.default_rng(TRAIN_SUBSET_SEED).choice(len(cache), n, replace=False)
    return cache.subset(np.sort(rows))


def load_gallery(cfg: DataConfig, train: FeatureCache, benchmark: Path | None) -> np.ndarray:
    """The gallery ``data.gallery`` names (the study dimension issue 27 calls ``eval.gallery``), thinned to
    ``data.gallery_size`` with a fixed seed; "train" and "union" are deduplicated (sorted by ``np.unique``)."""
    if cfg.gallery == OFFLINE:
        gallery = read_gallery(benchmark)
    elif cfg.gallery == "geoclip":
        gallery = geoclip_gallery_coords()
    elif cfg.gallery == "train":
        gallery = np.unique(train.coords, axis=0)
    elif cfg.gallery == UNION:
        gallery = np.unique(np.concatenate([train.coords, geoclip_gallery_coords()]), axis=0)
    else:
        gallery = read_coordinate_csv(cfg.gallery)
    if cfg.gallery_size is not None and cfg.gallery_size < len(gallery):
        rng = np.random.default_rng(GALLERY_THINNING_SEED)
        gallery = gallery[np.sort(rng.choice(len(gallery), cfg.gallery_size, replace=False))]
    return gallery


def read_coordinate_csv(path: str | Path) -> np.ndarray:
    """(N, 2) coordinates from a CSV with LAT and LON columns (any case), checked row by row."""
    import pandas as pd  # here: validating a study imports this package, and needs no pandas

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: gallery file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    columns = {c.strip().upper(): c for c in frame.columns}
    missing = [c for c in ("LAT", "LON") if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]} (columns: {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise DataError(f"{path}: no rows")
    coords = frame[[columns["LAT"], columns["LON"]]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = invalid_coordinate_rows(coords)
    if len(bad):
        lat, lon = frame.iloc[bad[0]][[columns["LAT"], columns["LON"]]]
        raise DataError(f"{path}: line {bad[0] + 2}: invalid coordinate (LAT={lat}, LON={lon}); {len(bad)} bad rows")
    return coords


__all__ = ["Data", "DataError", "FeatureCache", "load_data", "prepare_offline", "read_coordinate_csv"]
