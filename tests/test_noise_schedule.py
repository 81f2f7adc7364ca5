"""Noise schedules (``train.noise.schedule``): the documented sigma of every epoch, in a table and in the
logged values of a real run, and the constant schedule training exactly as before it existed."""

from __future__ import annotations

import math

import pytest

from geoloc.common.validation import ConfigError
from geoloc.run.loop import train
from geoloc.study.folders import TrialFolder
from geoloc.tasks.geoclip.config import NoiseConfig, NoiseSchedule

from .conftest import build

NOT_FIGURES = {"train_s", "eval_s"}  # wall times


def table(schedule: dict, epochs: int = 7, batch_sigma: float = 5.0) -> list[float]:
    noise = NoiseConfig(batch_sigma=batch_sigma, queue_sigma=2 * batch_sigma, schedule=schedule)
    sigmas = [noise.sigmas(e) for e in range(1, epochs + 1)]
    # The queue's sigma goes by the same weights from its own start (twice the batch's) to the same end.
    end = NoiseSchedule(**schedule).sigma_end_km
    for (batch, queue), e in zip(sigmas, range(1, epochs + 1), strict=True):
        w = NoiseSchedule(**schedule).weight(e)
        assert batch == pytest.approx(batch_sigma + (end - batch_sigma) * w)
        assert queue == pytest.approx(2 * batch_sigma + (end - 2 * batch_sigma) * w)
    assert NoiseConfig(queue_sigma=1.0, schedule=schedule).sigmas(epochs)[0] == 0.0  # a part that is off stays off
    return [batch for batch, _ in sigmas]


def test_each_schedule_gives_the_documented_sigma_of_every_epoch():
    assert table({"type": "linear", "sigma_end_km": 0.0, "until_epoch": 5}) == [5, 3.75, 2.5, 1.25, 0, 0, 0]
    assert table({"type": "linear", "sigma_end_km": 1.0, "until_epoch": 3}) == pytest.approx([5, 3, 1, 1, 1, 1, 1])
    cosine = table({"type": "cosine", "sigma_end_km": 0.0, "until_epoch": 5})
    assert cosine == pytest.approx(
        [5, 5 * (1 + math.cos(math.pi / 4)) / 2, 2.5, 5 * (1 - math.cos(math.pi / 4)) / 2, 0, 0, 0]
    )
    assert cosine[4:] == [0, 0, 0]  # exactly: the epochs at the end draw no noise
    assert table({"type": "step", "sigma_end_km": 0.0, "until_epoch": 3}) == [5, 5, 0, 0, 0, 0, 0]
    assert table({"type": "step", "sigma_end_km": 2.5, "until_epoch": 1}) == [2.5] * 7
    assert table({"type": "linear", "sigma_end_km": 0.0, "until_epoch": 1}) == [0] * 7
    assert table({"type": "constant"}) == [5] * 7
    assert NoiseSchedule().weight(100) == 0.0


def test_a_schedule_without_its_end_is_refused_naming_the_key(small_config):
    small_config["train"]["noise"] = {"batch_sigma": 1.0, "schedule": {"type": "cosine", "sigma_end_km": 0.0}}
    with pytest.raises(ConfigError, match="train.noise.schedule.until_epoch"):
        build(small_config)


def run(small_config, tmp_path, name: str, **noise) -> list[dict]:
    small_config["train"].update(epochs=3, noise=noise)
    small_config["data"]["train_fraction"] = 0.25
    small_config["eval"] = {"resolution_points": 0}
    train(build(small_config), tmp_path / name)
    return [
        {k: v for k, v in row.items() if k not in NOT_FIGURES}
        for row in TrialFolder(tmp_path / name).read_metrics().rows
    ]


@pytest.mark.parametrize("target", ["gps", "embedding"])
def test_the_logged_sigmas_follow_the_schedule_and_constant_is_todays_training(small_config, tmp_path, target):
    sigma = 5.0 if target == "gps" else 0.05
    noise = {"target": target, "batch_sigma": sigma, "queue_sigma": 2 * sigma}
    plain = run(small_config, tmp_path, "plain", **noise)
    decaying = {"type": "linear", "sigma_end_km": 0.0, "until_epoch": 3}
    linear = run(small_config, tmp_path, "linear", **noise, schedule=decaying)
    assert [row["noise_batch_sigma"] for row in plain] == [sigma] * 3
    assert [row["noise_batch_sigma"] for row in linear] == [sigma, sigma / 2, 0.0]
    assert [row["noise_queue_sigma"] for row in linear] == [2 * sigma, sigma, 0.0]
    assert linear[0]["train_loss"] == plain[0]["train_loss"]  # epoch 1 trains at the full sigma
    assert linear[1]["train_loss"] != plain[1]["train_loss"]  # then less noise: another training
    if target == "gps":
        constant = run(small_config, tmp_path, "constant", **noise, schedule={"type": "constant"})
        assert constant == plain  # every metric, to the last digit
