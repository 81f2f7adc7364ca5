import subprocess
import sys

import numpy as np
import pytest
import torch

from geoloc.parts.resumable import DivergenceError
from geoloc.run.loop import train
from geoloc.study.folders import TrialFolder
from geoloc.tasks.geoclip.model import GPSQueue
from geoloc.tasks.geoclip.trainer import Trainer

from .conftest import build


def test_queue_is_a_fifo_of_any_size():
    q = GPSQueue(5)
    assert len(q.contents()) == 0
    q.push(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert sorted(q.contents()[:, 0].tolist()) == [1, 2, 3]
    q.push(torch.tensor([[4.0, 4.0], [5.0, 5.0], [6.0, 6.0]]))  # wraps: oldest (1) leaves
    assert sorted(q.contents()[:, 0].tolist()) == [2, 3, 4, 5, 6]
    q.push(torch.arange(14.0).reshape(7, 2))  # larger than the queue: keeps the last 5
    assert sorted(q.contents()[:, 0].tolist()) == [4, 6, 8, 10, 12]
    empty = GPSQueue(0)
    empty.push(torch.ones(3, 2))
    assert len(empty.contents()) == 0


def test_training_reads_the_rows_the_memory_map_holds(small_config):
    cache = Trainer(build(small_config)).data.train
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(cache), 50, replace=False))
    views = rng.integers(cache.views, size=50)
    rows = cache.read(idx, views)
    assert rows.shape == (50, cache.feature_dim) and rows.dtype == np.float16
    assert np.array_equal(rows, cache.features[idx, views])
    assert not np.array_equal(rows, cache.features[idx, (views + 1) % cache.views])  # the view index counts


def test_learning_is_real(small_config):
    trainer = Trainer(build(small_config))
    gallery = trainer.data.gallery
    val = trainer.data.val["val"].coords
    # what guessing a random gallery point scores
    rng = np.random.default_rng(0)
    from geoloc.geo import haversine_km

    random_guess = np.mean(haversine_km(gallery[rng.integers(len(gallery), size=len(val))], val) <= 2500)
    first = trainer.run_epoch()
    for _ in range(3):
        last = trainer.run_epoch()
    assert last["train_loss"] < first["train_loss"] - 0.5
    assert last["acc_2500km"] > random_guess + 0.3, (last["acc_2500km"], random_guess)
    assert last["acc_2500km"] >= first["acc_2500km"]
    for t in (1, 25, 200, 750, 2500):
        assert last[f"acc_{t}km"] <= last[f"ceiling_{t}km"]


def test_resume_is_exact(small_config, tmp_path):
    straight = train(build(small_config), tmp_path / "straight")

    small_config["train"]["epochs"] = 2
    train(build(small_config), tmp_path / "split")
    small_config["train"]["epochs"] = 4
    seen = []
    resumed = train(
        build(small_config), tmp_path / "split", resume=True, on_epoch=lambda m, ckpt: seen.append(m["epoch"])
    )
    assert resumed == {**straight, "train_s": resumed["train_s"], "eval_s": resumed["eval_s"]}
    assert [m["epoch"] for m in TrialFolder(tmp_path / "split").read_metrics().rows] == [1, 2, 3, 4]
    assert seen == [3, 4]  # the callback (a trial's report to Ray) sees the epochs this call trained


def test_restore_takes_the_newer_checkpoint(small_config, tmp_path):
    """A trial restores from Ray's checkpoint or its own, whichever is further on."""
    small_config["train"]["epochs"] = 1
    train(build(small_config), tmp_path / "old")
    small_config["train"]["epochs"] = 2
    train(build(small_config), tmp_path / "new")
    trainer = Trainer(build(small_config))
    trainer.restore_newest([TrialFolder(tmp_path / "new").checkpoint, TrialFolder(tmp_path / "old").checkpoint, None])
    assert trainer.epoch == 2
    (tmp_path / "torn.pt").write_bytes(b"not a checkpoint")
    fresh = Trainer(build(small_config))
    fresh.restore_newest([tmp_path / "torn.pt", TrialFolder(tmp_path / "old").checkpoint])
    assert fresh.epoch == 1


def test_same_seed_same_metrics_and_other_seed_differs(small_config):
    small_config["train"]["epochs"] = 1
    a = Trainer(build(small_config)).run_epoch()
    b = Trainer(build(small_config)).run_epoch()
    small_config["train"]["seed"] = 1
    c = Trainer(build(small_config)).run_epoch()
    assert a["train_loss"] == b["train_loss"] and a["score"] == b["score"]
    assert a["train_loss"] != c["train_loss"]


@pytest.mark.parametrize("target,sigma", [("gps", 25.0), ("embedding", 0.05)])
def test_noise_changes_training(small_config, target, sigma):
    small_config["train"]["epochs"] = 1
    clean = Trainer(build(small_config)).train_one_epoch()
    small_config["train"]["noise"] = {"target": target, "batch_sigma": sigma, "queue_sigma": sigma}
    noisy = Trainer(build(small_config)).train_one_epoch()
    assert noisy["train_loss"] != clean["train_loss"]


def test_checkpoint_of_another_model_is_refused(small_config, tmp_path):
    trainer = Trainer(build(small_config))
    trainer.save(tmp_path / "c.pt")
    small_config["model"]["hidden_dim"] = 64
    other = Trainer(build(small_config))
    from geoloc.parts.resumable import CheckpointMismatch

    with pytest.raises(CheckpointMismatch, match="refusing"):
        other.load(tmp_path / "c.pt")


def test_divergence_stops_with_a_reason(small_config):
    small_config["train"]["lr"] = 1e6  # Adam at this rate blows the logits up
    small_config["model"]["learn_temperature"] = True
    trainer = Trainer(build(small_config))
    with torch.no_grad():
        trainer.model.image_head[0].weight.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="diverged"):
        trainer.train_one_epoch()


def test_command_line_run_writes_metrics_events_and_checkpoint(small_config, tmp_path):
    import yaml

    small_config["train"]["epochs"] = 1
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_config))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "geoloc.train", str(config), "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert TrialFolder(out).checkpoint.exists()
    assert [m["epoch"] for m in TrialFolder(out).read_metrics().rows] == [1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    assert {"train/loss", "val/loss", "val/acc_1km", "val/score", "temperature", "lr"} <= set(events.Tags()["scalars"])


TIMES = ("train_s", "eval_s")  # wall times differ by run


def without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMES}


def test_seeds_in_lock_step_are_the_single_seed_runs_and_their_mean(small_config, tmp_path):
    """``seeds=2`` trains seeds 5 and 6 side by side: each equals its own single-seed run, the
    trial's row is their mean (times summed), and every seed's curve and events are recorded."""
    small_config["train"]["epochs"] = 1
    small_config["train"]["seed"] = 5
    train(build(small_config), tmp_path / "two", seeds=2)
    folder = TrialFolder(tmp_path / "two")
    per_seed = folder.read_seeds().rows
    assert [(r["epoch"], r["seed"]) for r in per_seed] == [(1, 5), (1, 6)]
    for seed in (5, 6):
        small_config["train"]["seed"] = seed
        single = TrialFolder(tmp_path / f"single{seed}")
        train(build(small_config), single.path)
        assert not (single.path / TrialFolder.SEEDS).exists()  # one seed: metrics.jsonl is its record
        mine = [without_times(r) for r in per_seed if r["seed"] == seed]
        assert mine == [{**without_times(r), "seed": seed} for r in single.read_metrics().rows]
    for row in folder.read_metrics().rows:
        seeds = [r for r in per_seed if r["epoch"] == row["epoch"]]
        assert row["score"] == pytest.approx(np.mean([r["score"] for r in seeds]), abs=1e-15)
        assert row["acc_1km"] == pytest.approx(np.mean([r["acc_1km"] for r in seeds]), abs=1e-15)
        assert row["lr"] == seeds[0]["lr"]
        assert row["train_s"] == pytest.approx(sum(r["train_s"] for r in seeds))
    curves = folder.read_log(TrialFolder.CURVES).rows
    assert [(r["epoch"], r["seed"], r["set"]) for r in curves] == [(1, 5, "val"), (1, 6, "val")]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for seed in (5, 6):
        events = EventAccumulator(str(folder.seed_dir(seed)))
        events.Reload()
        logged = [e.value for e in events.Scalars("val/score")]
        assert logged == pytest.approx([r["score"] for r in per_seed if r["seed"] == seed], rel=1e-6)


def test_seeds_resume_exactly(small_config, tmp_path):
    small_config["train"]["epochs"] = 2
    straight = TrialFolder(tmp_path / "straight")
    train(build(small_config), straight.path, seeds=2)
    small_config["train"]["epochs"] = 1
    split = TrialFolder(tmp_path / "split")
    train(build(small_config), split.path, seeds=2)
    small_config["train"]["epochs"] = 2
    train(build(small_config), split.path, seeds=2, resume=True)
    for log in (TrialFolder.METRICS, TrialFolder.SEEDS, TrialFolder.CURVES):
        assert [without_times(r) for r in split.read_log(log).rows] == [
            without_times(r) for r in straight.read_log(log).rows
        ], log
    from geoloc.parts.resumable import CheckpointMismatch

    with pytest.raises(CheckpointMismatch, match="2 seed"):
        train(build(small_config), split.path, seeds=3, resume=True)


def test_the_fine_error_curve_agrees_with_the_accuracies(small_config, tmp_path):
    small_config["train"]["epochs"] = 1
    small_config["eval"] = {"thresholds_km": [0.5, 25, 2500], "score_weights": [1, 1, 1]}
    folder = TrialFolder(tmp_path / "run")
    train(build(small_config), folder.path)
    (curve,) = folder.read_log(TrialFolder.CURVES).rows
    row = folder.read_metrics().last
    km = np.array(curve["km"])
    assert km[0] == 0.1 and km[-1] == 20_000 and 40 <= len(km) <= 50 and np.all(np.diff(km) > 0)
    for t in (0.5, 25, 2500):
        assert curve["acc"][list(km).index(t)] == row[f"acc_{t:g}km"]
    assert np.all(np.diff(curve["acc"]) >= 0) and curve["acc"][-1] == 1.0  # nothing is farther than 20,000 km
    assert 0 < row["encoder_resolution_km"] <= 5000
