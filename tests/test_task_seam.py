"""The task seam: a toy task, written here in a few lines (a linear model on random data, one metric),
runs a two-trial study through the launcher, Ray, Optuna, TensorBoard and the analysis, none of which
knows it; and the study definition refuses what would make ``score`` incomparable."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Literal

import pytest
import torch
import yaml
from pydantic import Field, StrictBool, StrictInt

from geoloc.common.metrics import Metric, MetricRegistry
from geoloc.common.validation import ConfigError, Float, Section
from geoloc.study.config import parse_job
from geoloc.study.folders import StudyFolder
from geoloc.study.studyfile import StudyConfig, load_study_file
from geoloc.tasks import Task, TaskConfig, register, task_of

from .studyutil import ROOT

pytestmark = pytest.mark.slow


class ToyTrain(Section):
    epochs: StrictInt = 3
    seed: StrictInt = 0
    device: Literal["cpu"] = "cpu"
    lr: Float = Field(0.05, gt=0)


class ToyEval(Section):
    at_start: StrictBool = False


class ToyConfig(TaskConfig):
    task: Literal["toy"] = "toy"
    train: ToyTrain = Field(default_factory=ToyTrain)
    eval: ToyEval = Field(default_factory=ToyEval)


class ToyTrainer:
    """y = X w + noise; one full-batch gradient step per epoch; score = 1 / (1 + validation MSE)."""

    device = torch.device("cpu")

    def __init__(self, cfg: ToyConfig):
        data = torch.Generator().manual_seed(123)  # the same data for every seed
        self.x, self.w_true = torch.randn(256, 8, generator=data), torch.randn(8, 1, generator=data)
        self.y = self.x @ self.w_true + 0.1 * torch.randn(256, 1, generator=data)
        self.w = torch.randn(8, 1, generator=torch.Generator().manual_seed(cfg.train.seed))
        self.lr, self.epoch = cfg.train.lr, 0

    def _mse(self, rows: slice) -> torch.Tensor:
        return ((self.x[rows] @ self.w - self.y[rows]) ** 2).mean()

    def evaluate_at_start(self) -> dict:
        return {"epoch": self.epoch, **self._evaluate()}

    def _evaluate(self) -> dict:
        loss = self._mse(slice(192, None)).item()
        return {"val_loss": loss, "score": 1 / (1 + loss), "eval_s": 0.0}

    def run_epoch(self, progress: bool = False) -> dict:
        rows = slice(0, 192)
        grad = 2 * self.x[rows].T @ (self.x[rows] @ self.w - self.y[rows]) / 192
        loss = self._mse(rows).item()
        self.w = self.w - self.lr * grad
        self.epoch += 1
        return {"epoch": self.epoch, "train_loss": loss, "train_s": 0.0, **self._evaluate()}

    def curve_rows(self, epoch: int) -> list[dict]:
        return []

    def state_dict(self) -> dict:
        return {"w": self.w, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.w, self.epoch = state["w"], state["epoch"]


@register
class ToyTask(Task):
    name = "toy"
    config = ToyConfig
    score_keys = ("train.epochs",)  # not a real rule: lets the test below see the refusal

    def registry(self, cfg: ToyConfig) -> MetricRegistry:
        return MetricRegistry(
            (
                Metric("train_loss", "loss", "min", False, "train/loss", hparam=True),
                Metric("train_s", "time", None, False, "time/train_s"),
                Metric("eval_s", "time", None, False, "time/eval_s"),
                Metric("val_loss", "loss", "min", False, "val/loss", True, None, "val", True),
                Metric("score", "score", "max", True, "val/score", True, None, "val", True),
            )
        )

    def prepare(self, cfg: ToyConfig) -> None:
        pass

    def trainer(self, cfg: ToyConfig, gpu_share: float = 1.0, shared=None) -> ToyTrainer:
        return ToyTrainer(cfg)


def toy_study(tmp_path, **search) -> dict:
    return {
        "name": "toy",
        "storage": str(tmp_path / "results"),
        "base": {"task": "toy", "train": {"epochs": 3}},
        "search_space": {"train.lr": {"type": "choice", "values": [0.01, 0.1]}},
        "search": {"algorithm": "grid", "max_concurrent": 2, **search},
        "scheduler": {"type": "none"},
        "resources": {"cpu": 1},
    }


def test_the_task_key_selects_the_configuration_and_geoclip_is_the_default():
    assert type(parse_job({"task": "toy"})) is ToyConfig
    assert task_of(parse_job({})).name == "geoclip"
    with pytest.raises(ConfigError, match=r"^task: must be one of .*geoclip.*toy.*, got 'nope'"):
        parse_job({"task": "nope"})
    with pytest.raises(ConfigError, match=r"^train.lr: must be > 0"):
        parse_job({"task": "toy", "train": {"lr": 0}})
    with pytest.raises(ConfigError, match=r"^model: unknown key"):
        parse_job({"task": "toy", "model": {}})


def test_keys_that_define_the_score_are_refused_in_the_search_space(tmp_path, capsys):
    import tune_main

    study = toy_study(tmp_path)
    study["search_space"]["train.epochs"] = {"type": "choice", "values": [2, 3]}
    with pytest.raises(ConfigError, match=r"^search_space.train.epochs: defines score \(train.epochs\)"):
        load(tmp_path / "toy.yaml", study)
    for key, values in [("eval.score_weights", [[1, 1, 1, 1, 1]]), ("eval.thresholds_km", [[1, 25]]), ("data.val", [])]:
        geoclip = {"name": "g", "search_space": {key: {"type": "choice", "values": values or [["offline"]]}}}
        path = tmp_path / "g.yaml"
        path.write_text(yaml.safe_dump(geoclip))
        assert tune_main.main([str(path), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{path}: search_space.{key}: defines score" in err[0], err


def load(path, study: dict) -> StudyConfig:
    path.write_text(yaml.safe_dump(study))
    return load_study_file(path)


def test_a_toy_task_runs_a_study_through_ray_and_the_analysis(tmp_path, shared_ray):
    """Two grid trials of the toy task, end to end: a launcher whose script imports this module first (as a
    user's script registers a task of their own), then runs ``tune_main``; the Ray workers import this
    module too, to unpickle the toy configuration, which registers the task there."""
    study_file = tmp_path / "toy.yaml"
    study_file.write_text(yaml.safe_dump(toy_study(tmp_path)))
    script = "import sys, tests.test_task_seam, tune_main; sys.exit(tune_main.main(sys.argv[1:]))"
    env = {**os.environ, **shared_ray.env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(study_file), "--address", shared_ray.address],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    folder = StudyFolder(tmp_path / "results" / "toy")
    trials = folder.trials()
    assert len(trials) == 2
    finals = {}
    for trial in trials:
        rows = trial.read_metrics().rows
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        lr = trial.read_trial()["params"]["train.lr"]
        # The known answer: the toy's own trainer, run here without Ray, gives the same scores.
        reference = ToyTrainer(parse_job({"task": "toy", "train": {"lr": lr}}))
        expected = [reference.run_epoch()["score"] for _ in range(3)]
        assert [r["score"] for r in rows] == pytest.approx(expected, rel=1e-12)
        finals[lr] = rows[-1]["score"]
    assert finals[0.1] > finals[0.01]  # the larger step gets closer in three epochs
    assert "best trial" in out and "score=" in out
    assert MetricRegistry.load(folder.path / folder.REGISTRY).headline() == ["val_loss", "score"]
    report = (folder.path / folder.ANALYSIS / "report.md").read_text()
    assert "score" in report
