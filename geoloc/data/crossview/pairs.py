"""Cross-view images to tensors, and Sample4Geo's paired augmentation of a (ground panorama, aerial tile) pair.

``load_image`` reads an image file into a float tensor (3, H, W) resized to a given (height, width)
(bilinear) and normalised with the ImageNet mean and std (timm's default ConvNeXt configuration).

The paired augmentation keeps the two views of a pair consistent, as Sample4Geo's training set does
(``sample4geo/dataset/cvusa.py``, ``__getitem__``), in its order:

1. flip: both images mirrored left-right together (cv2.flip(image, 1) there). Mirroring the tile
   swaps east and west; mirroring a north-aligned panorama maps azimuth a to -a: the same mirror;
2. rotation by k in {1, 2, 3}: the tile turned k * 90 degrees counter-clockwise
   (``torch.rot90(tile, k, dims=(1, 2))``, what was east is now north) and the panorama rolled
   left by k quarters of its width (``torch.roll(pano, -(W // 4) * k, dims=2)``), so the column
   that faced east now faces north. Exact when W is a multiple of 4 and the tile is square.

Sample4Geo flips with probability 0.5 and rotates with probability 0.75 (k uniform in 1..3); the
photometric augmentations it adds per view (colour jitter, blur, dropout) are not part of this
module. Every random choice comes from a numpy Generator passed in, or from one seeded by integer
keys (``augmentation_rng``), so the same keys give the same augmentation in any process, worker or
order: ``PairDataset`` derives its choice for pair ``i`` from (seed, epoch, i); the cached mode's
extraction (``geoloc.data.crossview.extract``) from (seed, reference, view).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from geoloc.data.cache import DataError
from geoloc.data.crossview import CrossViewSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm.data.IMAGENET_DEFAULT_MEAN (ConvNeXt's default config)
IMAGENET_STD = (0.229, 0.224, 0.225)  # timm.data.IMAGENET_DEFAULT_STD
PROB_FLIP, PROB_ROTATE = 0.5, 0.75  # Sample4Geo's train_cvusa.py


def load_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """The RGB image at ``path`` as float32 (3, height, width), resized (bilinear) to ``size`` =
    (height, width) and normalised with the ImageNet mean and std. DataError when unreadable."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except OSError as e:
        raise DataError(f"{path}: cannot read the image ({e})") from None
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((pixels - mean) / std).contiguous()


@dataclass(frozen=True)
class PairAugmentation:
    """One paired augmentation: mirror both views, then turn the tile by ``rotation`` quarter turns."""

    flip: bool = False
    rotation: int = 0
    """Counter-clockwise quarter turns of the tile, 0..3; the panorama is rolled left by as many quarters."""

    def __post_init__(self) -> None:
        if self.rotation not in (0, 1, 2, 3):
            raise ValueError(f"rotation must be 0..3 quarter turns, got {self.rotation}")

    @property
    def identity(self) -> bool:
        return not self.flip and self.rotation == 0

    def query(self, panorama: torch.Tensor) -> torch.Tensor:
        """The panorama (..., H, W) under this augmentation."""
        if self.flip:
            panorama = torch.flip(panorama, dims=(-1,))
        if self.rotation:
            panorama = torch.roll(panorama, shifts=-(panorama.shape[-1] // 4) * self.rotation, dims=-1)
        return panorama

    def reference(self, tile: torch.Tensor) -> torch.Tensor:
        """The aerial tile (..., H, W) under this augmentation."""
        if self.flip:
            tile = torch.flip(tile, dims=(-1,))
        if self.rotation:
            tile = torch.rot90(tile, k=self.rotation, dims=(-2, -1))
        return tile

    def pair(self, panorama: torch.Tensor, tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(panorama), self.reference(tile)


IDENTITY = PairAugmentation()


def draw_augmentation(
    rng: np.random.Generator, prob_flip: float = PROB_FLIP, prob_rotate: float = PROB_ROTATE
) -> PairAugmentation:
    """Sample4Geo's choice: flip with ``prob_flip``; rotate with ``prob_rotate`` by 1, 2 or 3 quarter turns."""
    flip = bool(rng.random() < prob_flip)
    rotation = int(rng.integers(1, 4)) if rng.random() < prob_rotate else 0
    return PairAugmentation(flip, rotation)


def augmentation_rng(*keys: int) -> np.random.Generator:
    """A Generator seeded by non-negative integer keys, e.g. (seed, epoch, index): independent of order and process."""
    return np.random.default_rng([int(k) for k in keys])


class PairDataset(torch.utils.data.Dataset):
    """(query tensor, reference tensor) of the pairs of a split: query ``i`` and its positive tile.

    Items are ``pairs[k]`` (default every query, in order). The augmentation of item ``k``:
    ``augmentations[k]`` when given; else, with a ``seed``, drawn from ``augmentation_rng(seed,
    epoch, pairs[k])`` (``set_epoch`` changes the epoch); else none.
    """

    def __init__(
        self,
        split: CrossViewSet,
        query_size: tuple[int, int],
        reference_size: tuple[int, int],
        *,
        pairs: Sequence[int] | np.ndarray | None = None,
        augmentations: Sequence[PairAugmentation] | None = None,
        seed: int | None = None,
        epoch: int = 0,
        prob_flip: float = PROB_FLIP,
        prob_rotate: float = PROB_ROTATE,
    ):
        self.split, self.query_size, self.reference_size = split, tuple(query_size), tuple(reference_size)
        self.pairs = np.arange(len(split)) if pairs is None else np.asarray(pairs, dtype=np.int64)
        if augmentations is not None and len(augmentations) != len(self.pairs):
            raise ValueError(f"{len(augmentations)} augmentations for {len(self.pairs)} pairs")
        self.augmentations, self.seed, self.epoch = augmentations, seed, epoch
        self.prob_flip, self.prob_rotate = prob_flip, prob_rotate

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def augmentation(self, k: int) -> PairAugmentation:
        if self.augmentations is not None:
            return self.augmentations[k]
        if self.seed is None:
            return IDENTITY
        rng = augmentation_rng(self.seed, self.epoch, int(self.pairs[k]))
        return draw_augmentation(rng, self.prob_flip, self.prob_rotate)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(self.pairs[k])
        query = load_image(self.split.queries[i], self.query_size)
        reference = load_image(self.split.references[int(self.split.positive[i])], self.reference_size)
        return self.augmentation(k).pair(query, reference)


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], size: tuple[int, int]):
        self.paths, self.size = paths, tuple(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], self.size)


def image_loader(
    paths: Sequence[Path], size: tuple[int, int], batch_size: int, workers: int = 0
) -> torch.utils.data.DataLoader:
    """Batches (b, 3, H, W) of the images ``paths``, in order, unaugmented (evaluation)."""
    return torch.utils.data.DataLoader(
        _Images(paths, size), batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=False
    )


class _PairBatches(torch.utils.data.Dataset):
    """Item b: batch ``batches[b]`` of query indices as (queries, references), augmented from ``seeds[b]``."""

    def __init__(self, split: CrossViewSet, batches, seeds, query_size, reference_size):
        if len(batches) != len(seeds):
            raise ValueError(f"{len(seeds)} seeds for {len(batches)} batches")
        self.pairs = PairDataset(split, query_size, reference_size)  # unaugmented; augmented here
        self.batches, self.seeds = batches, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = augmentation_rng(self.seeds[b])
        queries, references = [], []
        for i in self.batches[b]:
            query, reference = draw_augmentation(rng).pair(*self.pairs[int(i)])
            queries.append(query)
            references.append(reference)
        return torch.stack(queries), torch.stack(references)


def pair_loader(
    split: CrossViewSet,
    batches: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    query_size: tuple[int, int],
    reference_size: tuple[int, int],
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    """(queries, references) per batch of query indices (each with its positive tile), in the batches' order.

    The pairs of batch b are augmented in turn by draws from one Generator seeded by ``seeds[b]``, so
    the images depend on the seeds only, not on the worker count.
    """
    return torch.utils.data.DataLoader(
        _PairBatches(split, batches, seeds, query_size, reference_size), batch_size=None, num_workers=workers
    )
