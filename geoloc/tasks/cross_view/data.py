"""What every seed of a cross-view run reads: the two splits, and in cached mode their feature caches.

``load_crossview_data`` reads the splits in their published layout (building the offline benchmark
first when it is named) and, in cached mode, extracts the frozen backbone's features of both views
once per data set, split, backbone and image sizes under ``data.cache_root``
(``geoloc.data.crossview.extract``: resumable, reused by every later trial and study). The launcher
calls it once before trials start (``CrossViewTask.prepare``), so the trials only open what is there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from geoloc.data.cache import FeatureCache
from geoloc.data.crossview import CrossViewSet, read_split
from geoloc.data.derived import fingerprint
from geoloc.data.images import file_sha256
from geoloc.tasks.cross_view.config import CrossViewConfig

EXTRACTION_SEED = 0  # the augmentations of the cached views: fixed, so every trial and seed reads the same cache


@dataclass
class CrossViewData:
    train: CrossViewSet
    val: CrossViewSet
    features: dict[str, tuple[FeatureCache, FeatureCache]] | None = None
    """Cached mode: per split, the (queries, references) feature caches; None end to end."""
    _on_device: dict[str, dict] = field(default_factory=dict, repr=False)

    def device_features(self, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Cached mode: per split, every view of its (queries, references) features as float16 tensors on
        ``device``, loaded once and shared by the seeds that train in lock-step on this data."""
        if str(device) not in self._on_device:
            self._on_device[str(device)] = {
                name: tuple(torch.from_numpy(cache.block(0, len(cache))).to(device) for cache in caches)
                for name, caches in self.features.items()
            }
        return self._on_device[str(device)]


def data_root(cfg: CrossViewConfig) -> Path:
    """The data set's folder (the offline benchmark is built there first, once)."""
    if cfg.data.layout == "offline":
        from geoloc.data.crossview.offline import build_offline_crossview

        return build_offline_crossview(cfg.data.offline)
    return Path(cfg.data.root).expanduser()


def lists_folder(cfg: CrossViewConfig, split: CrossViewSet) -> Path:
    """Where the sampler keeps a split's GPS lists (``derived/`` inside): beside the caches, never in the
    data set's own folder, which stays as published."""
    return Path(cfg.data.cache_root).expanduser() / f"{split.name.replace('/', '-')}-lists"


def read_splits(cfg: CrossViewConfig) -> tuple[CrossViewSet, CrossViewSet]:
    root = data_root(cfg)
    return tuple(read_split(cfg.data.layout, root, split, area=cfg.data.vigor.area) for split in ("train", "val"))


def feature_caches(cfg: CrossViewConfig, splits: tuple[CrossViewSet, ...]) -> dict[str, tuple[Path, dict, int]]:
    """Cached mode: per split, the folder of its (queries, references) caches, their identity (what a
    reused cache must match) and the views extracted (augmented views for training, view 0 to evaluate)."""
    from geoloc.tasks.cross_view.model import weights_file

    backbone = cfg.model.backbone
    weights = file_sha256(path) if (path := weights_file(backbone)) else None
    out = {}
    for split, views in zip(splits, (cfg.data.views, 1), strict=True):
        identity = {
            "backbone": backbone.name,
            "weights": weights,
            "init_seed": EXTRACTION_SEED,
            "query_size": list(cfg.model.query_size),
            "reference_size": list(cfg.model.reference_size),
            "views": views,
            "seed": EXTRACTION_SEED,
            "split": split.name,
            "files": fingerprint([str(p) for p in split.queries], [str(p) for p in split.references]),
        }
        folder = Path(cfg.data.cache_root).expanduser() / f"{split.name.replace('/', '-')}-{fingerprint(identity)}"
        out[split.name] = folder, identity, views
    return out


def load_crossview_data(
    cfg: CrossViewConfig, device: torch.device | None = None, progress: bool = False
) -> CrossViewData:
    """The run's splits, and in cached mode their features (extracted on ``device`` when missing)."""
    train, val = read_splits(cfg)
    if not cfg.cached:
        return CrossViewData(train, val)
    from geoloc.data.crossview.extract import extract_crossview
    from geoloc.tasks.cross_view.model import create_backbone

    @functools.cache
    def backbone() -> torch.nn.Module:  # built once, and only where a cache is missing
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(EXTRACTION_SEED)  # a random-initialised backbone is the same for every trial
            return create_backbone(cfg.model.backbone)

    features = {}
    for split, (folder, identity, views) in zip((train, val), feature_caches(cfg, (train, val)).values(), strict=True):
        features[split.name] = extract_crossview(
            split,
            backbone,
            folder,
            views=views,
            query_size=cfg.model.query_size,
            reference_size=cfg.model.reference_size,
            seed=EXTRACTION_SEED,
            batch_size=cfg.eval.batch_size,
            device=device or torch.device("cpu"),
            identity=identity,
            progress=progress,
        )
    return CrossViewData(train, val, features)


LAYOUT_FILES = {  # what each reader reads besides the images (geoloc.data.crossview)
    "cvusa": ("splits/train-19zl.csv", "splits/val-19zl.csv", "split_locations/all.csv"),
    "offline": ("splits/train-19zl.csv", "splits/val-19zl.csv", "split_locations/all.csv"),
    "cvact": ("ACT_data.mat",),
    "vigor": ("splits/*/*.txt",),
}


def data_files(cfg: CrossViewConfig) -> list[Path]:
    """The files a run reads, for the study's manifest: the layout's split and coordinate files (the
    images themselves are too many to hash; their list is in the splits), the weights file, and in
    cached mode the feature caches' files."""
    from geoloc.data.cache import MANIFEST

    root = data_root(cfg)
    files = sorted(p for pattern in LAYOUT_FILES[cfg.data.layout] for p in root.glob(pattern))
    if cfg.model.backbone.weights:
        files.append(Path(cfg.model.backbone.weights).expanduser())
    if cfg.cached:
        for folder, _, _ in feature_caches(cfg, read_splits(cfg)).values():
            files += [
                folder / view / name
                for view in ("queries", "references")
                for name in (MANIFEST, "features.npy", "coords.npy")
            ]
    return files


def prepare_sampling(cfg: CrossViewConfig, data: CrossViewData) -> None:
    """Build the GPS lists the run's sampler keeps (``lists_folder``) and check ``train.batches`` against
    the training split (ConfigError naming the key), once before trials start."""
    from geoloc.tasks.cross_view.batches import PairSampler

    PairSampler(cfg.train.batches, cfg.train.batch_size, data.train, torch.Generator(), lists_folder(cfg, data.train))
