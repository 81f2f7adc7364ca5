"""False negatives masked (``train.negatives.mask_within_km``): the loss of a tiny batch by hand with one
column masked, every negative of a real epoch checked against the distance, and off is today's training."""

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
from geoloc.tasks.geoclip.trainer import Trainer

from .conftest import build

MASK_KM = 300.0


def hand_cross_entropy(row: list[float], target: int, smoothing: float, left_out: set[int]) -> float:
    """-sum_j q_j log softmax(row)_j over the columns left in, q = (1 - s) one-hot + s / (columns left in)."""
    kept = [j for j in range(len(row)) if j not in left_out]
    log_z = math.log(sum(math.exp(row[j]) for j in kept))
    return -sum((smoothing / len(kept) + (1 - smoothing) * (j == target)) * (row[j] - log_z) for j in kept)


@pytest.mark.parametrize("loss", ["infonce", "symmetric"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_loss_with_a_masked_column_equals_a_hand_computation(loss, smoothing):
    g = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    locations = F.normalize(torch.randn(5, 4, generator=g), dim=-1)  # 3 batch GPS, then 2 queue GPS
    locations[1], locations[3] = images[0], images[2]  # false negatives that the loss would push hardest
    log_scale = torch.tensor(math.log(1 / 0.07))
    masked = torch.zeros(3, 5, dtype=torch.bool)
    masked[0, 1] = masked[1, 0] = True  # images 0 and 1 within the distance: each other's false negative
    masked[2, 3] = True  # and a queue point at image 2's place
    scale = math.exp(float(log_scale))
    rows = [[scale * float(images[i] @ locations[j]) for j in range(5)] for i in range(3)]
    left_out = [set(np.flatnonzero(masked[i].numpy())) for i in range(3)]
    expected = sum(hand_cross_entropy(rows[i], i, smoothing, left_out[i]) for i in range(3)) / 3
    if loss == "symmetric":
        columns = [[rows[i][j] for i in range(3)] for j in range(3)]
        back = [{i for i in range(3) if masked[i, j]} for j in range(3)]
        expected = (expected + sum(hand_cross_entropy(columns[j], j, smoothing, back[j]) for j in range(3)) / 3) / 2
    cfg = LossConfig(type=loss, label_smoothing=smoothing)
    got = float(training_loss(cfg, images, locations, log_scale, None, masked))
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(float(training_loss(cfg, images, locations, log_scale)), rel=1e-3)


def test_the_triplet_loss_leaves_the_masked_column_out():
    g = torch.Generator().manual_seed(4)
    images = F.normalize(torch.randn(2, 4, generator=g), dim=-1)
    locations = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    masked = torch.tensor([[False, False, True], [False, False, False]])
    d = lambda i, j: 1 - float(images[i] @ locations[j])  # noqa: E731
    terms = [max(0.0, d(0, 0) - d(0, 1) + 0.2), max(0.0, d(1, 1) - d(1, 0) + 0.2), max(0.0, d(1, 1) - d(1, 2) + 0.2)]
    got = float(training_loss(LossConfig(type="triplet"), images, locations, torch.tensor(0.0), None, masked))
    assert got == pytest.approx(sum(terms) / 3, rel=1e-6)


def masking_config(small_config, mask=MASK_KM, **negatives) -> dict:
    small_config["train"].update(epochs=1, negatives={"mask_within_km": mask, **negatives})
    small_config["data"]["train_fraction"] = 0.5
    small_config["eval"] = {"resolution_points": 0}
    return small_config


def record_masks(trainer: Trainer) -> list[tuple]:
    """Wrap the trainer's diagnostics (``NegativeDistances.measure``, which makes the mask) so that every
    step's coordinates and mask are kept."""
    seen, measure = [], trainer.distances.measure

    def recording(gps, shared, mined=None, mask_within_km=0.0):
        distances, masked = measure(gps, shared, mined, mask_within_km)
        seen.append(
            (gps.double().numpy(), shared.double().numpy(), None if mined is None else mined.double().numpy(), masked)
        )
        return distances, masked

    trainer.distances.measure = recording
    return seen


@pytest.mark.parametrize("mined", [0, 4])
def test_no_negative_left_in_an_epoch_lies_within_the_distance(small_config, mined):
    negatives = {"mined": mined, "near_share": 1.0, "near_k": 8} if mined else {}
    trainer = Trainer(build(masking_config(small_config, **negatives)))
    seen = record_masks(trainer)
    metrics = trainer.train_one_epoch()
    some_masked = 0
    for step, (gps, shared, mined_gps, masked) in enumerate(seen):
        km = haversine_km(gps[:, None], shared[None])
        if mined_gps is not None:
            km = np.concatenate([km, haversine_km(gps[:, None], mined_gps)], axis=1)
        own = np.zeros_like(km, dtype=bool)
        own[:, : len(gps)] = np.eye(len(gps), dtype=bool)
        masked = masked.numpy()
        assert masked.shape == km.shape and not masked[own].any(), step  # the positive is never masked
        assert (km[~own & ~masked] > MASK_KM).all(), (step, km[~own & ~masked].min())  # every negative left in
        assert (km[masked] <= MASK_KM + 1e-6).all(), step
        some_masked += masked.sum()
    assert some_masked > 0  # the distance was close enough to matter
    assert metrics["negative_min_km"] > MASK_KM
    assert len(seen) == -(-len(trainer.data.train) // trainer.cfg.train.batch_size)  # every step of the epoch


def test_off_trains_exactly_as_today_and_on_trains_otherwise(small_config):
    states = {}
    for name, mask in [("default", None), ("zero", 0.0), ("on", MASK_KM)]:
        trainer = Trainer(build(masking_config(small_config, mask)))
        trainer.train_one_epoch()
        states[name] = trainer.model.state_dict()
    for key, value in states["default"].items():
        assert torch.equal(value, states["zero"][key]), key
    assert not all(torch.equal(v, states["on"][k]) for k, v in states["default"].items())


@pytest.mark.parametrize("bad", [-1.0, "variogram", True])
def test_a_bad_distance_is_refused_naming_the_key(small_config, bad):
    with pytest.raises(ConfigError, match="train.negatives.mask_within_km"):
        build(masking_config(small_config, bad))


def test_semivariogram_masks_within_the_fitted_range_of_the_whole_training_cache(small_config):
    from geoloc.parts.semivariogram import fitted_range_km

    trainer = Trainer(build(masking_config(small_config, "semivariogram")))
    assert trainer.mask_km == fitted_range_km(trainer.data.train.source) > 0
