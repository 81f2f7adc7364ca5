"""The views of each image a feature cache holds, and the Dataset that decodes images into them.

A training cache holds K + 1 views per image: view 0 is the backbone's own evaluation view
(resize the shorter side, center crop), views 1..K are the published GeoCLIP training
augmentation (RandomResizedCrop with scale (0.08, 1) and the backbone's interpolation,
horizontal flip p=0.5, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, RandomGrayscale p=0.2). Each
augmentation draws from a random stream seeded by (seed, CSV row, view), so the bytes do not
depend on batch size, worker count or interruption. An evaluation cache holds the 10 TenCrop
views instead (shorter side resized to size / 0.875, four corners and the center, mirrored).

Views run in DataLoader worker processes and return uint8; normalisation happens on the device.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from geoloc.data.images import ImageDataset

TENCROP_RESIZE = 0.875  # shorter side = crop size / 0.875 (256 for 224) before TenCrop
TENCROP_VIEWS = 10
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
JITTER_P, GRAYSCALE_P, FLIP_P = 0.8, 0.2, 0.5


def _size_hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Views:
    """Image -> uint8 tensor (views, 3, H, W): the center view plus K augmented ones, or TenCrop."""

    def __init__(self, preprocess: dict, k: int, tencrop: bool, seed: int):
        from open_clip.transform import PreprocessCfg, image_transform_v2
        from torchvision.transforms import InterpolationMode, Normalize, ToTensor

        self.size = _size_hw(preprocess["size"])
        self.interpolation = InterpolationMode(preprocess.get("interpolation", "bicubic"))
        self.k, self.tencrop, self.seed = k, tencrop, seed
        # The backbone's evaluation view, as open_clip builds it, without ToTensor and Normalize.
        center = image_transform_v2(PreprocessCfg(**preprocess), is_train=False)
        self.center = [t for t in center.transforms if not isinstance(t, (ToTensor, Normalize))]

    @property
    def count(self) -> int:
        return TENCROP_VIEWS if self.tencrop else self.k + 1

    def __call__(self, image: Image.Image, row: int) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        if self.tencrop:
            short = int(round(max(self.size) / TENCROP_RESIZE))
            resized = TF.resize(image, short, interpolation=self.interpolation)
            crops = TF.ten_crop(resized, list(self.size))
        else:
            crops = [self._center(image)]
            crops += [self._augment(image, np.random.default_rng([self.seed, row, v])) for v in range(1, self.k + 1)]
        return torch.stack([TF.pil_to_tensor(c) for c in crops])

    def _center(self, image):
        for t in self.center:
            image = t(image)
        return image

    def _augment(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The published GeoCLIP training augmentation, with parameters drawn from ``rng``."""
        from torchvision.transforms import functional as TF

        top, left, h, w = _random_resized_crop_params(image.width, image.height, rng)
        image = TF.resized_crop(image, top, left, h, w, list(self.size), interpolation=self.interpolation)
        if rng.random() < FLIP_P:
            image = TF.hflip(image)
        if rng.random() < JITTER_P:
            b, c, s, hue = JITTER
            factors = [
                rng.uniform(1 - b, 1 + b),
                rng.uniform(1 - c, 1 + c),
                rng.uniform(1 - s, 1 + s),
                rng.uniform(-hue, hue),
            ]
            ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
            for i in rng.permutation(4):
                image = ops[i](image, float(factors[i]))
        if rng.random() < GRAYSCALE_P:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        return image

    def describe(self, preprocess: dict) -> dict:
        """The manifest's ``augmentation`` entry."""
        common = {
            "size": list(self.size),
            "interpolation": self.interpolation.value,
            "mean": list(preprocess["mean"]),
            "std": list(preprocess["std"]),
            "resize_mode": preprocess.get("resize_mode"),
        }
        if self.tencrop:
            return {**common, "views": "tencrop", "resize_shorter_side": int(round(max(self.size) / TENCROP_RESIZE))}
        return {
            **common,
            "views": f"center + {self.k} augmented",
            "random_resized_crop": {"scale": RRC_SCALE, "ratio": RRC_RATIO},
            "hflip_p": FLIP_P,
            "color_jitter": JITTER,
            "color_jitter_p": JITTER_P,
            "grayscale_p": GRAYSCALE_P,
        }


def _random_resized_crop_params(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from a numpy generator."""
    area = width * height
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height  # fallback: the central crop of the closest allowed aspect
    if ratio < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif ratio > RRC_RATIO[1]:
        h, w = height, int(round(height * RRC_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ImageViews(torch.utils.data.Dataset):
    """Row i -> (views uint8, ok, reason); a missing or unreadable image gives zeros and ok=False."""

    def __init__(self, dataset: ImageDataset, views: Views):
        # One bytes array, not a list of str: forked workers share it without copying it page by
        # page as reference counts change (MP-16 has 4.65 M rows).
        self.root = str(dataset.root)
        self.names = np.array([os.fsencode(name) for name in dataset.images], dtype=bytes)
        self.views = views

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        try:
            with Image.open(os.path.join(self.root, os.fsdecode(self.names[i]))) as image:
                image = image.convert("RGB")
            return self.views(image, i), True, ""
        except FileNotFoundError:
            reason = "missing"
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            first = str(e).splitlines()[0] if str(e) else ""
            reason = f"unreadable: {type(e).__name__}" + (f": {first}" if first else "")
        h, w = self.views.size
        return torch.zeros((self.views.count, 3, h, w), dtype=torch.uint8), False, reason
