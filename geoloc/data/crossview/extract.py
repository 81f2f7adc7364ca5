"""Cached mode of the cross-view task: a frozen backbone's pooled features of every image, views included.

``extract_crossview`` writes two feature caches (``geoloc.data.cache``'s format: float16 features
(n, views, D), float64 coordinates) under ``out``: ``queries/`` (the ground panoramas, with
``positive.npy``, each query's reference row) and ``references/`` (the aerial tiles). View 0 is
the unaugmented image; views 1.. are Sample4Geo's paired augmentations
(``geoloc.data.crossview.pairs``): view v of reference j uses the augmentation drawn from
(seed, j, v), and view v of query i the one of its positive reference, so the query's view v and
its tile's view v show the same turn and mirror and stay a pair. (A VIGOR tile that is the positive
of two panoramas gives both the same augmentation per view.) Drawn with Sample4Geo's
probabilities, so about one augmented view in eight is the identity.

Resumable like ``geoloc.data.features``: each cache is built in shards of ``shard_size`` images in
``queries.partial/`` and ``references.partial/`` beside it (each shard's features, then its record,
by atomic renames); batches never straddle a shard, so a killed extraction, rerun with the same
arguments, keeps the finished shards and ends with the same bytes as an uninterrupted one. A
finished cache whose manifest matches the identity is reused without running the backbone; one made
for another identity, or a partial folder of another job (identity, shard size or device type), is
refused with a DataError. The identity
is the caller's (backbone name, weights hash, ...) plus what this module knows: the role, split
name, a hash of the file lists and positives (``split_fingerprint``), image size, views, seed and
``EXTRACTOR_VERSION`` (a caller's ``views``, ``seed`` or ``split`` must agree with the arguments).

The backbone's output is its pooled feature: ``forward_head(forward_features(x), pre_logits=True)``
for a timm model (whatever its ``num_classes``), else ``backbone(x)``, which must be (batch, D).
It runs in eval mode, under ``torch.inference_mode``, in float32, on ``device``.

Speed on the development machine's CPU (one torch thread, tiles 32 x 32, panoramas resized to
32 x 64, batch 64), the default offline benchmark: a random timm ``test_convnext3`` extracts the
500 validation pairs (1 view) in 0.4 s and the 2000 training pairs x 4 views in 3.9 s;
``convnext_atto`` in 0.9 s and 14.8 s.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from geoloc.common.atomic import atomic_file, read_json, write_json
from geoloc.data.cache import CacheWriter, DataError, FeatureCache, open_cache
from geoloc.data.crossview import CrossViewSet
from geoloc.data.crossview.pairs import IDENTITY, PairAugmentation, augmentation_rng, draw_augmentation, load_image
from geoloc.data.request import claim_partial, finished_cache, partial_dir
from geoloc.data.shards import shard_count

EXTRACTOR_VERSION = 1
SHARD_SIZE = 512
CACHED_VIEWS_KEY = 7  # a key of its own, so these draws never repeat PairDataset's (seed, epoch, index) ones
ROLES = ("queries", "references")


def view_augmentation(seed: int, reference: int, view: int) -> PairAugmentation:
    """The paired augmentation of view ``view`` of reference ``reference`` (view 0: none)."""
    if view == 0:
        return IDENTITY
    return draw_augmentation(augmentation_rng(seed, CACHED_VIEWS_KEY, reference, view))


def split_fingerprint(split: CrossViewSet) -> str:
    """sha256 of the split's file lists and positives: what the caches were made from."""
    digest = hashlib.sha256()
    for paths in (split.queries, split.references):
        digest.update("\n".join(str(p) for p in paths).encode() + b"\0")
    digest.update(np.ascontiguousarray(split.positive, dtype=np.int64).tobytes())
    return digest.hexdigest()


def pooled_features(backbone: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(batch, D) pooled features of a batch of normalised images (batch, 3, H, W)."""
    if hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head"):
        return backbone.forward_head(backbone.forward_features(pixels), pre_logits=True)
    return backbone(pixels)


class _Views(torch.utils.data.Dataset):
    """Image ``i`` -> (views, 3, H, W): its views under ``augmentations[i]`` (one per view)."""

    def __init__(self, paths, size, augmentations: list[list[PairAugmentation]], role: str):
        self.paths, self.size, self.augmentations, self.role = paths, size, augmentations, role

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_image(self.paths[i], self.size)
        apply = "query" if self.role == "queries" else "reference"
        return torch.stack([getattr(aug, apply)(image) for aug in self.augmentations[i]])


def extract_crossview(
    split: CrossViewSet,
    backbone: Callable[[], torch.nn.Module],
    out: str | Path,
    *,
    views: int,
    query_size: tuple[int, int],
    reference_size: tuple[int, int],
    seed: int,
    batch_size: int,
    device: str | torch.device,
    identity: dict,
    progress: bool = False,
    shard_size: int = SHARD_SIZE,
    workers: int = 0,
    on_shard: Callable[[str, int], None] | None = None,
    stats: dict | None = None,
) -> tuple[FeatureCache, FeatureCache]:
    """The (queries, references) caches of ``split`` under ``out``, extracted unless already there.

    ``backbone`` makes the frozen model; it is called only when a cache has to be extracted, so a trial
    that finds both caches builds no model.
    ``views``: views per image, the unaugmented one included (>= 1). ``query_size`` and
    ``reference_size``: (height, width) the images are resized to; with augmented views the tile
    must be square and the panorama's width a multiple of 4 (exact quarter turns). ``identity``:
    the backbone's name and weights hash (JSON values); a cache is reused only when it matches.
    ``workers``: image decoding processes. ``on_shard(role, shard)`` is called after each shard is
    written (tests interrupt an extraction by raising from it). ``stats``, when given, receives the
    images and seconds this call spent running the backbone.
    """
    if views < 1 or batch_size < 1 or shard_size < 1:
        raise ValueError(f"views, batch_size and shard_size must be >= 1, got {views}, {batch_size}, {shard_size}")
    if views > 1 and (reference_size[0] != reference_size[1] or query_size[1] % 4):
        raise ValueError(
            f"augmented views need a square tile and a panorama width divisible by 4, got tile {tuple(reference_size)}"
            f" and panorama {tuple(query_size)}"
        )
    if len(split) == 0 or len(split.references) == 0:
        raise ValueError(f"{split.name}: no queries or no references to extract")
    out, device = Path(out).expanduser(), torch.device(device)
    augmentations = [[view_augmentation(seed, j, v) for v in range(views)] for j in range(len(split.references))]
    jobs = {
        "queries": (split.queries, split.query_coords, query_size, [augmentations[j] for j in split.positive]),
        "references": (split.references, split.reference_coords, reference_size, augmentations),
    }
    fingerprint = split_fingerprint(split)
    caches, timing, model = [], {"images": 0, "seconds": 0.0}, None
    for role in ROLES:
        paths, coords, size, augs = jobs[role]
        derived = {
            "role": role,
            "split": split.name,
            "split_fingerprint": fingerprint,
            "image_size": [int(size[0]), int(size[1])],
            "views": views,
            "seed": seed,
            "extractor": f"crossview-{EXTRACTOR_VERSION}",
        }
        clash = [k for k in derived if k in identity and identity[k] != derived[k]]
        if clash:
            raise ValueError(f"identity: {clash} differ from what extract_crossview was asked to do")
        role_identity = json.loads(json.dumps({**identity, **derived}))  # as the manifest will read back
        target = out / role
        if finished_cache(target, role_identity) is None:
            work = partial_dir(target)
            claim_partial(work, {**role_identity, "shard_size": shard_size, "n": len(paths), "device": device.type})
            dataset = _Views(paths, tuple(size), augs, role)
            model = model or backbone()
            spent = _run_shards(dataset, model, work, role, batch_size, shard_size, device, workers, progress, on_shard)
            timing["images"] += spent["images"]
            timing["seconds"] += spent["seconds"]
            _assemble(target, work, role_identity, coords, split, shard_size, device)
        caches.append(open_cache(target, expect=role_identity))
    if stats is not None:
        stats.update(timing)
    return caches[0], caches[1]


def _shard_files(work: Path, s: int) -> tuple[Path, Path]:
    return work / f"shard_{s:06d}.npy", work / f"shard_{s:06d}.json"


def _shard_done(work: Path, s: int) -> bool:
    features, record = _shard_files(work, s)
    return features.is_file() and isinstance(read_json(record), dict)


def _run_shards(
    dataset: _Views,
    backbone: torch.nn.Module,
    work: Path,
    role: str,
    batch_size: int,
    shard_size: int,
    device: torch.device,
    workers: int,
    progress: bool,
    on_shard: Callable[[str, int], None] | None,
) -> dict:
    """Extract the unfinished shards of ``dataset`` into ``work``; returns {images, seconds}."""
    from tqdm import tqdm

    n = len(dataset)
    todo = [s for s in range(shard_count(n, shard_size)) if not _shard_done(work, s)]
    batches = []
    for s in todo:
        stop = min((s + 1) * shard_size, n)
        batches += [list(range(b, min(b + batch_size, stop))) for b in range(s * shard_size, stop, batch_size)]
    if not batches:
        return {"images": 0, "seconds": 0.0}
    if progress and len(todo) < shard_count(n, shard_size):
        print(f"{role}: resuming, {shard_count(n, shard_size) - len(todo)} shards already in {work}", file=sys.stderr)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda"
    )
    images = sum(len(b) for b in batches)
    bar = tqdm(total=images, unit="img", desc=f"extracting {role}", disable=not progress)
    was_training = backbone.training
    backbone.to(device).eval()
    buffer: list[np.ndarray] = []
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for pixels, rows in zip(loader, batches, strict=True):
                b, v = pixels.shape[:2]
                feats = pooled_features(backbone, pixels.to(device, non_blocking=True).flatten(0, 1).float())
                if feats.ndim != 2 or len(feats) != b * v:
                    raise ValueError(f"the backbone must give (batch, D) pooled features, got {tuple(feats.shape)}")
                feats = feats.float().view(b, v, -1).cpu().numpy()
                if not np.isfinite(feats).all():
                    raise DataError(f"{dataset.paths[rows[0]]}: the backbone gave non-finite features (its batch)")
                buffer.append(feats.astype(np.float16))
                bar.update(b)
                shard = rows[0] // shard_size
                if rows[-1] + 1 == min((shard + 1) * shard_size, len(dataset)):  # the shard's last batch
                    features_file, record_file = _shard_files(work, shard)
                    with atomic_file(features_file) as f:
                        np.save(f, np.concatenate(buffer))
                    write_json(record_file, {"rows": sum(len(x) for x in buffer)})
                    buffer = []
                    if on_shard is not None:
                        on_shard(role, shard)
    finally:
        backbone.train(was_training)
        bar.close()
    return {"images": images, "seconds": time.perf_counter() - start}


def _assemble(
    target: Path,
    work: Path,
    identity: dict,
    coords: np.ndarray,
    split: CrossViewSet,
    shard_size: int,
    device: torch.device,
) -> None:
    """The finished shards in ``work`` into the cache ``target``, published atomically; ``work`` removed."""
    n = len(coords)
    first = np.load(_shard_files(work, 0)[0], mmap_mode="r")
    writer = CacheWriter(target, n, first.shape[1], first.shape[2])
    try:
        for s in range(shard_count(n, shard_size)):
            writer.features[s * shard_size : min((s + 1) * shard_size, n)] = np.load(_shard_files(work, s)[0])
        writer.coords[:] = coords
        if identity["role"] == "queries":
            np.save(writer.tmp / "positive.npy", np.asarray(split.positive, dtype=np.int64))
        writer.commit({**identity, "feature_dim": int(first.shape[2]), "device_type": device.type})
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(work, ignore_errors=True)
