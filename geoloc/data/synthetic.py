"""The offline benchmark: a seeded, SYNTHETIC stand-in for CLIP features of geotagged photos.

Nothing here is a real image. Locations are real (the published 100K MP-16 gallery coordinates
shipped in the ``geoclip`` wheel, with their heavy clustering in Europe and North America);
image features are made up so that studies run anywhere without downloads:

    feature(image, view) = sum_s a_s(image) * field_s(location)        location signal
                         + image nuisance (fixed per image)              content unrelated to place
                         + view nuisance (redrawn per cached view)       augmentation

``field_s`` is a smooth random field on the sphere with correlation length s (2500, 750, 200,
25 and 1 km; random Fourier features of the 3-D unit vector mapped into ``feature_dim``). The
fine scales are weak (``a_s`` small) except in a ``landmark_share`` of images, so fine
localisation is possible for few images, as in real photos. The splits follow GeoCLIP: the
gallery is drawn from the training coordinates and the validation coordinates are held out.
The constants below were calibrated so that the quickstart budget gives roughly the published
accuracy profile (see README, "The offline benchmark").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from geoloc.common.atomic import build_once
from geoloc.data.cache import CacheWriter
from geoloc.data.config import OfflineBenchmarkConfig
from geoloc.geo import EARTH_RADIUS_KM, unit_vectors

FIELD_SCALES_KM = (2500.0, 750.0, 200.0, 25.0, 1.0)
AMPLITUDE = np.array([1.0, 1.0, 1.0, 3.0, 1.0])  # per scale, ordinary images
LANDMARK_AMPLITUDE = np.array([1.0, 1.0, 1.0, 4.0, 10.0])  # per scale, landmark images
FOURIER_FEATURES = 512  # per scale
IMAGE_NUISANCE = 8.0  # std per feature, fixed per image
VIEW_NUISANCE = 2.0  # std per feature, redrawn per view
DUPLICATE_JITTER_KM = 0.5  # when more images than MP-16 coordinates are asked for
CHUNK = 8192  # images generated at a time, so a 1M-image cache needs little memory
GENERATOR_VERSION = 2  # bump when anything above changes: built benchmarks are keyed by it


def geoclip_gallery_coords() -> np.ndarray:
    """The published 100K MP-16 gallery, (100000, 2) float64, from the installed ``geoclip`` wheel."""
    import pandas as pd  # here: validating a study imports this package, and needs no pandas

    return pd.read_csv(geoclip_package_dir() / "gps_gallery" / "coordinates_100K.csv")[["LAT", "LON"]].to_numpy(
        np.float64
    )


def benchmark_dir(cfg: OfflineBenchmarkConfig) -> Path:
    """Where the benchmark of this configuration lives (one folder per distinct configuration)."""
    key = {k: v for k, v in cfg.model_dump().items() if k != "root"} | {"generator": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.root).expanduser() / f"offline-{digest}"


def build_offline_benchmark(cfg: OfflineBenchmarkConfig, progress: bool = False) -> Path:
    """Build (once, safe from several processes at once: ``geoloc.common.atomic.build_once``) and return
    the benchmark folder: ``train/``, ``val/`` caches and ``gallery.npy``."""
    return build_once(benchmark_dir(cfg), lambda tmp: _build(cfg, tmp), "the offline benchmark", progress)


def _build(cfg: OfflineBenchmarkConfig, tmp: Path) -> None:
    """The benchmark's files, written into the folder ``tmp``."""
    rng = np.random.default_rng(cfg.seed)
    train_coords, val_coords = _split(rng, cfg)
    gallery = train_coords[rng.choice(len(train_coords), size=min(cfg.n_gallery, len(train_coords)), replace=False)]
    fields = _Fields(rng, cfg.feature_dim)
    rng.integers(1 << 62)  # this draw once named the temporary folder; kept, so every later draw is as it was
    manifest = {"backbone": "synthetic", "weights": None, "offline_benchmark": cfg.model_dump()}
    for name, coords, views in (("train", train_coords, cfg.views), ("val", val_coords, 1)):
        writer = CacheWriter(tmp / name, len(coords), views, cfg.feature_dim)
        writer.coords[:] = coords
        landmark = rng.random(len(coords)) < cfg.landmark_share
        for start in range(0, len(coords), CHUNK):
            sl = slice(start, start + CHUNK)
            writer.features[sl] = fields.features(rng, coords[sl], landmark[sl], views)
        writer.commit(
            {
                **manifest,
                "split": name,
                "views": views,
                "feature_dim": cfg.feature_dim,
                "landmark_share_realised": float(landmark.mean()),
            }
        )
    np.save(tmp / "gallery.npy", gallery)
    (tmp / "DONE").write_text("synthetic offline benchmark; see geoloc/data/synthetic.py\n")


def _split(rng: np.random.Generator, cfg: OfflineBenchmarkConfig) -> tuple[np.ndarray, np.ndarray]:
    coords = geoclip_gallery_coords()
    coords = coords[rng.permutation(len(coords))]
    val, rest = coords[: cfg.n_val], coords[cfg.n_val :]
    if cfg.n_train <= len(rest):
        return rest[: cfg.n_train], val
    # Larger than MP-16's 100K (memory benchmarks): repeat coordinates with a small jitter.
    extra = rest[rng.integers(len(rest), size=cfg.n_train - len(rest))]
    jitter = rng.normal(scale=DUPLICATE_JITTER_KM / 111.0, size=extra.shape)
    extra = np.clip(extra + jitter, [-90, -180], [90, 180])
    return np.concatenate([rest, extra]), val


class _Fields:
    """Random smooth fields on the sphere, one per scale, each mapped into feature space."""

    def __init__(self, rng: np.random.Generator, feature_dim: int):
        self.omega = [rng.normal(scale=EARTH_RADIUS_KM / s, size=(FOURIER_FEATURES, 3)) for s in FIELD_SCALES_KM]
        self.phase = [rng.uniform(0, 2 * np.pi, size=FOURIER_FEATURES) for _ in FIELD_SCALES_KM]
        # Each field has unit variance per feature dimension.
        self.mix = [
            rng.normal(size=(FOURIER_FEATURES, feature_dim)) * np.sqrt(2 / FOURIER_FEATURES) for _ in FIELD_SCALES_KM
        ]
        self.feature_dim = feature_dim

    def features(self, rng: np.random.Generator, latlon: np.ndarray, landmark: np.ndarray, views: int) -> np.ndarray:
        u = unit_vectors(latlon)
        amplitude = np.where(landmark[:, None], LANDMARK_AMPLITUDE, AMPLITUDE)  # (n, scales)
        signal = np.zeros((len(u), self.feature_dim))
        for i in range(len(FIELD_SCALES_KM)):
            signal += amplitude[:, i : i + 1] * (np.cos(u @ self.omega[i].T + self.phase[i]) @ self.mix[i])
        signal += rng.normal(scale=IMAGE_NUISANCE, size=signal.shape)
        out = signal[:, None, :] + rng.normal(scale=VIEW_NUISANCE, size=(len(u), views, self.feature_dim))
        return out.astype(np.float16)


def read_gallery(benchmark: Path) -> np.ndarray:
    return np.load(benchmark / "gallery.npy")


def geoclip_package_dir() -> Path:
    """Folder of the installed published ``geoclip`` model (weights and the 100K gallery).

    Found without importing ``geoclip``, whose import pulls in ``transformers``.
    """
    import importlib.util

    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'geoclip' package is not installed (pip install geoclip)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"
