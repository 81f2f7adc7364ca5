"""The shard loop: the backbone over every image, in resumable shards kept in the partial folder.

Shard s covers the CSV rows [s * shard_size, (s + 1) * shard_size) and is two files in
``CACHE_DIR.partial/``: ``shard_{s:06d}.npy`` (float16 features, rows x views x dim, zeros for
the images that failed) and then its record ``shard_{s:06d}.json`` (its row count and the failed
images as (row, reason, file state)), each by an atomic rename. A shard with its record is
finished: a rerun keeps it unless one of its failed images has appeared or changed since, so an
interrupted run resumes to the same bytes. ``copy_shards`` fills the cache from them at the end.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from geoloc.common.atomic import atomic_file, read_json, write_json
from geoloc.data.backbone import Backbone
from geoloc.data.cache import DataError
from geoloc.data.images import ImageDataset
from geoloc.data.request import ExtractionRequest
from geoloc.data.views import ImageViews, Views


def shard_count(n: int, shard_size: int) -> int:
    return -(-n // shard_size)


def _shard_files(work: Path, s: int) -> tuple[Path, Path]:
    """(features, record) of shard ``s``."""
    return work / f"shard_{s:06d}.npy", work / f"shard_{s:06d}.json"


def _file_state(path: Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _shard_done(work: Path, s: int, dataset: ImageDataset) -> bool:
    """A finished shard is reused unless one of its failed images has appeared or changed since."""
    features_file, record_file = _shard_files(work, s)
    if not (record_file.is_file() and features_file.is_file()):
        return False
    record = read_json(record_file)
    if not isinstance(record, dict) or "failed" not in record:
        return False
    return all(_file_state(dataset.path(row)) == state for row, _, state in record["failed"])


def pending_shards(work: Path, dataset: ImageDataset, shard_size: int) -> list[int]:
    """The shards still to extract: all but the finished ones in ``work``."""
    return [s for s in range(shard_count(len(dataset), shard_size)) if not _shard_done(work, s, dataset)]


def _write_shard(work: Path, s: int, features: np.ndarray, failed: list) -> None:
    """Features first, then the record that marks the shard finished; each by an atomic rename."""
    features_file, record_file = _shard_files(work, s)
    with atomic_file(features_file) as f:
        np.save(f, features)
    write_json(record_file, {"rows": int(len(features)), "failed": failed})


def run_shards(
    request: ExtractionRequest,
    dataset: ImageDataset,
    backbone: Backbone,
    views: Views,
    todo: list[int],
    device: torch.device,
    precision: str,
    *,
    progress: bool = False,
    stop_after: int | None = None,
) -> dict:
    """Extract the shards ``todo`` into ``request.partial``; returns {images, seconds, workers}.

    ``stop_after`` (tests only) raises KeyboardInterrupt after that many shards, as a kill would.
    """
    from tqdm import tqdm

    work, shard_size, batch_size = request.partial, request.shard_size, request.batch_size
    workers = request.worker_count
    batches = []
    for s in todo:
        stop = min((s + 1) * shard_size, len(dataset))
        batches += [list(range(b, min(b + batch_size, stop))) for b in range(s * shard_size, stop, batch_size)]
    n_images = sum(len(b) for b in batches)
    if not batches:
        return {"images": 0, "seconds": 0.0, "workers": workers}
    loader = torch.utils.data.DataLoader(
        ImageViews(dataset, views),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    mean = torch.tensor(backbone.preprocess["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(backbone.preprocess["std"], device=device).view(1, 3, 1, 1) * 255
    autocast = (
        torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
        if precision in ("fp16", "bf16")
        else contextlib.nullcontext()
    )
    shard_rows = {s: min((s + 1) * shard_size, len(dataset)) - s * shard_size for s in todo}
    current, buffer, failed, written = None, [], [], 0
    bar = tqdm(total=n_images, unit="img", desc="extracting", disable=not progress, smoothing=0.1)
    start = time.perf_counter()
    with torch.inference_mode():
        for (pixels, ok, reasons), rows in zip(loader, batches, strict=True):
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
                raise DataError(
                    f"{dataset.csv}: line {dataset.lines[bad]}: the backbone gave non-finite features "
                    f"for {dataset.path(bad)} (precision {precision}; try --precision fp32)"
                )
            buffer.append(feats.astype(np.float16))
            failed += [
                (row, reason, _file_state(dataset.path(row)))
                for row, good, reason in zip(rows, ok.tolist(), reasons, strict=True)
                if not good
            ]
            bar.update(b)
            if sum(len(f) for f in buffer) == shard_rows[shard]:
                _write_shard(work, shard, np.concatenate(buffer), failed)
                written += 1
                if stop_after is not None and written >= stop_after:
                    raise KeyboardInterrupt(f"test hook: stopped after {written} shards")
    bar.close()
    return {"images": n_images, "seconds": time.perf_counter() - start, "workers": workers}


def failed_rows(work: Path, n_shards: int) -> list[tuple[int, str]]:
    """(row, reason) of every image that failed (missing or unreadable), from the shard records."""
    failed: list[tuple[int, str]] = []
    for s in range(n_shards):
        failed += [(row, reason) for row, reason, _ in read_json(_shard_files(work, s)[1])["failed"]]
    return failed


def copy_shards(features: np.ndarray, work: Path, keep: np.ndarray, shard_size: int) -> None:
    """Copy the rows ``keep`` (a mask over the CSV rows) of every shard into ``features``, in order."""
    start = 0
    for s in range(shard_count(len(keep), shard_size)):
        rows = slice(s * shard_size, min((s + 1) * shard_size, len(keep)))
        shard = np.load(_shard_files(work, s)[0], mmap_mode="r")
        kept = keep[rows]
        features[start : start + int(kept.sum())] = shard[kept]
        start += int(kept.sum())
