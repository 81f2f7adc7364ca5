"""The cross-view task (Sample4Geo) end to end on the CPU: its configuration, a cached run that learns,
an end-to-end run with a tiny timm architecture that resumes exactly, and the weights file refused
with exit 2."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from geoloc.common.validation import ConfigError
from geoloc.run.loop import train
from geoloc.study.config import parse_job, registry_of
from geoloc.study.folders import StudyFolder, TrialFolder
from geoloc.tasks import task_of

TIMES = ("train_s", "eval_s")
TINY = {
    "task": "cross_view",
    "data": {"layout": "offline", "offline": {"n_train": 1000, "n_val": 100}, "views": 2},
    "model": {
        "backbone": {"name": "test_convnext", "weights": None, "trainable": False},
        "query_size": [32, 128],
        "reference_size": [32, 32],
        "head_dim": 64,
    },
    "train": {"epochs": 4, "batch_size": 32, "lr": 3e-3, "device": "cpu", "threads": 1},
    "eval": {"at_start": True},
}


@pytest.fixture
def tiny(tmp_path_factory) -> dict:
    cfg = copy.deepcopy(TINY)
    root = tmp_path_factory.getbasetemp() / "crossview"  # one benchmark and one feature cache for the whole session
    cfg["data"]["offline"]["root"] = str(root / "offline")
    cfg["data"]["cache_root"] = str(root / "cache")
    return cfg


def without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMES}


def test_configuration_and_registry():
    cfg = parse_job({"task": "cross_view"})
    assert cfg.cached is False and cfg.train.batch_size == 128 and cfg.train.loss.label_smoothing == 0.1
    keys = [m.key for m in registry_of(cfg)]
    assert {"recall_1", "recall_5", "recall_10", "recall_top1pct", "val_loss", "median_km", "acc_1km", "score"} <= set(
        keys
    )
    assert "hit_rate" not in keys
    vigor = parse_job({"task": "cross_view", "data": {"layout": "vigor", "root": "/x"}, "eval": {"recall_at": [1]}})
    assert "hit_rate" in [m.key for m in registry_of(vigor)] and "recall_5" not in [m.key for m in registry_of(vigor)]
    with pytest.raises(ConfigError, match=r"^eval.score_weights: 'hit_rate' is not a metric of this run"):
        parse_job({"task": "cross_view", "eval": {"score_weights": {"hit_rate": 1.0}}})
    with pytest.raises(ConfigError, match=r"^data.root: the folder of the cvusa data set is required"):
        parse_job({"task": "cross_view", "data": {"layout": "cvusa"}})


def test_cached_mode_learns_in_every_seed(tiny, tmp_path):
    """Three seeds in lock-step on the offline benchmark: each beats its own epoch-0 Recall@1 clearly."""
    cfg = parse_job(tiny)
    train(cfg, tmp_path / "run", seeds=3)
    rows = TrialFolder(tmp_path / "run").read_seeds().rows
    for seed in (0, 1, 2):
        start = next(r for r in rows if r["seed"] == seed and r["epoch"] == 0)
        last = next(r for r in rows if r["seed"] == seed and r["epoch"] == 4)
        chance = 1 / tiny["data"]["offline"]["n_val"]
        assert last["recall_1"] >= start["recall_1"] + 0.08, (seed, start["recall_1"], last["recall_1"])
        assert last["recall_1"] > 10 * chance
        assert last["recall_top1pct"] >= last["recall_1"] and last["recall_10"] >= last["recall_5"] >= last["recall_1"]
    files = task_of(cfg).data_files(cfg)  # what the study's manifest hashes: the splits, coordinates and caches
    assert all(f.is_file() for f in files) and len(files) == 3 + 2 * 2 * 3
    assert {f.name for f in files} >= {"train-19zl.csv", "val-19zl.csv", "all.csv", "features.npy"}


def end_to_end(tiny: dict, epochs: int) -> dict:
    cfg = copy.deepcopy(tiny)
    cfg["data"]["offline"] = {**cfg["data"]["offline"], "n_train": 64, "n_val": 32}
    cfg["model"]["backbone"]["trainable"] = True
    cfg["train"].update(epochs=epochs, batch_size=16)
    cfg["eval"]["at_start"] = False
    return cfg


def test_end_to_end_runs_and_resumes_exactly(tiny, tmp_path):
    straight = train(parse_job(end_to_end(tiny, 2)), tmp_path / "straight")
    train(parse_job(end_to_end(tiny, 1)), tmp_path / "split")
    resumed = train(parse_job(end_to_end(tiny, 2)), tmp_path / "split", resume=True)
    assert without_times(resumed) == without_times(straight)
    assert straight["epoch"] == 2 and 0 < straight["train_loss"] < 10
    # Gradient checkpointing recomputes the same forward in the backward: the same run, to the last digit.
    checkpointed = end_to_end(tiny, 2)
    checkpointed["model"]["backbone"]["grad_checkpointing"] = True
    assert without_times(train(parse_job(checkpointed), tmp_path / "checkpointed")) == without_times(straight)


def run_cli(cfg: dict, tmp_path, capsys) -> tuple[int, str]:
    """``python -m geoloc.train`` on ``cfg`` (its ``main``, in this process): exit status and stderr."""
    from geoloc.train import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    status = main([str(path), "--out", str(tmp_path / "out")])
    return status, capsys.readouterr().err


def test_a_weights_file_that_is_missing_or_does_not_fit_exits_2(tiny, tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    cfg = end_to_end(tiny, 1)
    cfg["model"]["backbone"]["weights"] = str(tmp_path / "missing.safetensors")
    status, err = run_cli(cfg, tmp_path, capsys)
    assert status == 2 and "model.backbone.weights" in err and len(err.strip().splitlines()) == 1, err

    other = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(other))
    cfg["model"]["backbone"]["weights"] = str(other)
    status, err = run_cli(cfg, tmp_path, capsys)
    assert status == 2 and f"model.backbone.weights: {other} does not fit test_convnext" in err, err

    fits = tmp_path / "convnext.safetensors"
    torch.manual_seed(5)
    published = timm.create_model("test_convnext", pretrained=False)  # with its classifier, as files ship
    save_file(published.state_dict(), str(fits))
    from geoloc.tasks.cross_view.config import BackboneConfig
    from geoloc.tasks.cross_view.model import create_backbone

    loaded = create_backbone(BackboneConfig(name="test_convnext", weights=str(fits)))
    assert torch.equal(loaded.stem[0].weight, published.stem[0].weight)


@pytest.mark.slow
def test_a_cross_view_study_runs_through_the_launcher_like_a_geoclip_one(tiny, tmp_path, shared_ray):
    """Two grid trials (random and GPS-neighbour batches), two seeds in lock-step each, ASHA, through the
    launcher on a real Ray instance: each trial's metrics equal the same configuration run directly (the
    known answer), Optuna holds the scores, TensorBoard the recall scalars and HParams, and the analysis
    leads with recall_1."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from .studyutil import optuna_trials, tune_main

    base = copy.deepcopy(tiny)
    base["train"].update(epochs=2, batches={"neighbours": 7, "draw": 8, "range": 32})
    study = {
        "name": "cv",
        "storage": str(tmp_path / "results"),
        "base": base,
        "search_space": {"train.batches.type": {"type": "choice", "values": ["random", "gps_neighbours"]}},
        "search": {"algorithm": "grid", "seeds": 2, "max_concurrent": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1},
    }
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(study))
    done = tune_main(path, "--address", shared_ray.address, env=shared_ray.env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = StudyFolder(tmp_path / "results" / "cv")
    scores = {}
    for trial in folder.trials():
        rows = trial.read_metrics().rows
        kind = trial.read_trial()["params"]["train.batches.type"]
        direct = copy.deepcopy(base)
        direct["train"]["batches"]["type"] = kind
        train(parse_job(direct), tmp_path / f"direct-{kind}", seeds=2)
        # ASHA may stop a trial at its rung: compare the epochs it ran with the same epochs of the direct run.
        expected = {r["epoch"]: without_times(r) for r in TrialFolder(tmp_path / f"direct-{kind}").read_metrics().rows}
        for row in rows:
            want = expected[row["epoch"]]
            assert {k: row[k] for k in want} == pytest.approx(want, rel=1e-12), (kind, row["epoch"])
        scores[rows[-1]["score"]] = kind
        events = EventAccumulator(str(trial.events_dir() / "seed_0")).Reload()
        assert "val/recall_1" in events.Tags()["scalars"]
    assert sorted(t.values[0] for t in optuna_trials(folder.path, "cv")) == sorted(scores)
    report = (folder.path / folder.ANALYSIS / "report.md").read_text()
    assert "recall_1" in report.split("## Trials")[0]
