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
    assert all(queue == 2 * batch for batch, queue in sigmas)  # one factor scales both, their ratio kept
    return [batch for batch, _ in sigmas]


def test_each_schedule_gives_the_documented_sigma_of_every_epoch():
    assert table({"type": "linear", "end_factor": 0.0, "until_epoch": 5}) == [5, 3.75, 2.5, 1.25, 0, 0, 0]
    assert table({"type": "linear", "end_factor": 0.2, "until_epoch": 3}) == pytest.approx([5, 3, 1, 1, 1, 1, 1])
    cosine = table({"type": "cosine", "end_factor": 0.0, "until_epoch": 5})
    assert cosine == pytest.approx(
        [5, 5 * (1 + math.cos(math.pi / 4)) / 2, 2.5, 5 * (1 - math.cos(math.pi / 4)) / 2, 0, 0, 0]
    )
    assert cosine[4:] == [0, 0, 0]  # exactly: the epochs at the end draw no noise
    assert table({"type": "step", "end_factor": 0.0, "until_epoch": 3}) == [5, 5, 0, 0, 0, 0, 0]
    assert table({"type": "step", "end_factor": 0.5, "until_epoch": 1}) == [2.5] * 7
    assert table({"type": "linear", "end_factor": 0.0, "until_epoch": 1}) == [0] * 7
    assert table({"type": "constant"}) == [5] * 7
    assert NoiseSchedule().factor(100) == 1.0


def test_a_schedule_without_its_end_is_refused_naming_the_key(small_config):
    small_config["train"]["noise"] = {"batch_sigma": 1.0, "schedule": {"type": "cosine", "end_factor": 0.0}}
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
    decaying = {"type": "linear", "end_factor": 0.0, "until_epoch": 3}
    linear = run(small_config, tmp_path, "linear", **noise, schedule=decaying)
    assert [row["noise_batch_sigma"] for row in plain] == [sigma] * 3
    assert [row["noise_batch_sigma"] for row in linear] == [sigma, sigma / 2, 0.0]
    assert [row["noise_queue_sigma"] for row in linear] == [2 * sigma, sigma, 0.0]
    assert linear[0]["train_loss"] == plain[0]["train_loss"]  # epoch 1 trains at the full sigma
    assert linear[1]["train_loss"] != plain[1]["train_loss"]  # then less noise: another training
    if target == "gps":
        constant = run(small_config, tmp_path, "constant", **noise, schedule={"type": "constant"})
        # A linear schedule that ends where it starts multiplies by exactly 1: the same training.
        level = run(small_config, tmp_path, "level", **noise, schedule={**decaying, "end_factor": 1.0})
        assert constant == plain == level  # every metric, to the last digit
