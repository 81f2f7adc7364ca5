"""Feature extraction: run a frozen open_clip backbone once over a data set and write a feature cache.

::

    python -m geoloc.data.features CSV --images ROOT --out CACHE_DIR --model ViT-L-14
        [--pretrained openai | --checkpoint FILE [--quick-gelu] | --pretrained random]
        [--views K | --eval] [--batch-size 32] [--workers N] [--device auto] [--precision auto]
        [--max-missing 0.05] [--seed 0] [--shard-size 1024]

Views. A training cache holds K + 1 views per image: view 0 is the backbone's own evaluation
view (resize the shorter side, center crop), views 1..K are the published GeoCLIP training
augmentation (RandomResizedCrop with scale (0.08, 1) and the backbone's interpolation,
horizontal flip p=0.5, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, RandomGrayscale p=0.2), all with
the backbone's own normalisation. The trainer draws one view per image per epoch. With
``--eval`` the cache holds the 10 TenCrop views of each image (shorter side resized to
size / 0.875, i.e. 256 for 224, then four corners and the center, and their mirror images);
the evaluation averages over them. ``--views 0`` keeps only the center view. Augmentations are
drawn from a random stream seeded by (``--seed``, CSV row, view), so the same command gives
the same bytes whatever the batch size, worker count or interruption.

Weights. ``--pretrained TAG`` takes an open_clip pretrained tag (downloaded through the hub
unless already cached, e.g. ``openai`` for GeoCLIP's ViT-L/14); ``--checkpoint FILE`` loads a
local open_clip checkpoint (add ``--quick-gelu`` for OpenAI weights, or name the model
``ViT-L-14-quickgelu``); ``--pretrained random`` is a seeded random initialisation for tests and
benchmarks. ``--model`` is any open_clip model name, or a JSON file in open_clip's model-config
format (registered under its file name). The backbone is frozen, in eval mode, and runs on the
GPU when there is one (fp16 autocast there by default, fp32 on CPU).

Missing and unreadable images are excluded from the cache, never skipped in silence: the
count is printed and every such row is listed (row, CSV line, path, reason) in
``CACHE_DIR/missing_images.csv``. Missing files are found before the backbone is loaded; the
run stops with exit status 2 when more than ``--max-missing`` of the images (default 5%) is
missing or unreadable, and the list is then in ``CACHE_DIR.partial/missing_images.csv``.
``CACHE_DIR/images.csv`` maps each cache row back to its image and CSV line.

Resumable. Work is done in shards of ``--shard-size`` images written to ``CACHE_DIR.partial/``;
a killed run, rerun with the same command, keeps the finished shards and ends with the same
bytes as an uninterrupted run. The cache is published by an atomic rename when complete, and the
partial folder is then removed. An existing cache (or partial folder) made for another backbone,
weights, CSV content, views or seed is refused with exit status 2, never silently reused; one
made for the same request is left as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cache import MANIFEST, CacheWriter, DataError
from .images import (
    DEFAULT_MAX_MISSING,
    ImageDataset,
    add_dataset_arguments,
    check_missing_share,
    check_root,
    file_sha256,
    find_missing,
    read_dataset,
    write_report,
)

EXTRACTOR_VERSION = 1
SHARD_SIZE = 1024
PARTIAL_SUFFIX = ".partial"
JOB = "job.json"
MISSING_REPORT = "missing_images.csv"
IMAGES_INDEX = "images.csv"
TENCROP_RESIZE = 0.875  # shorter side = crop size / 0.875 (256 for 224) before TenCrop
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
JITTER_P, GRAYSCALE_P, FLIP_P = 0.8, 0.2, 0.5
RANDOM_WEIGHTS = "random"
DEFAULT_VIEWS = 4


# ---------------------------------------------------------------------------------------------
# The backbone


@dataclass
class Backbone:
    model: torch.nn.Module  # the open_clip model, frozen, eval mode, on its device
    name: str
    weights: str  # a pretrained tag, "sha256:<checkpoint hash>" or "random(seed=S)"
    config: dict  # the open_clip model config
    preprocess: dict  # size, mean, std, interpolation, resize_mode
    quick_gelu: bool
    checkpoint: str | None = None

    @property
    def feature_dim(self) -> int:
        return int(self.model.visual.output_dim)


def _weights_id(pretrained: str | None, checkpoint: str | None, seed: int) -> str:
    """How the manifest names the weights: the tag, the checkpoint's SHA-256, or the random seed."""
    if (pretrained is None) == (checkpoint is None):
        raise DataError("weights: give exactly one of --pretrained TAG (or 'random') and --checkpoint FILE")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise DataError(f"--checkpoint {checkpoint}: file not found")
        return f"sha256:{file_sha256(path)}"
    return f"random(seed={seed})" if pretrained == RANDOM_WEIGHTS else pretrained


def resolve_backbone(name: str, pretrained: str | None = None, checkpoint: str | None = None,
                     quick_gelu: bool = False) -> tuple[str, dict, str | None, bool]:
    """Check a model name and its weights without loading anything: (name, config, source, quick_gelu)."""
    import open_clip

    if (pretrained is None) == (checkpoint is None):
        raise DataError("weights: give exactly one of --pretrained TAG (or 'random') and --checkpoint FILE")
    if name.endswith(".json"):
        config_file = Path(name).expanduser()
        if not config_file.is_file():
            raise DataError(f"--model {name}: model-config file not found")
        open_clip.add_model_config(config_file)
        name = config_file.stem
    config = open_clip.get_model_config(name)
    if config is None:
        raise DataError(f"--model {name}: not an open_clip model (e.g. ViT-L-14, ViT-B-32; see open_clip.list_models())")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise DataError(f"--checkpoint {checkpoint}: file not found")
        return name, config, str(path.resolve()), quick_gelu
    if pretrained == RANDOM_WEIGHTS:
        return name, config, None, quick_gelu
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise DataError(f"--pretrained {pretrained}: not a pretrained tag of {name} (tags: {tags}; or pass --checkpoint FILE)")
    # OpenAI weights were trained with QuickGELU; open_clip's plain names use GELU.
    return name, config, pretrained, quick_gelu or bool(tag_cfg.get("quick_gelu", False))


def load_backbone(name: str, pretrained: str | None = None, checkpoint: str | None = None,
                  quick_gelu: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                  weights: str | None = None) -> Backbone:
    """An open_clip model, frozen and in eval mode; DataError for unknown names, tags and bad files.

    ``weights`` is the manifest's name of the weights when the caller already has it (it hashes a checkpoint).
    """
    import open_clip

    weights = weights or _weights_id(pretrained, checkpoint, seed)
    name, config, source, quick_gelu = resolve_backbone(name, pretrained, checkpoint, quick_gelu)
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(seed)  # random initialisation is seeded too: reruns give the same bytes
        try:
            model = open_clip.create_model(name, pretrained=source, force_quick_gelu=quick_gelu)
        except RuntimeError as e:
            what = f"--checkpoint {checkpoint}" if checkpoint else f"--pretrained {pretrained}"
            hint = "" if checkpoint else " (no network? download it once, or pass --checkpoint FILE)"
            raise DataError(f"{what}: could not load weights for {name}: {str(e).splitlines()[0]}{hint}") from None
    model.requires_grad_(False)
    model.eval().to(device)
    return Backbone(model, name, weights, config, dict(model.visual.preprocess_cfg), quick_gelu,
                    source if checkpoint else None)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs 'initialized randomly' on the root logger; that is intended here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# ---------------------------------------------------------------------------------------------
# Views (run in DataLoader worker processes; they return uint8, normalised on the device)


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
        return 10 if self.tencrop else self.k + 1

    def __call__(self, image: Image.Image, row: int) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        if self.tencrop:
            short = int(round(max(self.size) / TENCROP_RESIZE))
            resized = TF.resize(image, short, interpolation=self.interpolation)
            crops = TF.ten_crop(resized, list(self.size))
        else:
            crops = [self._center(image)] + [self._augment(image, np.random.default_rng([self.seed, row, v])) for v in range(1, self.k + 1)]
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
            factors = [rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s), rng.uniform(-hue, hue)]
            ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
            for i in rng.permutation(4):
                image = ops[i](image, float(factors[i]))
        if rng.random() < GRAYSCALE_P:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        return image


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


# ---------------------------------------------------------------------------------------------
# Extraction


def default_workers() -> int:
    return max(0, min(8, len(os.sched_getaffinity(0)) - 1))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: no GPU is visible")
    return device


def pick_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise DataError("--precision fp16: needs a GPU (use fp32 or bf16 on CPU)")
    return name


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def _identity_mismatch(found: dict, wanted: dict) -> list[str]:
    return [f"{k}={found.get(k)!r} (requested {v!r})" for k, v in wanted.items() if found.get(k) != v]


def extract(
    csv: str | Path,
    images: str | Path,
    out: str | Path,
    model: str = "ViT-L-14",
    pretrained: str | None = None,
    checkpoint: str | None = None,
    quick_gelu: bool = False,
    views: int | None = None,
    eval: bool = False,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    max_missing: float = DEFAULT_MAX_MISSING,
    seed: int = 0,
    shard_size: int = SHARD_SIZE,
    columns: dict | None = None,
    progress: bool = False,
    stats: dict | None = None,
    _stop_after_shards: int | None = None,
) -> Path:
    """Extract features of every image of ``csv`` into the cache ``out``; returns ``out``.

    ``views`` is K, the augmented views per training image (default 4; the cache holds K + 1);
    ``eval`` caches the 10 TenCrop views instead. ``stats``, when given, receives the images
    extracted by this call, the seconds it took and the worker count. ``_stop_after_shards``
    (tests only) raises KeyboardInterrupt after that many shards are written in this call, as
    a kill would.
    """
    out = Path(out).expanduser()
    if eval and views is not None:
        raise DataError("--views and --eval exclude each other (--eval caches the 10 TenCrop views of each image)")
    views = DEFAULT_VIEWS if views is None else views
    if views < 0:
        raise DataError(f"--views: must be >= 0, got {views}")
    for name, value in (("--batch-size", batch_size), ("--shard-size", shard_size)):
        if value < 1:
            raise DataError(f"{name}: must be >= 1, got {value}")
    if workers is not None and workers < 0:
        raise DataError(f"--workers: must be >= 0, got {workers}")
    if not 0 <= max_missing <= 1:
        raise DataError(f"--max-missing: must lie in [0, 1], got {max_missing}")
    weights = _weights_id(pretrained, checkpoint, seed)
    dataset = read_dataset(csv, images, **(columns or {}))
    quick_gelu = resolve_backbone(model, pretrained, checkpoint, quick_gelu)[3]  # bad names fail before any work
    torch_device = pick_device(device)
    precision = pick_precision(precision, torch_device)
    kind = "eval" if eval else "train"
    n_views = 10 if eval else views + 1

    # What a cache must match to be this request's (known before the backbone is loaded).
    identity = {
        "backbone": Path(model).stem if model.endswith(".json") else model,
        "weights": weights,
        "quick_gelu": quick_gelu,
        "csv_sha256": dataset.sha256,
        "views": n_views,
        "view_kind": kind,
        "seed": seed,
        "extractor_version": EXTRACTOR_VERSION,
    }
    if (out / MANIFEST).is_file():
        found = json.loads((out / MANIFEST).read_text())
        wrong = _identity_mismatch(found, identity)
        if wrong:
            raise DataError(f"{out}: an existing cache built for another request: {'; '.join(wrong)}; "
                            "refusing to reuse it: choose another --out or delete that folder")
        if progress:
            print(f"{out}: already extracted for this request ({found['n']} images, {found['views']} views); nothing to do")
        return out
    if out.exists():
        raise DataError(f"{out}: exists and is not a feature cache (no {MANIFEST}); choose another --out")

    check_root(dataset.root)
    work = partial_dir(out)
    job = {**identity, "precision": precision, "device_type": torch_device.type, "shard_size": shard_size, "n": len(dataset)}
    if (work / JOB).is_file():
        wrong = _identity_mismatch(json.loads((work / JOB).read_text()), job)
        if wrong:
            raise DataError(f"{work}: a partial extraction for another request: {'; '.join(wrong)}; "
                            "rerun with its options, or delete that folder to start over")
    work.mkdir(parents=True, exist_ok=True)
    _write_json(work / JOB, job)

    # Missing files are counted before any GPU time is spent.
    missing = find_missing(dataset)
    report = write_report(work / MISSING_REPORT, dataset, missing)
    check_missing_share(dataset, missing, max_missing, report)
    if missing and progress:
        print(f"{len(missing)} of {len(dataset)} images missing (listed in {report}); they are left out of the cache")

    backbone = load_backbone(model, pretrained, checkpoint, quick_gelu, seed, torch_device, weights)
    view_maker = Views(backbone.preprocess, 0 if eval else views, eval, seed)
    n_shards = -(-len(dataset) // shard_size)
    todo = [s for s in range(n_shards) if not _shard_done(work, s, dataset)]
    if progress and len(todo) < n_shards:
        print(f"resuming: {n_shards - len(todo)} of {n_shards} shards already in {work}")

    run = _run_shards(dataset, backbone, view_maker, work, todo, shard_size, batch_size,
                        default_workers() if workers is None else workers, torch_device, precision, progress,
                        _stop_after_shards)
    if stats is not None:
        stats.update(run)
    if progress and run["images"]:
        print(f"extracted {run['images']} images x {n_views} views in {run['seconds']:.1f} s: "
              f"{run['images'] / run['seconds']:.1f} images/s ({backbone.name}, batch {batch_size}, "
              f"{run['workers']} workers, {torch_device.type} {precision})")

    # Assemble: every row that failed (missing or unreadable) is listed and left out.
    failed: list[tuple[int, str]] = []
    for s in range(n_shards):
        failed += [(row, reason) for row, reason, *_ in json.loads((work / f"shard_{s:06d}.json").read_text())["failed"]]
    report = write_report(work / MISSING_REPORT, dataset, failed)
    check_missing_share(dataset, failed, max_missing, report)
    keep = np.ones(len(dataset), dtype=bool)
    keep[[row for row, _ in failed]] = False
    manifest = {
        **identity,
        "split": kind,
        "feature_dim": backbone.feature_dim,
        "backbone_config": backbone.config,
        "checkpoint": backbone.checkpoint,
        "csv": str(dataset.csv.resolve()),
        "csv_rows": len(dataset),
        "csv_columns": dataset.columns,
        "image_root": str(dataset.root.resolve()),
        "missing_or_unreadable": len(failed),
        "augmentation": _describe_views(view_maker, backbone.preprocess),
        "precision": precision,
        "device_type": torch_device.type,
    }
    writer = CacheWriter(out, int(keep.sum()), n_views, backbone.feature_dim)
    try:
        start = 0
        for s in range(n_shards):
            rows = slice(s * shard_size, min((s + 1) * shard_size, len(dataset)))
            shard = np.load(work / f"shard_{s:06d}.npy", mmap_mode="r")
            kept = keep[rows]
            writer.features[start : start + int(kept.sum())] = shard[kept]
            start += int(kept.sum())
        writer.coords[:] = dataset.coords[keep]
        shutil.copy(report, writer.tmp / MISSING_REPORT)
        _write_index(writer.tmp / IMAGES_INDEX, dataset, np.flatnonzero(keep))
        writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(work, ignore_errors=True)
    if progress:
        print(f"{out}: {int(keep.sum())} images x {n_views} views x {backbone.feature_dim} "
              f"({len(failed)} missing or unreadable, listed in {out / MISSING_REPORT})")
    return out


def _describe_views(views: Views, preprocess: dict) -> dict:
    common = {"size": list(views.size), "interpolation": views.interpolation.value,
              "mean": list(preprocess["mean"]), "std": list(preprocess["std"]), "resize_mode": preprocess.get("resize_mode")}
    if views.tencrop:
        return {**common, "views": "tencrop", "resize_shorter_side": int(round(max(views.size) / TENCROP_RESIZE))}
    return {**common, "views": f"center + {views.k} augmented", "random_resized_crop": {"scale": RRC_SCALE, "ratio": RRC_RATIO},
            "hflip_p": FLIP_P, "color_jitter": JITTER, "color_jitter_p": JITTER_P, "grayscale_p": GRAYSCALE_P}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _write_index(path: Path, dataset: ImageDataset, rows: np.ndarray) -> None:
    import pandas as pd

    pd.DataFrame({"image": dataset.images[rows], "lat": dataset.coords[rows, 0], "lon": dataset.coords[rows, 1],
                  "csv_line": dataset.lines[rows]}).to_csv(path, index_label="row")


def _file_state(path: Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _shard_done(work: Path, s: int, dataset: ImageDataset) -> bool:
    """A finished shard is reused unless one of its failed images has appeared or changed since."""
    meta_file, features_file = work / f"shard_{s:06d}.json", work / f"shard_{s:06d}.npy"
    if not (meta_file.is_file() and features_file.is_file()):
        return False
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        return False
    return all(_file_state(dataset.path(row)) == state for row, _, state in meta["failed"])


def _run_shards(dataset, backbone, view_maker, work, todo, shard_size, batch_size, workers, device, precision, progress, stop_after):
    from tqdm import tqdm

    batches = []
    for s in todo:
        stop = min((s + 1) * shard_size, len(dataset))
        batches += [list(range(b, min(b + batch_size, stop))) for b in range(s * shard_size, stop, batch_size)]
    n_images = sum(len(b) for b in batches)
    if not batches:
        return {"images": 0, "seconds": 0.0, "workers": workers}
    loader = torch.utils.data.DataLoader(
        ImageViews(dataset, view_maker), batch_sampler=batches, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
    )
    mean = torch.tensor(backbone.preprocess["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(backbone.preprocess["std"], device=device).view(1, 3, 1, 1) * 255
    autocast = (torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
                if precision in ("fp16", "bf16") else contextlib.nullcontext())
    shard_rows = {s: min((s + 1) * shard_size, len(dataset)) - s * shard_size for s in todo}
    current, buffer, failed, written = None, [], [], 0
    bar = tqdm(total=n_images, unit="img", desc="extracting", disable=not progress, smoothing=0.1)
    start = time.perf_counter()
    with torch.inference_mode():
        for (pixels, ok, reasons), rows in zip(loader, batches):
            shard = rows[0] // shard_size
            if shard != current:
                current, buffer, failed = shard, [], []
            b, v = pixels.shape[:2]
            x = pixels.to(device, non_blocking=True).flatten(0, 1).float().sub_(mean).div_(std)
            with autocast:
                feats = backbone.model.encode_image(x)
            feats = feats.float().view(b, v, -1).cpu().numpy()
            feats[~ok.numpy()] = 0
            if not np.isfinite(feats).all():
                bad = rows[int(np.flatnonzero(~np.isfinite(feats).all(axis=(1, 2)))[0])]
                raise DataError(f"{dataset.csv}: line {dataset.lines[bad]}: the backbone gave non-finite features "
                                f"for {dataset.path(bad)} (precision {precision}; try --precision fp32)")
            buffer.append(feats.astype(np.float16))
            failed += [(row, reason, _file_state(dataset.path(row))) for row, good, reason in zip(rows, ok.tolist(), reasons) if not good]
            bar.update(b)
            if sum(len(f) for f in buffer) == shard_rows[shard]:
                _write_shard(work, shard, np.concatenate(buffer), failed)
                written += 1
                if stop_after is not None and written >= stop_after:
                    raise KeyboardInterrupt(f"test hook: stopped after {written} shards")
    bar.close()
    return {"images": n_images, "seconds": time.perf_counter() - start, "workers": workers}


def _write_shard(work: Path, s: int, features: np.ndarray, failed: list) -> None:
    """Features first, then the metadata that marks the shard finished; each by an atomic rename."""
    tmp = work / f"shard_{s:06d}.tmp.npy"
    np.save(tmp, features)
    os.replace(tmp, work / f"shard_{s:06d}.npy")
    _write_json(work / f"shard_{s:06d}.json", {"rows": int(len(features)), "failed": failed})


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoloc.data.features",
                                     description="Extract frozen open_clip features of a geotagged image data set into a feature cache.")
    add_dataset_arguments(parser)
    parser.add_argument("--out", required=True, help="cache folder to create (features.npy, coords.npy, manifest.json)")
    parser.add_argument("--model", default="ViT-L-14", help="open_clip model name, or an open_clip model-config JSON file (default ViT-L-14)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--pretrained", help="open_clip pretrained tag (e.g. openai), or 'random' for a seeded random initialisation")
    weights.add_argument("--checkpoint", help="local open_clip checkpoint file")
    parser.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI weights loaded from --checkpoint)")
    parser.add_argument("--views", type=int, default=None, help=f"K: augmented views per training image, plus the center view (default {DEFAULT_VIEWS})")
    parser.add_argument("--eval", action="store_true", help="evaluation set: the 10 TenCrop views per image instead")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (each brings all its views; default 32)")
    parser.add_argument("--workers", type=int, default=None, help=f"image decoding processes (default {default_workers()} here)")
    parser.add_argument("--device", default="auto", help="auto (GPU when visible), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="autocast precision (auto: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentations (and of --pretrained random)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="images per resumable shard (default 1024)")
    args = parser.parse_args(argv)
    columns = {"image_column": args.image_column, "lat_column": args.lat_column, "lon_column": args.lon_column}
    try:
        extract(args.csv, args.images, args.out, model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                quick_gelu=args.quick_gelu, views=args.views, eval=args.eval, batch_size=args.batch_size,
                workers=args.workers, device=args.device, precision=args.precision, max_missing=args.max_missing,
                seed=args.seed, shard_size=args.shard_size, columns=columns, progress=True)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished shards are kept in {partial_dir(Path(args.out).expanduser())}; "
              "rerun the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
