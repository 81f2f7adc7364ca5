"""Negatives, losses and batch sampling (``train.loss``, ``train.negatives``, ``train.batches``,
``data.train_fraction``): known answers for each loss, the miner's guarantees, the samplers' batches
and diagnostics, exact resume with every sampler, and the published recipe kept bitwise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoloc.common.validation import ConfigError
from geoloc.geo import haversine_km
from geoloc.parts.config import LossConfig
from geoloc.parts.losses import training_loss
from geoloc.parts.negatives import NegativeDistances
from geoloc.run.loop import train
from geoloc.study.config import parse_job
from geoloc.tasks.geoclip.trainer import Trainer
from geoloc.train import main

from .conftest import build


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


@pytest.fixture
def tiny_embeddings():
    g = torch.Generator().manual_seed(3)
    images = unit(torch.randn(3, 4, generator=g))
    locations = unit(torch.randn(5, 4, generator=g))  # 3 batch GPS, then 2 queue GPS
    mined = unit(torch.randn(3, 2, 4, generator=g))
    return images, locations, mined, torch.tensor(math.log(1 / 0.07))


def hand_cross_entropy(row: list[float], target: int, smoothing: float) -> float:
    """-sum_j q_j log softmax(row)_j with q = (1 - s) one-hot + s / C (torch's label smoothing)."""
    log_z = math.log(sum(math.exp(v) for v in row))
    q = [smoothing / len(row) + (1 - smoothing) * (j == target) for j in range(len(row))]
    return -sum(qj * (v - log_z) for qj, v in zip(q, row, strict=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_infonce_and_symmetric_equal_a_hand_computation(tiny_embeddings, smoothing):
    images, locations, mined, log_scale = tiny_embeddings
    scale = math.exp(float(log_scale))
    dot = lambda a, b: float(a @ b)  # noqa: E731
    rows = [
        [scale * dot(images[i], locations[j]) for j in range(5)]
        + [scale * dot(images[i], mined[i, m]) for m in range(2)]
        for i in range(3)
    ]
    image_to_gps = sum(hand_cross_entropy(rows[i], i, smoothing) for i in range(3)) / 3
    gps_to_image = sum(hand_cross_entropy([rows[i][j] for i in range(3)], j, smoothing) for j in range(3)) / 3

    infonce = LossConfig(type="infonce", label_smoothing=smoothing)
    symmetric = LossConfig(type="symmetric", label_smoothing=smoothing)
    assert float(training_loss(infonce, images, locations, log_scale, mined)) == pytest.approx(image_to_gps, rel=1e-5)
    got = float(training_loss(symmetric, images, locations, log_scale, mined))
    assert got == pytest.approx((image_to_gps + gps_to_image) / 2, rel=1e-5)
    assert abs(image_to_gps - gps_to_image) > 1e-3  # the two directions differ, so the mean is a real check


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_triplet_equals_a_hand_computation(tiny_embeddings, distance):
    images, locations, mined, log_scale = tiny_embeddings
    d = (lambda a, b: 1 - float(a @ b)) if distance == "cosine" else (lambda a, b: float((a - b).norm()))
    margin, terms = 0.3, []
    for i in range(3):
        negatives = [locations[j] for j in range(5) if j != i] + [mined[i, m] for m in range(2)]
        terms += [max(0.0, d(images[i], locations[i]) - d(images[i], n) + margin) for n in negatives]
    cfg = LossConfig(type="triplet", margin=margin, distance=distance)
    got = float(training_loss(cfg, images, locations, log_scale, mined))
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert 0 < sum(t > 0 for t in terms) < len(terms)  # the margin is active for some pairs only
    no_margin = float(training_loss(cfg.model_copy(update={"margin": 0.0}), images, locations, log_scale, mined))
    assert no_margin < got


def published_step(trainer: Trainer, features: torch.Tensor, gps: torch.Tensor) -> None:
    """The training step as published and as this project ran it before train.loss existed."""
    model = trainer.model
    locations = torch.cat([gps, model.queue.contents()])
    logits = model.logits(model.encode_images(features), model.encode_locations(locations))
    loss = F.cross_entropy(logits.float(), torch.arange(len(gps)))
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    model.clamp_logit_scale()
    model.queue.push(gps)


def test_defaults_train_the_published_recipe_bitwise(small_config):
    """With mined 0, random batches and InfoNCE without smoothing (whatever the unused keys say),
    an epoch ends with the weights the published step gives, bit for bit."""
    small_config["train"].update(
        negatives={"mined": 0, "pool": "train", "near_share": 1.0, "near_k": 7, "min_km": 5.0, "mask_within_km": 0},
        batches={"type": "random", "neighbours": 1, "draw": 1, "range": 4},
    )
    ours, reference = Trainer(build(small_config)), Trainer(build(small_config))
    ours.train_one_epoch()
    for idx, views in reference.batches():
        published_step(
            reference, torch.from_numpy(reference.data.train.read(idx, views)).float(), reference.train_coords[idx]
        )
    for (name, a), (_, b) in zip(ours.model.state_dict().items(), reference.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(ours.generator.get_state(), reference.generator.get_state())


def mining_config(small_config, **negatives) -> dict:
    small_config["train"]["negatives"] = {"mined": 8, "near_share": 0.5, "near_k": 16, "min_km": 20.0, **negatives}
    small_config["train"]["epochs"] = 1
    return small_config


def record_mined(trainer: Trainer) -> list[tuple[np.ndarray, np.ndarray]]:
    """Wrap the trainer's miner so that every (rows, mined pool indices) of an epoch is kept."""
    seen, draw = [], trainer.miner.draw

    def recording(idx, generator):
        mined = draw(idx, generator)
        seen.append((idx.copy(), mined.numpy().copy()))
        return mined

    trainer.miner.draw = recording
    return seen


@pytest.mark.parametrize("pool", ["gallery", "train"])
def test_no_mined_negative_within_min_km_in_a_whole_epoch(small_config, pool):
    trainer = Trainer(build(mining_config(small_config, pool=pool)))
    seen = record_mined(trainer)
    metrics = trainer.train_one_epoch()
    pool_coords = trainer.miner.pool
    rows = np.concatenate([idx for idx, _ in seen])
    assert np.array_equal(np.sort(rows), np.arange(len(trainer.data.train)))  # every positive mined once
    for idx, mined in seen:
        assert mined.shape == (len(idx), 8)
        km = haversine_km(trainer.data.train.coords[idx][:, None], pool_coords[mined])
        assert (km > 20.0).all(), km.min()
    assert math.isfinite(metrics["negative_min_km"])


def test_min_km_semivariogram_is_the_fitted_range_of_the_whole_training_cache(small_config):
    from geoloc.parts.semivariogram import fitted_range_km

    small_config["data"]["train_fraction"] = 0.5  # the range is the whole cache's, not the subset's
    trainer = Trainer(build(mining_config(small_config, min_km="semivariogram")))
    expected = fitted_range_km(trainer.data.train.source)
    assert trainer.miner.min_km == expected > 0
    idx = np.arange(len(trainer.data.train))
    mined = trainer.miner.draw(idx, torch.Generator().manual_seed(2)).numpy()
    assert (haversine_km(trainer.data.train.coords[idx][:, None], trainer.miner.pool[mined]) > expected).all()


def test_near_share_one_takes_only_the_nearest_beyond_min_km(small_config):
    trainer = Trainer(build(mining_config(small_config, mined=6, near_share=1.0, near_k=6, min_km=5.0)))
    train_coords, pool = trainer.data.train.coords, trainer.miner.pool
    idx = np.arange(0, len(train_coords), 97)
    mined = trainer.miner.draw(idx, torch.Generator().manual_seed(0)).numpy()
    for row, picks in zip(idx, mined, strict=True):
        km = haversine_km(train_coords[row], pool)
        beyond = np.flatnonzero(km > 5.0)
        nearest6 = set(beyond[np.argsort(km[beyond], kind="stable")[:6]])
        assert set(picks) == nearest6  # near_k = mined: exactly the six nearest, each once


def test_near_negatives_are_nearer_than_far_ones(small_config):
    trainer = Trainer(build(mining_config(small_config, mined=16, near_share=0.5, near_k=32, min_km=0.0)))
    idx = np.arange(len(trainer.data.train))
    mined = trainer.miner.draw(idx, torch.Generator().manual_seed(1)).numpy()
    km = haversine_km(trainer.data.train.coords[idx][:, None], trainer.miner.pool[mined])
    assert np.median(km[:, :8]) * 20 < np.median(km[:, 8:])  # near first, then uniform over the pool


def test_diagnostics_equal_a_brute_force_over_every_pair():
    """batch_median_km, negative_median_km and negative_min_km against haversine over every pair (lower medians)."""
    g = torch.Generator().manual_seed(5)
    spread = torch.tensor([180.0, 360.0], dtype=torch.float64)
    points = lambda *shape: (torch.rand(*shape, 2, generator=g, dtype=torch.float64) - 0.5) * spread  # noqa: E731
    shared, mined = points(300), points(50, 4)
    shared[60] = shared[3] + torch.tensor([0.001, 0.0], dtype=torch.float64)  # a queue point 111 m from positive 3
    gps = shared[:50]
    for steps in (1, 2):
        distances = NegativeDistances()
        for _ in range(steps):
            distances.add(gps.float(), shared.float(), mined.float())
        got = distances.result()
    positives = gps.float().double().numpy()
    within = haversine_km(positives[:, None], positives[None])[np.triu_indices(50, 1)]
    to_shared = haversine_km(positives[:, None], shared.float().double().numpy()[None])[~np.eye(50, 300, dtype=bool)]
    negatives = np.concatenate([to_shared, haversine_km(positives[:, None], mined.float().double().numpy()).ravel()])
    lower_median = lambda x: np.sort(x)[(len(x) - 1) // 2]  # noqa: E731
    assert got["batch_median_km"] == pytest.approx(lower_median(within), rel=1e-9)
    assert got["negative_median_km"] == pytest.approx(lower_median(negatives), rel=1e-9)
    assert got["negative_min_km"] == pytest.approx(negatives.min(), rel=1e-6) and got["negative_min_km"] < 0.2


def test_gps_neighbour_batches_hold_every_image_once_and_close_places(small_config):
    small_config["train"]["epochs"] = 1
    random = Trainer(build(small_config)).train_one_epoch()
    # One anchor's group fills a batch of 128 (with 32 + 32 two groups of far-apart anchors share it, and
    # the median of all pairs in the batch falls only to about 0.65 of random's).
    small_config["train"]["batches"] = {"type": "gps_neighbours", "neighbours": 63, "draw": 64, "range": 128}
    trainer = Trainer(build(small_config))
    batches = [idx for idx, _ in trainer.batches()]
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(trainer.data.train)))
    assert all(len(b) == 128 for b in batches[:-1])
    neighbours = trainer.train_one_epoch()
    assert neighbours["batch_median_km"] * 3 < random["batch_median_km"], (neighbours, random)
    assert neighbours["negative_median_km"] < random["negative_median_km"]


def test_similarity_lists_switch_on_and_refresh_on_schedule(small_config, monkeypatch):
    import geoloc.parts.sampler as sampler_module

    small_config["train"]["batches"] = {
        "type": "similarity",
        "neighbours": 16,
        "draw": 16,
        "range": 64,
        "similarity_from_epoch": 2,
        "similarity_every": 2,
    }
    trainer = Trainer(build(small_config))
    built, lists_used = [], []
    real_build, real_batches = sampler_module.ranked_lists, sampler_module.neighbour_batches

    def spy_build(images, locations, k, **options):
        result = real_build(images, locations, k, **options)
        lists = result.lists
        scores = images @ locations.T
        scores.fill_diagonal_(-math.inf)
        brute = scores.topk(k, dim=1).values
        got = scores.gather(1, torch.as_tensor(lists).long())
        assert torch.allclose(got, brute, rtol=0, atol=1e-6)  # the top-k of the model's embeddings, in order
        built.append(trainer.epoch + 1)
        return result

    def spy_batches(lists, *args):
        lists_used.append("gps" if lists is trainer.sampler.gps_lists else "similarity")
        return real_batches(lists, *args)

    monkeypatch.setattr(sampler_module, "ranked_lists", spy_build)
    monkeypatch.setattr(sampler_module, "neighbour_batches", spy_batches)
    for _ in range(5):
        trainer.train_one_epoch()
    assert built == [2, 4]
    assert lists_used == ["gps", "similarity", "similarity", "similarity", "similarity"]


SAMPLERS = {
    "gps_neighbours": {"batches": {"type": "gps_neighbours", "neighbours": 16, "draw": 16, "range": 64}},
    "similarity": {  # lists built for epoch 1 and kept for epoch 2: the resumed run must load them
        "batches": {
            "type": "similarity",
            "neighbours": 16,
            "draw": 16,
            "range": 64,
            "similarity_from_epoch": 1,
            "similarity_every": 2,
        },
    },
    "mined": {"negatives": {"mined": 4, "near_k": 8, "min_km": 1.0}, "loss": {"type": "symmetric"}},
    "triplet": {
        "negatives": {"mined": 2, "pool": "train", "near_share": 1.0, "near_k": 2},
        "loss": {"type": "triplet"},
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_resume_is_exact_with_every_sampler(small_config, tmp_path, sampler):
    small_config["train"].update(SAMPLERS[sampler])
    small_config["train"]["epochs"] = 2
    straight = train(build(small_config), tmp_path / "straight")
    small_config["train"]["epochs"] = 1
    train(build(small_config), tmp_path / "split")
    small_config["train"]["epochs"] = 2
    resumed = train(build(small_config), tmp_path / "split", resume=True)
    assert resumed == {**straight, "train_s": resumed["train_s"], "eval_s": resumed["eval_s"]}


def test_lists_are_built_once_beside_the_cache_and_shared(small_config, monkeypatch):
    """The launcher's prepare_sampling builds the lists; every later trainer reads the same files."""
    import geoloc.parts.negatives
    import geoloc.parts.sampler
    from geoloc.data import load_data
    from geoloc.tasks.geoclip.trainer import prepare_sampling

    small_config["train"]["batches"] = {"type": "gps_neighbours", "neighbours": 8, "draw": 8, "range": 24}
    small_config["train"]["negatives"] = {"mined": 4, "near_k": 11, "min_km": 3.0}
    cfg = build(small_config)
    data = load_data(cfg.data)
    prepare_sampling(cfg, data)
    derived = sorted(p.name.split("-")[0] for p in (data.train.path / "derived").glob("*.npy"))
    assert "gps" in derived and "near" in derived

    def rebuilt(*args, **kwargs):
        raise AssertionError("a trial built the lists again")

    monkeypatch.setattr(geoloc.parts.sampler, "nearest", rebuilt)
    monkeypatch.setattr(geoloc.parts.negatives, "nearest", rebuilt)
    first, second = Trainer(cfg), Trainer(cfg)
    assert np.array_equal(first.sampler.gps_lists, second.sampler.gps_lists)
    assert np.array_equal(first.miner.near_lists, second.miner.near_lists)
    other = build({**small_config, "train": {**small_config["train"], "negatives": {"mined": 4, "near_k": 11}}})
    with pytest.raises(AssertionError, match="built the lists again"):  # another min_km: other near lists
        Trainer(other)


def test_train_fraction_is_one_seeded_subset(small_config):
    small_config["data"]["train_fraction"] = 0.1
    first, second = Trainer(build(small_config)), Trainer(build(small_config))
    whole = first.data.train.source
    assert len(first.data.train) == round(0.1 * len(whole)) == len(second.data.train)
    assert np.array_equal(first.data.train.rows, second.data.train.rows)  # the same subset in every trial
    rows = first.data.train.rows
    assert np.array_equal(first.data.train.coords, whole.coords[rows])
    idx, views = np.array([0, 5, 17]), np.array([1, 0, 1])
    assert np.array_equal(first.data.train.read(idx, views), whole.features[rows[idx], views])
    assert len(np.concatenate([b for b, _ in first.batches()])) == len(first.data.train)


BAD = [
    ({"train": {"batches": {"type": "gps_neighbours", "range": 5000}}}, "train.batches.range: lists of 5000"),
    ({"train": {"batches": {"type": "gps_neighbours", "neighbours": 100, "draw": 40}}}, "train.batches.draw:"),
    ({"train": {"batch_size": 32, "batches": {"type": "similarity"}}}, "train.batch_size: 32 cannot hold"),
    ({"data": {"train_fraction": 0}}, "data.train_fraction: must be > 0"),
    ({"data": {"train_fraction": 1.2}}, "data.train_fraction: must be <= 1"),
    ({"train": {"negatives": {"mined": 8, "near_share": 1.0, "near_k": 4}}}, "train.negatives.near_k:"),
    ({"train": {"negatives": {"mined": 4, "min_km": 30000}}}, "train.negatives.min_km:"),
    (
        {"data": {"offline": {"n_train": 100}}, "train": {"negatives": {"mined": 4, "min_km": "semivariogram"}}},
        "train.negatives.min_km: semivariogram:",
    ),
    ({"train": {"loss": {"type": "triplet", "label_smoothing": 0.1}}}, "train.loss.label_smoothing:"),
]


@pytest.mark.parametrize("changes,expected", BAD, ids=[b[1].split(":")[0] + str(i) for i, b in enumerate(BAD)])
def test_bad_combinations_exit_2_with_one_line(small_config, tmp_path, capsys, changes, expected):
    import yaml

    from geoloc.common.validation import deep_merge

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(deep_merge(small_config, changes)))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_semivariogram_keyword_is_a_number_or_refused():
    assert parse_job({"train": {"negatives": {"min_km": "semivariogram"}}}).train.negatives.min_km == "semivariogram"
    with pytest.raises(ConfigError, match="train.negatives.min_km: must be a number of km >= 0 or 'semivariogram'"):
        parse_job({"train": {"negatives": {"min_km": "variogram"}}})
