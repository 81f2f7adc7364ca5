"""Feature extraction: run a frozen open_clip backbone once over a data set and write a feature cache.

::

    python -m geoloc.data.features CSV --images ROOT --out CACHE_DIR --model ViT-L-14
        [--pretrained openai | --checkpoint FILE [--quick-gelu] | --pretrained random]
        [--views K | --eval] [--batch-size 32] [--workers N] [--device auto] [--precision auto]
        [--max-missing 0.05] [--seed 0] [--shard-size 1024]

This module owns ``extract()`` (the steps of one extraction, in order) and the command line.
The parts live beside it: ``request`` (the options, checked once, and the identity of a cache),
``backbone`` (the open_clip model and its weights), ``views`` (the augmented or TenCrop views of
each image) and ``shards`` (the resumable shard loop).

Views. A training cache holds K + 1 views per image: the backbone's own evaluation view and K
published GeoCLIP training augmentations, with the backbone's normalisation; the trainer draws
one view per image per epoch. With ``--eval`` the cache holds the 10 TenCrop views of each
image; the evaluation averages over them. ``--views 0`` keeps only the center view. The
augmentations are seeded by (``--seed``, CSV row, view), so the same command gives the same
bytes whatever the batch size, worker count or interruption.

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
import shutil
import sys
from pathlib import Path

import numpy as np

from geoloc.data.backbone import load_backbone, resolve_backbone, weights_id
from geoloc.data.cache import CacheWriter, DataError
from geoloc.data.images import (
    ImageDataset,
    add_dataset_arguments,
    check_missing_share,
    check_root,
    find_missing,
    read_dataset,
    write_report,
)
from geoloc.data.request import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_VIEWS,
    SHARD_SIZE,
    ExtractionRequest,
    claim_partial,
    default_workers,
    finished_cache,
    partial_dir,
)
from geoloc.data.shards import copy_shards, failed_rows, pending_shards, run_shards, shard_count
from geoloc.data.views import Views

MISSING_REPORT = "missing_images.csv"
IMAGES_INDEX = "images.csv"


def extract(
    request: ExtractionRequest,
    *,
    progress: bool = False,
    stats: dict | None = None,
    stop_after_shards: int | None = None,
) -> Path:
    """Extract the features ``request`` asks for into the cache ``request.out``; returns that folder.

    ``progress`` prints what happens and shows a progress bar. ``stats``, when given, receives the
    images extracted by this call, the seconds it took and the worker count. ``stop_after_shards``
    (tests only) raises KeyboardInterrupt after that many shards are written in this call, as a
    kill would.
    """
    out, work = request.out, request.partial
    weights = weights_id(request.pretrained, request.checkpoint, request.seed)
    dataset = read_dataset(request.csv, request.images, **request.columns)
    # A bad model name or weights tag fails here, before any work.
    _, _, _, quick_gelu = resolve_backbone(request.model, request.pretrained, request.checkpoint, request.quick_gelu)
    device, precision = request.device_and_precision()
    identity = request.identity(weights, quick_gelu, dataset.sha256)
    found = finished_cache(out, identity)
    if found is not None:
        if progress:
            print(
                f"{out}: already extracted for this request ({found['n']} images, {found['views']} views); "
                "nothing to do"
            )
        return out

    check_root(dataset.root)
    claim_partial(
        work,
        {
            **identity,
            "precision": precision,
            "device_type": device.type,
            "shard_size": request.shard_size,
            "n": len(dataset),
        },
    )

    # Missing files are counted before any GPU time is spent.
    missing = find_missing(dataset)
    report = write_report(work / MISSING_REPORT, dataset, missing)
    check_missing_share(dataset, missing, request.max_missing, report)
    if missing and progress:
        print(f"{len(missing)} of {len(dataset)} images missing (listed in {report}); they are left out of the cache")

    backbone = load_backbone(request.model, request.pretrained, request.checkpoint, quick_gelu, request.seed, device)
    views = Views(backbone.preprocess, request.k, request.eval, request.seed)
    n_shards = shard_count(len(dataset), request.shard_size)
    todo = pending_shards(work, dataset, request.shard_size)
    if progress and len(todo) < n_shards:
        print(f"resuming: {n_shards - len(todo)} of {n_shards} shards already in {work}")

    run = run_shards(
        request, dataset, backbone, views, todo, device, precision, progress=progress, stop_after=stop_after_shards
    )
    if stats is not None:
        stats.update(run)
    if progress and run["images"]:
        print(
            f"extracted {run['images']} images x {request.n_views} views in {run['seconds']:.1f} s: "
            f"{run['images'] / run['seconds']:.1f} images/s ({backbone.name}, batch {request.batch_size}, "
            f"{run['workers']} workers, {device.type} {precision})"
        )

    # Assemble: every row that failed (missing or unreadable) is listed and left out.
    failed = failed_rows(work, n_shards)
    report = write_report(work / MISSING_REPORT, dataset, failed)
    check_missing_share(dataset, failed, request.max_missing, report)
    keep = np.ones(len(dataset), dtype=bool)
    keep[[row for row, _ in failed]] = False
    manifest = {
        **identity,
        "split": request.kind,
        "feature_dim": backbone.feature_dim,
        "backbone_config": backbone.config,
        "checkpoint": backbone.checkpoint,
        "csv": str(dataset.csv.resolve()),
        "csv_rows": len(dataset),
        "csv_columns": dataset.columns,
        "image_root": str(dataset.root.resolve()),
        "missing_or_unreadable": len(failed),
        "augmentation": views.describe(backbone.preprocess),
        "precision": precision,
        "device_type": device.type,
    }
    writer = CacheWriter(out, int(keep.sum()), request.n_views, backbone.feature_dim)
    try:
        copy_shards(writer.features, work, keep, request.shard_size)
        writer.coords[:] = dataset.coords[keep]
        shutil.copy(report, writer.tmp / MISSING_REPORT)
        _write_index(writer.tmp / IMAGES_INDEX, dataset, np.flatnonzero(keep))
        writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(work, ignore_errors=True)
    if progress:
        print(
            f"{out}: {int(keep.sum())} images x {request.n_views} views x {backbone.feature_dim} "
            f"({len(failed)} missing or unreadable, listed in {out / MISSING_REPORT})"
        )
    return out


def _write_index(path: Path, dataset: ImageDataset, rows: np.ndarray) -> None:
    """``images.csv``: the image, coordinates and CSV line of each cache row."""
    import pandas as pd

    pd.DataFrame(
        {
            "image": dataset.images[rows],
            "lat": dataset.coords[rows, 0],
            "lon": dataset.coords[rows, 1],
            "csv_line": dataset.lines[rows],
        }
    ).to_csv(path, index_label="row")


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m geoloc.data.features",
        description="Extract frozen open_clip features of a geotagged image data set into a feature cache.",
    )
    add_dataset_arguments(parser)
    parser.add_argument("--out", required=True, help="cache folder to create (features.npy, coords.npy, manifest.json)")
    parser.add_argument(
        "--model",
        default="ViT-L-14",
        help="open_clip model name, or an open_clip model-config JSON file (default ViT-L-14)",
    )
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument(
        "--pretrained", help="open_clip pretrained tag (e.g. openai), or 'random' for a seeded random initialisation"
    )
    weights.add_argument("--checkpoint", help="local open_clip checkpoint file")
    parser.add_argument(
        "--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI weights loaded from --checkpoint)"
    )
    parser.add_argument(
        "--views",
        type=int,
        default=None,
        help=f"K: augmented views per training image, plus the center view (default {DEFAULT_VIEWS})",
    )
    parser.add_argument("--eval", action="store_true", help="evaluation set: the 10 TenCrop views per image instead")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="images per forward pass (each brings all its views; default 32)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help=f"image decoding processes (default {default_workers()} here)"
    )
    parser.add_argument("--device", default="auto", help="auto (GPU when visible), cpu, cuda, cuda:N")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="autocast precision (auto: fp16 on GPU, fp32 on CPU)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentations (and of --pretrained random)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="images per resumable shard (default 1024)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        request = ExtractionRequest(
            args.csv,
            args.images,
            args.out,
            model=args.model,
            pretrained=args.pretrained,
            checkpoint=args.checkpoint,
            quick_gelu=args.quick_gelu,
            views=args.views,
            eval=args.eval,
            seed=args.seed,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            precision=args.precision,
            shard_size=args.shard_size,
            max_missing=args.max_missing,
            image_column=args.image_column,
            lat_column=args.lat_column,
            lon_column=args.lon_column,
        )
        extract(request, progress=True)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted: finished shards are kept in {partial_dir(Path(args.out).expanduser())}; "
            "rerun the same command to continue",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
