"""Feature extraction throughput, and a training epoch on the cache against the published loop.

(a) Extraction: images per second of ``geoloc.data.features.extract`` by backbone and batch
    size (open_clip, random weights, so nothing is downloaded), decoding JPEGs in DataLoader
    worker processes; one center view per image unless noted.

(b) One training epoch, the same work two ways, side by side in one run (interleaved A, B, A, B
    after a warm-up round, medians reported):

    - published: ``geoclip.train`` (the installed package's loop) over ``geoclip``'s own
      ``GeoDataLoader`` + ``img_train_transform`` (decode and augment every image every epoch),
      with a ``geoclip.GeoCLIP`` whose image encoder runs the same open_clip backbone, frozen,
      on every step, followed by the published MLP; its location encoder, queue and loss are
      the package's own;
    - ours: ``Trainer.train_one_epoch`` on the feature cache extracted once from the same images
      (K augmented views + the center view), same architecture after the backbone, same batch
      and queue sizes, the queue filled beforehand as the published one always is.

    The one-off extraction is reported too, with the number of epochs after which the cache has
    paid for itself (on a study, every trial of every epoch reuses it).

    python -m bench.bench_extraction [--quick] [--images 256] [--models ViT-B-32] [--batch-sizes 16,64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .common import interleave, log, machine_header, median, quiet, set_threads, spread, table


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """n JPEGs of Flickr-like size (500 x 375 or 375 x 500) with known coordinates; returns the CSV.

    The CSV has ``IMG_FILE`` (the published loader's column) and ``IMG_ID``, LAT, LON.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        base = np.stack(
            [np.sin(xx / rng.uniform(20, 80)), np.cos(yy / rng.uniform(20, 80)), np.sin((xx + yy) / 50)], -1
        )
        pixels = np.clip(128 + 80 * base + rng.normal(scale=20, size=base.shape), 0, 255).astype(np.uint8)
        if i % 3 == 0:
            pixels = pixels.transpose(1, 0, 2)
        name = f"{i:05d}.jpg"
        Image.fromarray(pixels).save(root / name, quality=90)
        rows.append(f"{name},{name},{rng.uniform(-60, 70):.5f},{rng.uniform(-180, 180):.5f}")
    csv = root.parent / "images.csv"
    csv.write_text("IMG_FILE,IMG_ID,LAT,LON\n" + "\n".join(rows) + "\n")
    return csv


def extraction_rows(
    csv: Path, root: Path, work: Path, models: list[str], batch_sizes: list[int], workers: int
) -> list[dict]:
    from geoloc.data.features import extract
    from geoloc.data.request import ExtractionRequest

    rows = []
    for model in models:
        for bs in batch_sizes:
            stats: dict = {}
            log(f"extraction: {model}, batch {bs}, {workers} workers")
            extract(
                ExtractionRequest(
                    csv,
                    root,
                    work / f"x-{model}-{bs}",
                    model=model,
                    pretrained="random",
                    views=0,
                    batch_size=bs,
                    workers=workers,
                    image_column="IMG_ID",
                ),
                stats=stats,
            )
            rows.append(
                {
                    "model": model,
                    "batch_size": bs,
                    "views": 1,
                    "workers": workers,
                    "images": stats["images"],
                    "seconds": stats["seconds"],
                    "images_per_s": stats["images"] / stats["seconds"],
                }
            )
    return rows


class OpenClipImageEncoder(torch.nn.Module):
    """The published ``ImageEncoder`` with its Hugging Face CLIP swapped for an open_clip visual tower."""

    def __init__(self, visual: torch.nn.Module, feature_dim: int):
        super().__init__()
        self.CLIP = visual.requires_grad_(False)  # frozen, as published
        self.mlp = torch.nn.Sequential(torch.nn.Linear(feature_dim, 768), torch.nn.ReLU(), torch.nn.Linear(768, 512))

    def forward(self, x):
        return self.mlp(self.CLIP(x))


def published_model(visual: torch.nn.Module, feature_dim: int, queue_size: int):
    """A ``geoclip.GeoCLIP`` (its forward, queue and location encoder) over the given backbone."""
    import geoclip
    from geoclip.model.location_encoder import LocationEncoder

    class GeoCLIPOverOpenClip(geoclip.GeoCLIP):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.logit_scale = torch.nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
            self.image_encoder = OpenClipImageEncoder(visual, feature_dim)
            self.location_encoder = LocationEncoder(from_pretrained=False)
            self._initialize_gps_queue(queue_size)

    return GeoCLIPOverOpenClip()


def epoch_comparison(
    csv: Path, root: Path, work: Path, model: str, batch: int, queue: int, views: int, workers: int, repeats: int
) -> dict:
    import geoclip
    from geoclip.train.dataloader import GeoDataLoader, img_train_transform

    from geoloc.data import Data
    from geoloc.data.backbone import load_backbone
    from geoloc.data.cache import open_cache
    from geoloc.data.features import extract
    from geoloc.data.request import ExtractionRequest
    from geoloc.study.config import parse_job
    from geoloc.tasks.geoclip.trainer import Trainer

    log(f"epoch comparison: extracting the cache once ({model}, {views} + 1 views)")
    stats: dict = {}
    cache_dir = extract(
        ExtractionRequest(
            csv,
            root,
            work / "cache",
            model=model,
            pretrained="random",
            views=views,
            batch_size=batch,
            workers=workers,
            image_column="IMG_ID",
        ),
        stats=stats,
    )
    cache = open_cache(cache_dir)

    # ours
    cfg = parse_job(
        {"train": {"batch_size": batch, "queue_size": queue, "device": "cpu", "threads": torch.get_num_threads()}}
    )
    trainer = Trainer(cfg, Data(cache, {"val": cache}, cache.coords))
    rng = np.random.default_rng(0)
    trainer.model.queue.push(
        torch.from_numpy(np.stack([rng.uniform(-60, 70, queue), rng.uniform(-180, 180, queue)], 1)).float()
    )

    # published
    backbone = load_backbone(model, pretrained="random")
    published = published_model(backbone.model.visual, backbone.feature_dim, queue)
    with quiet():
        dataset = GeoDataLoader(str(csv), str(root), transform=img_train_transform())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False)
    optimizer = torch.optim.Adam([p for p in published.parameters() if p.requires_grad], lr=3e-5, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.87)
    published.train()
    epoch = [0]

    def published_epoch():
        epoch[0] += 1
        with quiet():
            geoclip.train(loader, published, optimizer, epoch[0], batch, "cpu", scheduler)

    log(f"epoch comparison: {repeats} timed epochs each (+1 warm-up), interleaved")
    times, _ = interleave({"published": published_epoch, "ours": trainer.train_one_epoch}, repeats=repeats, warmup=1)
    ours, theirs = median(times["ours"]), median(times["published"])
    return {
        "model": model,
        "images": len(cache),
        "batch_size": batch,
        "queue_size": queue,
        "workers": workers,
        "published_epoch_s": theirs,
        "ours_epoch_s": ours,
        "ratio": theirs / ours,
        "published_spread": spread(times["published"]),
        "ours_spread": spread(times["ours"]),
        "extraction_views": views + 1,
        "extraction_s": stats["seconds"],
        "break_even_epochs": stats["seconds"] / max(theirs - ours, 1e-9),
    }


def markdown(figures: dict) -> str:
    ex = table(
        ["backbone (random weights)", "batch", "views", "decode workers", "images", "images/s"],
        [
            [r["model"], r["batch_size"], r["views"], r["workers"], r["images"], f"{r['images_per_s']:.1f}"]
            for r in figures["extraction"]
        ],
    )
    e = figures["epoch"]
    ep = table(
        ["one epoch", "time", "ratio"],
        [
            [
                f"published `geoclip.train`, backbone every step ({e['model']}, batch {e['batch_size']}, "
                f"queue {e['queue_size']})",
                e["published_spread"],
                f"{e['ratio']:.1f}x",
            ],
            ["ours, `Trainer.train_one_epoch` on the cache", e["ours_spread"], "1x"],
            [
                f"(once) extraction of the cache, {e['extraction_views']} views per image",
                f"{e['extraction_s']:.2f} s",
                f"pays off after {e['break_even_epochs']:.1f} epochs",
            ],
        ],
    )
    return (
        f"# Feature extraction and training on the cache\n\n{figures['machine']}\n\n"
        f"## (a) Extraction throughput\n\n{ex}\n\n## (b) One training epoch, {e['images']} images\n\n{ep}\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_extraction", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 images, one batch size, 1 timed epoch")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument(
        "--models", default="ViT-B-32", help="comma-separated open_clip names for (a); (b) uses the first"
    )
    parser.add_argument("--batch-sizes", default="16,64", help="comma-separated batch sizes for (a)")
    parser.add_argument("--batch", type=int, default=32, help="training batch for (b)")
    parser.add_argument("--queue", type=int, default=256, help="GPS queue for (b)")
    parser.add_argument("--views", type=int, default=4, help="augmented views per image in (b)'s cache")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: as the extractor picks)")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per side in (b)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable CPU)")
    args = parser.parse_args(argv)
    from geoloc.data.request import default_workers

    n_images = 64 if args.quick else args.images
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")][: 1 if args.quick else None]
    models = args.models.split(",")
    workers = default_workers() if args.workers is None else args.workers
    threads = set_threads() if args.threads is None else args.threads
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-extraction-") as tmp:
        work = Path(tmp)
        csv = make_images(work / "images", n_images)
        figures = {
            "machine": machine_header(),
            "extraction": extraction_rows(csv, work / "images", work, models, batch_sizes, workers),
            "epoch": epoch_comparison(
                csv,
                work / "images",
                work,
                models[0],
                args.batch,
                args.queue,
                args.views,
                workers,
                1 if args.quick else args.repeats,
            ),
        }
    figures["seconds"] = time.perf_counter() - start
    print(markdown(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
