"""The task seam: what the harness needs from a model family, in one place.

A task is a ``Task`` subclass registered with ``register``; GeoCLIP (``geoloc.tasks.geoclip``) is
the first. The base configuration's ``task`` key selects one (``geoclip`` when it is left out,
so every study file written before the seam keeps working). Everything else, the epoch loop and
seeds in lock-step (``geoloc.run``), ASHA/MOASHA, Optuna records, TensorBoard, the folder
contract, resume (``geoloc.tuning``, ``geoloc.study``) and the generic analysis, reaches a task
through this class only, never a task's own modules.

A task provides:

- ``config``: its run configuration, a pydantic ``TaskConfig`` subclass whose sections are
  documented where declared. It must have ``task`` (a ``Literal`` of its name, first),
  ``train.epochs``, ``train.seed``, ``train.device`` and ``eval.at_start``: the keys the
  harness itself reads (checked at ``register``).
- ``registry(cfg)``: its metric registry (``geoloc.common.metrics``), with ``score`` and the
  time keys ``train_s`` and ``eval_s``.
- ``score_keys``: the configuration keys that define ``score`` (thresholds, weights, evaluation
  sets); a search space may not vary them, or scores would not compare across trials.
- ``prepare(cfg)``: builds and checks its data before any trial starts (the launcher calls it
  once; a trial then only opens what is there); raises ``ConfigError``/``DataError`` naming the
  key or file.
- ``trainer(cfg, gpu_share, shared)``: a ``TaskTrainer`` (one seed's model, optimiser and random
  streams: one epoch, an evaluation, a resumable state). ``shared`` is the first seed's trainer
  when several seeds train in lock-step, so they can share data already loaded.
- ``data_files(cfg)``: every data file a run of ``cfg`` reads (caches, galleries), for the study's
  manifest (``geoloc.study.manifest``); empty by default.
- ``headline``: the registry key the report leads with.
- ``analysis``: the name of its optional analysis section (``analysis/sections/``), or None.

The definitions import neither torch nor Ray (the study file's validation and the analysis load
them); a task's ``trainer`` imports its torch modules when it is called.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

from geoloc.common.metrics import MetricRegistry
from geoloc.common.validation import ConfigError, Section

DEFAULT_TASK = "geoclip"
"""The task of a configuration without a ``task`` key."""

HARNESS_KEYS = ("train.epochs", "train.seed", "train.device", "eval.at_start")
"""Keys of every task's configuration that the harness reads itself."""


class TaskConfig(Section):
    """Base of every task's run configuration: ``task`` names the task, its sections follow."""

    task: str
    """The model family this run trains (``geoloc.tasks``)."""


class TaskTrainer(Protocol):
    """One seed of one run, as the epoch loop (``geoloc.run``) drives it."""

    epoch: int
    """Epochs trained so far (0 before the first)."""
    device: Any
    """The torch device it trains on."""

    def run_epoch(self, progress: bool = False) -> dict[str, float]:
        """Train one epoch and evaluate: ``{"epoch": n, **metrics}``, the keys of the task's registry."""

    def evaluate_at_start(self) -> dict[str, float]:
        """The epoch-0 row (``eval.at_start``): evaluation keys only, drawing from no training stream."""

    def curve_rows(self, epoch: int) -> list[dict]:
        """Rows for ``curves.jsonl`` of the last evaluation (empty when the task records none)."""

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly; holds ``"epoch"``."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``; ``CheckpointMismatch`` for another configuration's state."""


class Task(ABC):
    """A model family the harness can study (see the module docstring)."""

    name: ClassVar[str]
    config: ClassVar[type[TaskConfig]]
    score_keys: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "score"
    analysis: ClassVar[str | None] = None

    @abstractmethod
    def registry(self, cfg: TaskConfig) -> MetricRegistry:
        """The metric registry of a run configuration."""

    @abstractmethod
    def prepare(self, cfg: TaskConfig) -> None:
        """Build and check the run's data before trials start."""

    @abstractmethod
    def trainer(self, cfg: TaskConfig, gpu_share: float = 1.0, shared: TaskTrainer | None = None) -> TaskTrainer:
        """One seed's trainer (see the module docstring)."""

    def data_files(self, cfg: TaskConfig) -> list[Path]:
        """Every data file a run of ``cfg`` reads (see the module docstring); none by default."""
        return []

    def describe(self, cfg: TaskConfig) -> str:
        """What ``--dry-run`` prints about the run's data (one line)."""
        return f"task {self.name}"


_TASKS: dict[str, Task] = {}


def register(task_class: type[Task]) -> type[Task]:
    """Add a task (a class decorator); its configuration's harness keys are checked here, once."""
    default = task_class.config.model_validate({"task": task_class.name})
    for key in HARNESS_KEYS:
        section, field = key.split(".")
        if not hasattr(getattr(default, section, None), field):
            raise TypeError(f"task {task_class.name}: its configuration has no {key}, which the harness reads")
    _TASKS[task_class.name] = task_class()
    return task_class


def task_named(name: Any) -> Task:
    """The registered task of that name; ConfigError naming ``task`` for any other."""
    if name not in _TASKS:
        raise ConfigError(f"task: must be one of {', '.join(_TASKS)}, got {name!r}")
    return _TASKS[name]


def task_of(cfg: TaskConfig) -> Task:
    """The task of a validated run configuration."""
    return task_named(cfg.task)


def tasks() -> Iterator[Task]:
    return iter(_TASKS.values())
