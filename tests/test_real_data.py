"""Real data: CSV readers, feature extraction, caches of views, training and evaluation on them.

Everything is made here: a few dozen generated images with known coordinates and a tiny randomly
initialised open_clip ViT (registered from a model-config JSON; no download).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.common.validation import ConfigError
from geoloc.data import Data, load_data
from geoloc.data.cache import CacheWriter, DataError, open_cache
from geoloc.data.config import DataConfig
from geoloc.data.features import extract
from geoloc.data.images import read_dataset
from geoloc.data.request import ExtractionRequest
from geoloc.geo import haversine_km
from geoloc.run.loop import train
from geoloc.study.config import parse_job
from geoloc.study.folders import TrialFolder
from geoloc.tasks.geoclip.config import GeoCLIPConfig
from geoloc.tasks.geoclip.evaluate import accuracy_metrics
from geoloc.tasks.geoclip.trainer import Trainer

TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
K = 2  # augmented views per training image
SMALL_MODEL = {"hidden_dim": 64, "depth": 1, "embed_dim": 32, "image_hidden_dim": 64, "rff_features": 32}


def make_images(root: Path, csv: Path, n: int, seed: int, prefix: str, header: str = "IMG_ID,LAT,LON") -> np.ndarray:
    """n JPEG/PNG images under root/prefix/ whose colours follow their (known) coordinates; the CSV lists them."""
    rng = np.random.default_rng(seed)
    coords = np.stack([rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)], axis=1).round(5)
    rows = []
    for i, (lat, lon) in enumerate(coords):
        h, w = int(rng.integers(72, 120)), int(rng.integers(72, 120))
        base = np.array([(lat + 90) / 180, (lon + 180) / 360, 0.5]) * 255
        pixels = np.clip(base + rng.normal(scale=40, size=(h, w, 3)), 0, 255).astype(np.uint8)
        name = f"{prefix}/{i % 3}/{i:04d}.{'png' if i % 4 == 0 else 'jpg'}"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name)
        rows.append(f"{name},{lat},{lon}")
    csv.write_text(header + "\n" + "\n".join(rows) + "\n")
    return coords


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "geoloc-test-tiny-vit.json"
    path.write_text(json.dumps(TINY_VIT))
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A training set (48 images) and an evaluation set (16 others) in one image folder."""
    base = tmp_path_factory.mktemp("data")
    root = base / "images"
    train_coords = make_images(root, base / "train.csv", 48, seed=1, prefix="train")
    eval_coords = make_images(root, base / "eval.csv", 16, seed=2, prefix="eval")
    return {
        "base": base,
        "root": root,
        "train_csv": base / "train.csv",
        "eval_csv": base / "eval.csv",
        "train_coords": train_coords,
        "eval_coords": eval_coords,
    }


@pytest.fixture(scope="module")
def caches(dataset, tiny_vit):
    base = dataset["base"]
    common = {"images": dataset["root"], "model": tiny_vit, "pretrained": "random", "batch_size": 8, "workers": 0}
    train_cache = extract(
        ExtractionRequest(dataset["train_csv"], out=base / "mp16_mini", views=K, shard_size=16, **common)
    )
    eval_cache = extract(ExtractionRequest(dataset["eval_csv"], out=base / "im2gps_mini", eval=True, **common))
    return {"train": train_cache, "eval": eval_cache}


def run_config(caches, **data) -> GeoCLIPConfig:
    return parse_job(
        {
            "data": {"train": str(caches["train"]), "val": [str(caches["eval"])], "gallery": "train", **data},
            "model": SMALL_MODEL,
            "train": {"epochs": 2, "batch_size": 16, "queue_size": 32, "lr": 1e-3, "threads": 1},
            "eval": {"val_negatives": 16},
        }
    )


def cli(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=120)


# -- caches of views ---------------------------------------------------------------------------


def test_caches_hold_k_plus_one_views_per_training_image_and_ten_per_evaluation_image(caches, dataset):
    train_cache, eval_cache = open_cache(caches["train"]), open_cache(caches["eval"])
    assert train_cache.features.shape == (48, K + 1, 32) and train_cache.features.dtype == np.float16
    assert eval_cache.features.shape == (16, 10, 32)
    np.testing.assert_array_equal(train_cache.coords, dataset["train_coords"])
    m = train_cache.manifest
    assert m["backbone"] == "geoloc-test-tiny-vit" and m["weights"] == "random(seed=0)" and m["views"] == K + 1
    assert m["view_kind"] == "train" and eval_cache.manifest["view_kind"] == "eval"
    assert len(m["csv_sha256"]) == 64 and m["image_root"] == str(dataset["root"].resolve())
    assert m["feature_dim"] == 32 and m["missing_or_unreadable"] == 0
    # the views are different images: no two views of an image give the same feature
    f = np.asarray(train_cache.features, dtype=np.float32)
    assert np.abs(f[:, 1:] - f[:, :1]).max(axis=-1).min() > 0
    assert np.abs(np.asarray(eval_cache.features[:, 0]) - np.asarray(eval_cache.features[:, 4])).max() > 0
    index = (caches["train"] / "images.csv").read_text().splitlines()
    assert (
        index[0] == "row,image,lat,lon,csv_line"
        and index[1].startswith("0,train/0/0000.png,")
        and index[1].endswith(",2")
    )
    assert (caches["train"] / "missing_images.csv").read_text().strip() == "row,line,image,reason"
    assert not Path(str(caches["train"]) + ".partial").exists()


def test_the_same_request_reuses_the_cache_and_another_is_refused(caches, dataset, tiny_vit):
    before = (caches["train"] / "features.npy").stat().st_mtime_ns
    common = {"images": dataset["root"], "model": tiny_vit, "pretrained": "random", "workers": 0}
    extract(ExtractionRequest(dataset["train_csv"], out=caches["train"], views=K, **common))
    assert (caches["train"] / "features.npy").stat().st_mtime_ns == before
    with pytest.raises(
        DataError, match=r"mp16_mini: an existing cache built for another request: views=3 \(requested 5\)"
    ):
        extract(ExtractionRequest(dataset["train_csv"], out=caches["train"], views=4, **common))
    with pytest.raises(DataError, match=r"weights='random\(seed=0\)' \(requested 'random\(seed=1\)'\)"):
        extract(ExtractionRequest(dataset["train_csv"], out=caches["train"], views=K, **{**common, "seed": 1}))
    proc = cli(
        "geoloc.data.features",
        dataset["train_csv"],
        "--images",
        dataset["root"],
        "--out",
        caches["train"],
        "--model",
        tiny_vit,
        "--pretrained",
        "random",
        "--eval",
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        "mp16_mini: an existing cache built for another request: views=3 (requested 10); "
        "view_kind='train' (requested 'eval')" in proc.stderr
    )
    assert (caches["train"] / "features.npy").stat().st_mtime_ns == before


def test_trainer_draws_one_view_per_image_and_other_views_in_other_epochs(caches):
    trainer = Trainer(run_config(caches))
    epochs = []
    for _ in range(3):
        idx, views = map(np.concatenate, zip(*trainer.batches(), strict=True))
        assert sorted(idx.tolist()) == list(range(48))  # every image once per epoch
        assert views.min() >= 0 and views.max() <= K
        epochs.append(views[np.argsort(idx)])
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert set(np.concatenate(epochs).tolist()) == set(range(K + 1))


# -- training and evaluation end to end --------------------------------------------------------


def test_train_and_evaluate_end_to_end_on_extracted_caches(caches, dataset, tmp_path):
    cfg = run_config(caches, val=[str(caches["eval"]), str(caches["train"])])  # the second reported under its own name
    metrics = train(cfg, tmp_path / "run")
    assert metrics["epoch"] == 2 and np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    for key in (
        "acc_1km",
        "acc_2500km",
        "median_km",
        "score",
        "mp16_mini_acc_2500km",
        "mp16_mini_score",
        "mp16_mini_val_loss",
    ):
        assert key in metrics, key
    # the first set drives score: recompute it from its accuracies
    assert metrics["score"] == pytest.approx(np.mean([metrics[f"acc_{t}km"] for t in (1, 25, 200, 750, 2500)]))
    # gallery "train": the training coordinates; every training image has its own location in it
    assert metrics["mp16_mini_ceiling_1km"] == 1.0
    assert [row["epoch"] for row in TrialFolder(tmp_path / "run").read_metrics().rows] == [1, 2]


def test_galleries_with_a_real_cache(caches, dataset, tmp_path):
    cfg = run_config(caches).data
    data = load_data(cfg)
    np.testing.assert_array_equal(data.gallery, np.unique(dataset["train_coords"], axis=0))
    assert list(data.val) == ["im2gps_mini"]
    geoclip = load_data(DataConfig(train=cfg.train, val=cfg.val, gallery="geoclip", gallery_size=500)).gallery
    assert geoclip.shape == (500, 2) and np.array_equal(
        geoclip, load_data(DataConfig(train=cfg.train, val=cfg.val, gallery="geoclip", gallery_size=500)).gallery
    )
    csv = tmp_path / "gallery.csv"
    csv.write_text("lat,lon\n10,20\n-30.5,140\n")
    assert load_data(DataConfig(train=cfg.train, val=cfg.val, gallery=str(csv))).gallery.tolist() == [
        [10, 20],
        [-30.5, 140],
    ]
    thin = load_data(DataConfig(train=cfg.train, val=cfg.val, gallery="train", gallery_size=10)).gallery
    assert len(thin) == 10 and all(any((row == g).all() for g in data.gallery) for row in thin)


def test_two_evaluation_sets_must_not_share_a_name(caches, tmp_path):
    import shutil

    twin = shutil.copytree(caches["eval"], tmp_path / "elsewhere" / "im2gps_mini")
    with pytest.raises(DataError, match="data.val names two evaluation sets 'im2gps_mini'"):
        load_data(DataConfig(train=str(caches["train"]), val=[str(caches["eval"]), str(twin)], gallery="train"))


def test_tencrop_evaluation_is_the_mean_of_the_per_view_logits(caches):
    trainer = Trainer(run_config(caches))
    trainer.train_one_epoch()
    model, evaluator = trainer.model.eval(), trainer.evaluators["im2gps_mini"]
    cache = evaluator.cache
    assert cache.views == 10
    with torch.no_grad():
        gallery_emb = torch.cat([emb for _, emb in evaluator.gallery.embeddings(model, trainer.precision)])
        scale = model.logit_scale.exp()
        feats = torch.from_numpy(np.asarray(cache.features, dtype=np.float32))
        per_view = torch.stack(
            [scale * model.encode_images(feats[:, v]) @ gallery_emb.T for v in range(10)]
        )  # (10, n, G)
        mean_logits = per_view.mean(dim=0)
        np.testing.assert_allclose(
            mean_logits, scale * evaluator.image_embeddings(model, 0, len(cache)) @ gallery_emb.T, atol=1e-5
        )
    predicted = trainer.data.gallery[mean_logits.argmax(dim=1).numpy()]
    expected = accuracy_metrics(haversine_km(predicted, cache.coords), trainer.cfg.eval)
    got = evaluator(model, trainer.precision).metrics
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


# -- resumable extraction ----------------------------------------------------------------------


def sharded_request(dataset, tiny_vit, out, **options) -> ExtractionRequest:
    """A small extraction of the training CSV in shards of 16 images (several shards, so a kill leaves some)."""
    defaults = {"model": tiny_vit, "pretrained": "random", "views": K, "shard_size": 16, "batch_size": 8}
    return ExtractionRequest(dataset["train_csv"], dataset["root"], out, **{**defaults, **options})


def test_killed_extraction_resumes_to_the_same_bytes(dataset, tiny_vit, tmp_path):
    straight = extract(sharded_request(dataset, tiny_vit, tmp_path / "straight", workers=2))
    with pytest.raises(KeyboardInterrupt):
        extract(sharded_request(dataset, tiny_vit, tmp_path / "resumed", workers=0), stop_after_shards=1)
    partial = tmp_path / "resumed.partial"
    assert sorted(p.name for p in partial.glob("shard_*.json")) == ["shard_000000.json"]
    assert not (tmp_path / "resumed").exists()  # nothing half-written where the cache goes
    resumed = extract(sharded_request(dataset, tiny_vit, tmp_path / "resumed", workers=0))
    assert not partial.exists()
    for name in ("features.npy", "coords.npy", "manifest.json", "images.csv", "missing_images.csv"):
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name


def test_a_rerun_keeps_finished_shards_and_refuses_a_partial_of_another_request(dataset, tiny_vit, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        extract(sharded_request(dataset, tiny_vit, tmp_path / "c", workers=0), stop_after_shards=1)
    shard = tmp_path / "c.partial" / "shard_000000.npy"
    np.save(shard, np.full(np.load(shard).shape, 7, np.float16))  # marks the finished shard
    with pytest.raises(
        DataError, match=r"c.partial: a partial extraction for another request: views=3 \(requested 5\)"
    ):
        extract(sharded_request(dataset, tiny_vit, tmp_path / "c", workers=0, views=4))
    cache = open_cache(extract(sharded_request(dataset, tiny_vit, tmp_path / "c", workers=0)))
    assert (np.asarray(cache.features[:16]) == 7).all() and not (np.asarray(cache.features[16:]) == 7).any()


@pytest.mark.slow
def test_kill_resume_through_the_command_line(tiny_vit, tmp_path):
    """A real SIGKILL halfway: the rerun continues and gives the same bytes as an uninterrupted run."""
    import signal
    import time

    make_images(tmp_path / "images", tmp_path / "set.csv", 160, seed=4, prefix="k")
    args = [
        "geoloc.data.features",
        tmp_path / "set.csv",
        "--images",
        tmp_path / "images",
        "--model",
        tiny_vit,
        "--pretrained",
        "random",
        "--views",
        K,
        "--shard-size",
        8,
        "--batch-size",
        8,
        "--workers",
        1,
    ]
    out, partial = tmp_path / "killed", tmp_path / "killed.partial"
    proc = subprocess.Popen(
        [sys.executable, "-m", *map(str, args), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while not list(partial.glob("shard_*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(partial.glob("shard_*.json")))
    assert 1 <= done < 20, f"{done} shards: the kill came too late to test anything"
    rerun = cli(*args, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {done} of 20 shards already" in rerun.stdout
    reference = cli(*args, "--out", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr
    for name in ("features.npy", "coords.npy", "manifest.json"):
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


# -- the backbone and the decoding workers -----------------------------------------------------

TEXT_TOWER = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection", "attn_mask")


@pytest.mark.parametrize("custom_text", [False, True], ids=["CLIP", "CustomTextCLIP"])
def test_only_the_image_tower_is_loaded_and_it_gives_the_same_features(custom_text, tmp_path):
    """The text tower is dropped before the model goes to its device: nothing but ``visual`` is held
    (so nothing else can reach the GPU), and ``encode_image`` gives the bytes of the whole model."""
    import open_clip

    from geoloc.data.backbone import load_backbone

    config = tmp_path / f"geoloc-test-tiny-{'custom' if custom_text else 'clip'}.json"
    config.write_text(json.dumps({**TINY_VIT, "custom_text": custom_text}))
    backbone = load_backbone(str(config), pretrained="random", seed=3)
    model = backbone.model
    held = {name.split(".")[0] for name, _ in [*model.named_parameters(), *model.named_buffers()]}
    assert held == {"visual"}, held
    assert set(model.state_dict()) == {f"visual.{k}" for k in model.visual.state_dict()}
    for name in (*TEXT_TOWER, "text", "logit_scale"):
        assert not hasattr(model, name), name
    assert backbone.feature_dim == 32 and backbone.preprocess["size"] == (64, 64)

    with torch.random.fork_rng():
        torch.manual_seed(3)  # as load_backbone seeds a random initialisation
        whole = open_clip.create_model(config.stem).eval()
    assert any(name.startswith(("transformer.", "text.")) for name in whole.state_dict())  # there was one to drop
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model.encode_image(x), whole.encode_image(x))
        assert torch.equal(model.visual(x), whole.visual(x))


def test_default_workers_are_every_usable_cpu_but_one_without_a_cap(monkeypatch):
    import os

    from geoloc.data.request import default_workers

    for cpus, workers in ((32, 31), (128, 127), (2, 1), (1, 0)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert default_workers() == workers, cpus
        request = ExtractionRequest("a.csv", "images", "out", pretrained="random")
        assert request.worker_count == workers
        assert ExtractionRequest("a.csv", "images", "out", pretrained="random", workers=3).worker_count == 3
        assert ExtractionRequest("a.csv", "images", "out", pretrained="random", workers=0).worker_count == 0


# -- malformed inputs --------------------------------------------------------------------------

GOOD_ROWS = ["train/0/0000.png,10.5,20.25", "train/1/0001.jpg,-33.9,151.2", "train/2/0002.jpg,48.85,2.35"]
BAD_CSV = {
    "missing-column": ("IMG_ID,LAT\ntrain/0/0000.png,10\n", "missing column for longitude"),
    "non-numeric": (
        "IMG_ID,LAT,LON\n" + "\n".join(GOOD_ROWS) + "\ntrain/0/0003.jpg,north,2\n",
        "line 5: LAT 'north' is not a finite number",
    ),
    "out-of-range": (
        "IMG_ID,LAT,LON\n" + "\n".join(GOOD_ROWS) + "\ntrain/0/0003.jpg,95,120\n",
        "line 5: LAT 95 out of range [-90, 90]",
    ),
    "swapped": (
        "IMG_ID,LON,LAT\ntrain/0/0000.png,10.5,20.25\ntrain/1/0001.jpg,-33.9,151.2\ntrain/2/0002.jpg,48.85,-122.4\n",
        "columns LAT and LON look swapped",
    ),
    "empty": ("", "empty file"),
    "header-only": ("IMG_ID,LAT,LON\n", "no rows"),
    "duplicate-row": (
        "IMG_ID,LAT,LON\n" + "\n".join(GOOD_ROWS) + "\n" + GOOD_ROWS[1] + "\n",
        "line 5: IMG_ID train/1/0001.jpg repeats line 3 (a duplicate row",
    ),
    "duplicate-image": (
        "IMG_FILE,LAT,LON\n" + "\n".join(GOOD_ROWS) + "\ntrain/1/0001.jpg,1,1\n",
        "repeats line 3 (the same image with other coordinates",
    ),
    "empty-path": ("IMG_ID,LAT,LON\n" + GOOD_ROWS[0] + "\n,1,2\n", "line 3: empty IMG_ID"),
}
CLI_CASES = {"missing-column", "swapped", "duplicate-row"}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_malformed_csv_is_rejected_with_file_and_line(case, dataset, tiny_vit, tmp_path):
    text, message = BAD_CSV[case]
    csv = tmp_path / f"{case}.csv"
    csv.write_text(text)
    with pytest.raises(DataError) as err:
        read_dataset(csv, dataset["root"])
    assert message in str(err.value) and str(csv) in str(err.value)
    if case in CLI_CASES:
        proc = cli(
            "geoloc.data.features",
            csv,
            "--images",
            dataset["root"],
            "--out",
            tmp_path / "cache",
            "--model",
            tiny_vit,
            "--pretrained",
            "random",
        )
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr and str(csv) in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "cache").exists()


def test_named_columns_and_the_official_loader_header(dataset, tmp_path):
    csv = tmp_path / "named.csv"
    csv.write_text(
        "photo,lng,latitude,extra\n"
        + "\n".join(f"{p},{lon},{lat},x" for p, lat, lon in (r.split(",") for r in GOOD_ROWS))
        + "\n"
    )
    ds = read_dataset(csv, dataset["root"], image_column="photo")
    assert ds.coords.tolist() == [[10.5, 20.25], [-33.9, 151.2], [48.85, 2.35]] and ds.lines.tolist() == [2, 3, 4]
    swapped = tmp_path / "swapped.csv"
    swapped.write_text(BAD_CSV["swapped"][0])
    fixed = read_dataset(swapped, dataset["root"], lat_column="LON", lon_column="LAT")  # the remedy the message names
    assert fixed.coords[2].tolist() == [48.85, -122.4]
    with pytest.raises(DataError, match="missing column picture \\(given by --image-column"):
        read_dataset(csv, dataset["root"], image_column="picture")


def test_missing_and_corrupt_images_are_listed_and_left_out(dataset, tiny_vit, tmp_path):
    root = tmp_path / "images"
    coords = make_images(root, tmp_path / "set.csv", 24, seed=3, prefix="p")
    (root / "p/1/0001.jpg").unlink()  # missing
    (root / "p/2/0002.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    jpeg = (root / "p/0/0003.jpg").read_bytes()
    (root / "p/0/0003.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # truncated
    args = [
        tmp_path / "set.csv",
        "--images",
        root,
        "--model",
        tiny_vit,
        "--pretrained",
        "random",
        "--views",
        1,
        "--workers",
        0,
    ]
    proc = cli("geoloc.data.features", *args, "--out", tmp_path / "cache", "--max-missing", 0.2)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 24 images missing" in proc.stdout and "(3 missing or unreadable" in proc.stdout
    cache = open_cache(tmp_path / "cache")
    assert len(cache) == 21 and cache.manifest["missing_or_unreadable"] == 3
    keep = np.ones(24, bool)
    keep[[1, 2, 3]] = False
    np.testing.assert_array_equal(cache.coords, coords[keep])
    report = (tmp_path / "cache" / "missing_images.csv").read_text().splitlines()
    assert report[0] == "row,line,image,reason" and len(report) == 4
    assert report[1] == "1,3,p/1/0001.jpg,missing"
    assert report[2].startswith("2,4,p/2/0002.jpg,unreadable") and report[3].startswith("3,5,p/0/0003.jpg,unreadable")
    # over the allowed share: exit 2, one line naming the count and where the list is
    with pytest.raises(DataError) as err:
        extract(
            ExtractionRequest(
                tmp_path / "set.csv",
                root,
                tmp_path / "strict",
                model=tiny_vit,
                pretrained="random",
                views=1,
                workers=0,
                max_missing=0.1,
            )
        )
    assert "3 of 24 images (12.5%) missing or unreadable" in str(err.value) and "line 3" in str(err.value)
    assert "strict.partial/missing_images.csv" in str(err.value)
    assert not (tmp_path / "strict").exists()
    assert (tmp_path / "strict.partial" / "missing_images.csv").read_text().splitlines() == report
    # the check-only command finds the same
    proc = cli(
        "geoloc.data.images",
        tmp_path / "set.csv",
        "--images",
        root,
        "--decode",
        "--report",
        tmp_path / "r.csv",
        "--max-missing",
        0.2,
    )
    assert proc.returncode == 0 and "3 images missing or unreadable" in proc.stdout, proc.stderr
    assert (tmp_path / "r.csv").read_text().splitlines() == report


def test_bad_options_exit_2(dataset, tiny_vit, tmp_path):
    common = [dataset["train_csv"], "--images", dataset["root"], "--out", tmp_path / "c"]
    proc = cli("geoloc.data.features", *common, "--model", tiny_vit, "--checkpoint", tmp_path / "nope.pt")
    assert proc.returncode == 2 and "--checkpoint " in proc.stderr and "nope.pt: file not found" in proc.stderr, (
        proc.stderr
    )
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()
    with pytest.raises(DataError, match="--model ViT-Nonexistent: not an open_clip model"):
        extract(
            ExtractionRequest(
                dataset["train_csv"], dataset["root"], tmp_path / "c", model="ViT-Nonexistent", pretrained="random"
            )
        )
    with pytest.raises(DataError, match="--pretrained laion9b: not a pretrained tag of ViT-B-32"):
        extract(
            ExtractionRequest(
                dataset["train_csv"], dataset["root"], tmp_path / "c", model="ViT-B-32", pretrained="laion9b"
            )
        )
    with pytest.raises(DataError, match="exclude each other"):
        extract(
            ExtractionRequest(
                dataset["eval_csv"],
                dataset["root"],
                tmp_path / "c",
                model=tiny_vit,
                pretrained="random",
                views=3,
                eval=True,
            )
        )
    with pytest.raises(DataError, match="image folder not found"):
        extract(
            ExtractionRequest(
                dataset["eval_csv"], tmp_path / "nowhere", tmp_path / "c", model=tiny_vit, pretrained="random"
            )
        )


def test_a_checkpoint_file_is_named_by_its_hash(dataset, tiny_vit, tmp_path):
    import open_clip

    open_clip.add_model_config(tiny_vit)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = open_clip.create_model("geoloc-test-tiny-vit")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    out = extract(
        ExtractionRequest(
            dataset["eval_csv"],
            dataset["root"],
            tmp_path / "c",
            model=tiny_vit,
            checkpoint=tmp_path / "tiny.pt",
            views=0,
            workers=0,
        )
    )
    cache = open_cache(out)
    from geoloc.data.images import file_sha256

    assert cache.manifest["weights"] == "sha256:" + file_sha256(tmp_path / "tiny.pt") and cache.views == 1
    random_init = extract(
        ExtractionRequest(
            dataset["eval_csv"],
            dataset["root"],
            tmp_path / "r",
            model=tiny_vit,
            pretrained="random",
            views=0,
            workers=0,
        )
    )
    assert not np.array_equal(np.asarray(cache.features), np.asarray(open_cache(random_init).features))


# -- warm start --------------------------------------------------------------------------------


def random_cache(path: Path, n: int, views: int, dim: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    writer = CacheWriter(path, n, views, dim)
    writer.coords[:] = np.stack([rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)], axis=1)
    chunk = max(1, (1 << 22) // (views * dim))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        writer.features[start:stop] = rng.standard_normal((stop - start, views, dim), dtype=np.float32)
    return writer.commit({"backbone": "random", "weights": None, "views": views, "feature_dim": dim})


def test_warm_start_loads_the_published_weights(tmp_path):
    from geoloc.tasks.geoclip.model import load_geoclip_weights

    cache = open_cache(random_cache(tmp_path / "c768", 64, 2, 768))
    data = Data(cache, {"val": cache}, cache.coords)
    cfg = parse_job(
        {
            "model": {"warm_start": True},
            "train": {"batch_size": 32, "queue_size": 64, "threads": 1},
            "eval": {"val_negatives": 16},
        }
    )
    trainer = Trainer(cfg, data)
    for name, tensor in load_geoclip_weights("location_encoder").items():
        assert torch.equal(trainer.model.location_encoder.state_dict()[name], tensor), name
    for name, tensor in load_geoclip_weights("image_encoder_mlp").items():
        assert torch.equal(trainer.model.image_head.state_dict()[name], tensor), name
    assert trainer.model.logit_scale.item() == pytest.approx(3.681, abs=1e-3)
    cold = Trainer(parse_job({"train": {"queue_size": 64, "threads": 1}, "eval": {"val_negatives": 16}}), data)
    assert not torch.equal(cold.model.image_head[0].weight, trainer.model.image_head[0].weight)
    assert np.isfinite(trainer.train_one_epoch()["train_loss"])


def test_warm_start_needs_the_published_architecture_and_768_features(caches):
    with pytest.raises(
        ConfigError,
        match=r"model.warm_start: needs the published architecture; this model has .*hidden_dim=64 \(published 1024\)",
    ):
        parse_job({"model": {**SMALL_MODEL, "warm_start": True}})
    cfg = parse_job(
        {
            "data": {"train": str(caches["train"]), "val": [str(caches["eval"])], "gallery": "train"},
            "model": {"warm_start": True},
        }
    )
    with pytest.raises(ConfigError, match="model.warm_start: needs 768-d features .* has 32"):
        Trainer(cfg)


# -- memory ------------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent("""
    import json, sys, psutil, numpy as np
    from geoloc.study.config import parse_job
    from geoloc.data import Data
    from geoloc.data.cache import open_cache
    from geoloc.tasks.geoclip.trainer import Trainer

    train, val = open_cache(sys.argv[1]), open_cache(sys.argv[2])
    cfg = parse_job({"model": %(model)s, "train": {"batch_size": 128, "queue_size": 256, "threads": 1},
                     "eval": {"val_negatives": 64}})
    trainer = Trainer(cfg, Data(train, {"val": val}, val.coords))
    import torch
    for step, (idx, views) in enumerate(trainer.batches()):  # an epoch over a sample: the first 12 batches
        if step == 12:
            break
        features = torch.from_numpy(train.read(idx, views).astype(np.float32))  # as Trainer.train_one_epoch reads
        trainer.train_step(features, trainer.train_coords[idx])
    memory = psutil.Process().memory_info()
    print(json.dumps({"rss": memory.rss, "private": memory.rss - memory.shared}))
""") % {"model": SMALL_MODEL}


@pytest.mark.slow
def test_memory_does_not_grow_with_the_cache_size(tmp_path):
    """The trainer reads its rows with ``os.pread``, so neither its RSS nor its private memory (RSS
    less the ``shared`` part) depends on the cache size. Indexing the memory map instead made RSS
    grow with the pages the kernel maps around each read (+200 MiB here, before the change)."""
    small = random_cache(tmp_path / "small", 12_000, 2, 512)
    large = random_cache(tmp_path / "large", 120_000, 2, 512)
    val = random_cache(tmp_path / "val", 64, 1, 512)
    assert (large / "features.npy").stat().st_size > 240e6  # held in memory, it would show
    used = {}
    for name, cache in (("small", small), ("large", large)):
        proc = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(cache), str(val)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        used[name] = json.loads(proc.stdout.splitlines()[-1])
    grew = {k: (used["large"][k] - used["small"][k]) / 2**20 for k in ("rss", "private")}
    print(
        f"10x larger cache: private RSS {grew['private']:+.1f} MiB, RSS {grew['rss']:+.1f} MiB; "
        f"small cache: private RSS {used['small']['private'] / 2**20:.0f} MiB"
    )
    assert grew["private"] < 20 and grew["rss"] < 20, grew
