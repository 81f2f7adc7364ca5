"""What one feature extraction is asked to do (``ExtractionRequest``), and the identity of its cache.

The request holds every option of ``python -m geoloc.data.features`` and is checked once, when it
is made: a bad option raises ``DataError`` with one line naming it (``--views: ...``). Its
identity (backbone, weights, CSV content, views, seed, extractor version) is what a finished
cache (``manifest.json``) or a partial folder (``CACHE_DIR.partial/job.json``) must match to be
reused; anything else found at ``--out`` is refused, never silently reused or overwritten.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from geoloc.common.atomic import read_json, write_json
from geoloc.common.devices import DeviceError, pick_device
from geoloc.data.backbone import backbone_name, check_weights
from geoloc.data.cache import MANIFEST, DataError
from geoloc.data.images import DEFAULT_MAX_MISSING
from geoloc.data.views import TENCROP_VIEWS

EXTRACTOR_VERSION = 1
SHARD_SIZE = 1024
DEFAULT_VIEWS = 4
DEFAULT_BATCH_SIZE = 32
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PARTIAL_SUFFIX = ".partial"
JOB = "job.json"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as SLURM and taskset set it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS and Windows have no affinity mask


def default_workers() -> int:
    """Image decoding processes: every usable CPU but one (the main process feeds the backbone).

    There is no cap: decoding a JPEG and cutting its 224 px views costs far more CPU time than the
    backbone spends on the GPU per image (ViT-L/14 in fp16 runs hundreds of images a second on
    one GPU, a core decodes tens), so the GPU waits for the decoders unless every core decodes.
    A cap of 8 left 23 cores of a 32-core GPU node idle and ViT-L/14 waiting. ``--workers N`` overrides
    it (``--workers 0`` decodes in the main process).
    """
    return max(0, usable_cpus() - 1)


def partial_dir(out: Path) -> Path:
    """Where the shards of an unfinished cache ``out`` are kept: ``out.partial`` beside it."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class ExtractionRequest:
    """Extract features of every image of ``csv`` (paths relative to ``images``) into the cache ``out``.

    ``views`` is K, the augmented views per training image (default 4; the cache holds K + 1);
    ``eval`` caches the 10 TenCrop views instead. Weights: exactly one of ``pretrained`` (an open_clip
    tag, or ``"random"``) and ``checkpoint``. ``workers`` None picks ``default_workers()``. The column
    names are found from the CSV header unless given. Paths may be given as strings.
    """

    csv: Path
    images: Path
    out: Path
    model: str = "ViT-L-14"
    pretrained: str | None = None
    checkpoint: str | Path | None = None
    quick_gelu: bool = False
    views: int | None = None
    eval: bool = False
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    shard_size: int = SHARD_SIZE
    max_missing: float = DEFAULT_MAX_MISSING
    image_column: str | None = None
    lat_column: str | None = None
    lon_column: str | None = None

    def __post_init__(self):
        for name in ("csv", "images", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser())
        integers = {
            "--views": self.views,
            "--workers": self.workers,
            "--seed": self.seed,
            "--batch-size": self.batch_size,
            "--shard-size": self.shard_size,
        }
        for option, value in integers.items():
            if value is None and option in ("--views", "--workers"):
                continue  # the default
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise DataError(f"{option}: must be an integer, got {value!r}")
        if self.eval and self.views is not None:
            raise DataError("--views and --eval exclude each other (--eval caches the 10 TenCrop views of each image)")
        if self.views is not None and self.views < 0:
            raise DataError(f"--views: must be >= 0, got {self.views}")
        for option, value in (("--batch-size", self.batch_size), ("--shard-size", self.shard_size)):
            if value < 1:
                raise DataError(f"{option}: must be >= 1, got {value}")
        if self.workers is not None and self.workers < 0:
            raise DataError(f"--workers: must be >= 0, got {self.workers}")
        if self.seed < 0:
            raise DataError(f"--seed: must be >= 0, got {self.seed}")
        share = self.max_missing
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share <= 1:
            raise DataError(f"--max-missing: must lie in [0, 1], got {self.max_missing}")
        if self.precision not in PRECISIONS:
            raise DataError(f"--precision: must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_weights(self.pretrained, self.checkpoint)

    @property
    def k(self) -> int:
        """Augmented views per image (0 for an evaluation cache)."""
        if self.eval:
            return 0
        return DEFAULT_VIEWS if self.views is None else self.views

    @property
    def n_views(self) -> int:
        """Views per image in the cache."""
        return TENCROP_VIEWS if self.eval else self.k + 1

    @property
    def kind(self) -> str:
        return "eval" if self.eval else "train"

    @property
    def partial(self) -> Path:
        return partial_dir(self.out)

    @property
    def columns(self) -> dict:
        """The column names, as ``read_dataset`` takes them."""
        return {"image_column": self.image_column, "lat_column": self.lat_column, "lon_column": self.lon_column}

    @property
    def worker_count(self) -> int:
        return default_workers() if self.workers is None else self.workers

    def device_and_precision(self) -> tuple[torch.device, str]:
        """The torch device and the autocast precision (``auto``: fp16 on a GPU, fp32 on the CPU)."""
        try:
            device = pick_device(self.device, "--device")
        except DeviceError as e:
            raise DataError(str(e)) from None
        except RuntimeError as e:  # not a device name at all
            raise DataError(f"--device {self.device}: {str(e).splitlines()[0]}") from None
        if self.precision == "auto":
            return device, "fp16" if device.type == "cuda" else "fp32"
        if self.precision == "fp16" and device.type != "cuda":
            raise DataError("--precision fp16: needs a GPU (use fp32 or bf16 on CPU)")
        return device, self.precision

    def identity(self, weights: str, quick_gelu: bool, csv_sha256: str) -> dict:
        """What a cache must match to be this request's (known before the backbone is loaded)."""
        return {
            "backbone": backbone_name(self.model),
            "weights": weights,
            "quick_gelu": quick_gelu,
            "csv_sha256": csv_sha256,
            "views": self.n_views,
            "view_kind": self.kind,
            "seed": self.seed,
            "extractor_version": EXTRACTOR_VERSION,
        }


def _mismatch(found: dict, wanted: dict) -> list[str]:
    return [f"{k}={found.get(k)!r} (requested {v!r})" for k, v in wanted.items() if found.get(k) != v]


def finished_cache(out: Path, identity: dict) -> dict | None:
    """The manifest of the cache already at ``out`` for this identity, or None when there is nothing there.

    DataError when ``out`` holds a cache of another request or is not a cache.
    """
    if (out / MANIFEST).is_file():
        found = read_json(out / MANIFEST)
        if not isinstance(found, dict):
            raise DataError(f"{out / MANIFEST}: not valid JSON; choose another --out or delete that folder")
        wrong = _mismatch(found, identity)
        if wrong:
            raise DataError(
                f"{out}: an existing cache built for another request: {'; '.join(wrong)}; "
                "refusing to reuse it: choose another --out or delete that folder"
            )
        return found
    if out.exists():
        raise DataError(f"{out}: exists and is not a feature cache (no {MANIFEST}); choose another --out")
    return None


def claim_partial(work: Path, job: dict) -> None:
    """Create the partial folder ``work`` for ``job`` (identity and shard layout), or resume one made for it.

    DataError when it holds the shards of another job.
    """
    if (work / JOB).is_file():
        found = read_json(work / JOB)
        wrong = _mismatch(found if isinstance(found, dict) else {}, job)
        if wrong:
            raise DataError(
                f"{work}: a partial extraction for another request: {'; '.join(wrong)}; "
                "rerun with its options, or delete that folder to start over"
            )
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / JOB, job)
