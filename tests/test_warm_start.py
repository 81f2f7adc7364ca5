"""Warm start with branches beyond the published scales, frozen parts, and the epoch-0 row (eval.at_start)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from geoloc.common.validation import ConfigError
from geoloc.data import load_data
from geoloc.geo import haversine_km
from geoloc.parts.config import SAMPLER_DISTANCES
from geoloc.run.loop import train
from geoloc.study.config import parse_job, registry_of
from geoloc.study.folders import TrialFolder
from geoloc.tasks.geoclip.config import ModelConfig
from geoloc.tasks.geoclip.metrics import RESOLUTION, geoclip_registry
from geoloc.tasks.geoclip.model import GeoCLIP, LocationEncoder, load_geoclip_weights
from geoloc.tasks.geoclip.trainer import Trainer

from .conftest import build

PARITY = 1e-5  # tests/test_parity.py: our published encoder against the geoclip package's
TIMES = ("train_s", "eval_s")  # wall times differ by run
TRAINING_KEYS = (
    "train_loss",
    "lr",
    "train_s",
    "noise_batch_sigma",
    "noise_queue_sigma",
    *SAMPLER_DISTANCES,
)  # of a trained epoch: not in the epoch-0 row

# The published architecture (warm start needs it) on a small offline benchmark of 768-d features.
WARM = {
    "data": {"offline": {"n_train": 512, "n_val": 200, "n_gallery": 1000, "views": 1}},
    "model": {"warm_start": True, "rff_scales": [1, 16, 256, 4096]},
    "train": {"epochs": 1, "batch_size": 128, "queue_size": 128, "lr": 1e-3, "weight_decay": 0.1, "threads": 1},
    "eval": {"val_negatives": 128, "resolution_points": 0},
}


@pytest.fixture
def warm_config(offline_root) -> dict:
    cfg = copy.deepcopy(WARM)
    cfg["data"]["offline"]["root"] = offline_root
    return cfg


def without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMES}


def sample_coords() -> torch.Tensor:
    poles_and_seams = [[90.0, 0.0], [-90.0, 0.0], [0.0, 180.0], [0.0, -180.0], [51.5, -0.13], [-33.9, 151.2]]
    uniform = np.random.default_rng(0).uniform([-90, -180], [90, 180], (300, 2))
    return torch.cat([torch.tensor(poles_and_seams), torch.from_numpy(uniform).float()])


# -- warm start with extra branches -------------------------------------------------------------


@pytest.mark.parametrize("scales", [(1, 16, 256, 4096), (4096, 256, 1, 16)])
def test_extra_branch_starts_at_zero_and_the_encoder_is_the_published(scales):
    model = GeoCLIP(ModelConfig(warm_start=True, rff_scales=scales), feature_dim=768, queue_size=0)
    model.load_geoclip_weights()
    encoder = model.location_encoder
    published_state = load_geoclip_weights("location_encoder")
    for j, published_scale in enumerate((1, 16, 256)):  # LocEnc<j> of the published file is scale 2^(4j)
        branch = getattr(encoder, f"LocEnc{scales.index(published_scale)}")
        for name, tensor in branch.state_dict().items():
            assert torch.equal(tensor, published_state[f"LocEnc{j}.{name}"]), (published_scale, name)
    new = getattr(encoder, f"LocEnc{scales.index(4096)}")
    assert not new.head[0].weight.any() and not new.head[0].bias.any()
    assert new.capsule[1].weight.abs().max() > 0  # the hidden layers keep their random start
    assert new.capsule[0].b.std().item() == pytest.approx(4096, rel=0.1)  # RFF of sigma 4096, not a copy

    coords = sample_coords()
    with torch.no_grad():
        ours, published = encoder(coords), LocationEncoder.from_geoclip()(coords)
    assert (ours - published).abs().max().item() <= PARITY
    assert published.abs().max() > 0.05  # not trivially zero
    if scales == (1, 16, 256, 4096):  # the published sum in the published order, plus an exact 0
        assert torch.equal(ours, published)


def test_warm_started_run_starts_with_the_published_accuracies(warm_config, tmp_path):
    """The epoch-0 row equals the published model's accuracies, computed here without the trainer,
    the evaluator or the warm start: the published image head and location encoder (whose parity
    with the ``geoclip`` package tests/test_parity.py checks), top-1 over the gallery, as published."""
    warm_config["eval"]["at_start"] = True
    cfg = build(warm_config)
    folder = TrialFolder(tmp_path / "run")
    started = []
    train(cfg, folder.path, on_start=started.append)
    rows = folder.read_metrics().rows
    assert [r["epoch"] for r in rows] == [0, 1]
    start = rows[0]
    assert started == [start]
    assert not set(TRAINING_KEYS) & set(start)
    assert set(start) == set(rows[1]) - set(TRAINING_KEYS)

    data = load_data(cfg.data)
    val, gallery = data.val["val"], data.gallery
    head_state = load_geoclip_weights("image_encoder_mlp")
    head = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.ReLU(), torch.nn.Linear(768, 512))
    head.load_state_dict(head_state)
    with torch.no_grad():
        images = torch.nn.functional.normalize(head(torch.from_numpy(np.asarray(val.features, np.float32))), dim=-1)
        places = torch.nn.functional.normalize(
            LocationEncoder.from_geoclip()(torch.from_numpy(gallery).float()), dim=-1
        )
        logits = torch.einsum("nvd,gd->nvg", images, places).mean(dim=1)  # averaged over views, as published
    errors = haversine_km(gallery[logits.argmax(dim=1).numpy()], val.coords)
    for t in (1, 25, 200, 750, 2500):
        assert start[f"acc_{t}km"] == np.mean(errors <= t), t
    assert start["median_km"] == pytest.approx(np.median(errors), rel=1e-12)
    assert start["mean_km"] == pytest.approx(np.mean(errors), rel=1e-12)  # the same prediction for every image
    published_scale = load_geoclip_weights("logit_scale").item()
    assert start["temperature"] == pytest.approx(np.exp(-published_scale), rel=1e-6)
    assert 0 < start["acc_2500km"] < 1  # not a degenerate answer


def test_frozen_parts_stay_bitwise_while_the_new_branch_learns(warm_config):
    warm_config["model"]["freeze"] = ["published_branches", "image_head", "temperature"]
    trainer = Trainer(build(warm_config))  # weight_decay 0.1: it would move anything the optimiser held
    model = trainer.model
    published = model.location_encoder.published_branches()
    new = model.location_encoder.LocEnc3
    frozen = {
        **{f"published.{i}.{k}": p for i, b in enumerate(published) for k, p in b.named_parameters()},
        **{f"image_head.{k}": p for k, p in model.image_head.named_parameters()},
        "logit_scale": model.logit_scale,
    }
    before = {k: p.detach().clone() for k, p in frozen.items()}
    new_before = {k: p.detach().clone() for k, p in new.named_parameters()}
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in frozen.values()}

    trainer.train_one_epoch()  # 4 steps
    for k, p in frozen.items():
        assert torch.equal(p, before[k]), k
    assert new.head[0].weight.any()  # the zero head learnt
    assert not torch.equal(new.capsule[1].weight, new_before["capsule.1.weight"])  # the capsule trains too
    assert torch.equal(new.capsule[0].b, new_before["capsule.0.b"])  # Fourier features are fixed, as published


@pytest.mark.parametrize(
    "model,message",
    [
        ({"warm_start": True, "rff_scales": [1, 16, 4096]}, r"model\.rff_scales: warm_start needs .*256 missing"),
        (
            {"warm_start": True, "rff_scales": [1, 16, 256, 4096], "hidden_dim": 512},
            r"model\.warm_start: needs the published architecture; this model has hidden_dim=512 \(published 1024\)",
        ),
        ({"freeze": ["published_branches"]}, r"model\.freeze: published_branches needs warm_start"),
        ({"freeze": ["image_head", "encoder"]}, r"model\.freeze\[1\]: must be one of published_branches, image_head"),
        (
            {"warm_start": True, "freeze": ["published_branches", "image_head"], "learn_temperature": False},
            r"model\.freeze: .* leaves nothing to train",
        ),
    ],
)
def test_what_warm_start_and_freeze_cannot_honour_is_refused(model, message):
    with pytest.raises(ConfigError, match=message) as refused:
        parse_job({"model": model})
    assert "\n" not in str(refused.value)


def test_warm_start_with_extra_branches_still_needs_768_features(warm_config):
    warm_config["data"]["offline"].update(feature_dim=512, n_train=64, n_val=16, n_gallery=64)
    with pytest.raises(ConfigError, match=r"model\.warm_start: needs 768-d features .* has 512"):
        Trainer(build(warm_config))


# -- eval.at_start ------------------------------------------------------------------------------


def test_the_epoch_zero_row_leaves_the_trained_epochs_unchanged(small_config, tmp_path):
    """Two seeds, 2 epochs: without the epoch-0 row straight through; with it in two calls (the
    resume keeps the one epoch-0 row). Epochs 1 and 2 agree to the last digit in every log."""
    small_config["train"]["epochs"] = 2
    plain = TrialFolder(tmp_path / "plain")
    train(build(small_config), plain.path, seeds=2)

    small_config["eval"] = {"at_start": True}
    small_config["train"]["epochs"] = 1
    started, reported = [], []
    at_start = TrialFolder(tmp_path / "at_start")
    train(build(small_config), at_start.path, seeds=2, on_start=started.append)
    small_config["train"]["epochs"] = 2
    train(
        build(small_config),
        at_start.path,
        seeds=2,
        resume=True,
        on_start=started.append,
        on_epoch=lambda m, _: reported.append(m["epoch"]),
    )
    assert [r["epoch"] for r in started] == [0] and reported == [2]  # the resume neither re-evaluates nor reports 0

    lines = [json.loads(line) for line in (at_start.path / TrialFolder.METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    zero_rows = {TrialFolder.METRICS: 1, TrialFolder.SEEDS: 2, TrialFolder.CURVES: 2}  # the trial's; each seed's
    for log, n_zero in zero_rows.items():
        rows = at_start.read_log(log).rows
        assert [without_times(r) for r in rows if r["epoch"] > 0] == [
            without_times(r) for r in plain.read_log(log).rows
        ], log
        assert len([r for r in rows if r["epoch"] == 0]) == n_zero, log

    zero = lines[0]
    registry = registry_of(build(small_config))
    evaluation = {m.key for m in registry if m.eval_set is not None or m.key == RESOLUTION}
    assert set(zero) == {"epoch", "temperature", "eval_s", *evaluation}
    seeds = [r for r in at_start.read_seeds().rows if r["epoch"] == 0]
    assert zero["score"] == pytest.approx(np.mean([r["score"] for r in seeds]), abs=1e-15)
    assert zero["temperature"] == pytest.approx(0.07, rel=1e-6)  # init_temperature: nothing trained yet

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for logdir, row in [(at_start.path, zero), *((at_start.seed_dir(r["seed"]), r) for r in seeds)]:
        events = EventAccumulator(str(logdir))
        events.Reload()
        scores = {e.step: e.value for e in events.Scalars("val/score")}
        assert sorted(scores) == [0, 1, 2] and scores[0] == pytest.approx(row["score"], rel=1e-6), logdir
        assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_a_run_killed_before_epoch_one_evaluates_anew(small_config, tmp_path):
    """No checkpoint yet: the stale epoch-0 row (and anything after it) is cleared and written afresh."""
    small_config["train"]["epochs"] = 1
    small_config["eval"] = {"at_start": True}
    fresh = TrialFolder(tmp_path / "fresh")
    train(build(small_config), fresh.path)
    killed = TrialFolder(tmp_path / "killed")
    killed.path.mkdir()
    killed.append_metrics({"epoch": 0, "score": -1.0})
    killed.append_metrics({"epoch": 1, "score": -1.0})
    train(build(small_config), killed.path, resume=True)
    lines = [json.loads(line) for line in (killed.path / TrialFolder.METRICS).read_text().splitlines()]
    assert [without_times(r) for r in lines] == [without_times(r) for r in fresh.read_metrics().rows]
    assert [r["epoch"] for r in lines] == [0, 1]


def test_list_valued_hyperparameters_reach_tensorboard_as_text(tmp_path):
    """A choice among lists (fine_scales' model.rff_scales) is a trial's hyperparameter; HParams takes scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from geoloc.run.events import EventLogger

    hparams = {"model.rff_scales": [1, 16, 256, 4096], "model.freeze": ["published_branches"], "train.lr": 0.001}
    EventLogger(tmp_path, hparams, geoclip_registry([1.0], ["val"])).close(finished=False)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["model.rff_scales"].string_value == "[1, 16, 256, 4096]"
    assert start.hparams["model.freeze"].string_value == "['published_branches']"
    assert start.hparams["train.lr"].number_value == 0.001
