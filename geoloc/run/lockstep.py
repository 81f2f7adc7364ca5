"""Seeds in lock-step: one configuration trained with several seeds, epoch by epoch together."""

from __future__ import annotations

import math
from collections.abc import Callable

from geoloc.parts.resumable import CheckpointMismatch, Resumable
from geoloc.study.config import JobConfig, registry_of, with_seed
from geoloc.study.predictions import epoch_table, set_rows
from geoloc.tasks import TaskTrainer, task_of


class LockStep(Resumable):
    """One configuration trained with several seeds (``train.seed``, ``train.seed + 1``, ...) epoch by
    epoch together, each its task's trainer (``geoloc.tasks.seam.TaskTrainer``) on the same data: what a
    trial with ``search.seeds`` > 1 runs.

    Its epoch row is the mean over the seeds of every metric (the time keys are summed: the
    epoch took that long); one seed's row is that seed's own, and its checkpoint is that
    trainer's, so ``seeds=1`` is exactly a single run.
    """

    def __init__(self, cfg: JobConfig, seeds: int = 1, gpu_share: float = 1.0):
        task = task_of(cfg)
        self.seeds = [cfg.train.seed + i for i in range(seeds)]
        first = task.trainer(with_seed(cfg, self.seeds[0]), gpu_share)
        self.trainers = [first] + [task.trainer(with_seed(cfg, s), gpu_share, first) for s in self.seeds[1:]]
        self.registry = registry_of(cfg)

    @property
    def epoch(self) -> int:
        return self.trainers[0].epoch

    def run_epoch(self, progress: bool = False) -> tuple[dict, list[dict], list[dict]]:
        """One epoch of every seed: (the mean row, each seed's row in ``self.seeds`` order, the curves' rows)."""
        return self._each(lambda trainer: trainer.run_epoch(progress))

    def evaluate_at_start(self) -> tuple[dict, list[dict], list[dict]]:
        """Every seed's epoch-0 row (``TaskTrainer.evaluate_at_start``), in the shape of ``run_epoch``."""
        return self._each(lambda trainer: trainer.evaluate_at_start())

    def _each(self, step: Callable[[TaskTrainer], dict]) -> tuple[dict, list[dict], list[dict]]:
        rows, curves = [], []
        for trainer in self.trainers:
            rows.append(step(trainer))
            curves += trainer.curve_rows(trainer.epoch)
        mean = {key: self._combine(key, [row[key] for row in rows]) for key in rows[0]}
        return mean, rows, curves

    def _combine(self, key: str, values: list[float]) -> float:
        metric = self.registry.get(key)
        if metric is not None and metric.kind == "time":
            return math.fsum(values)
        if all(v == values[0] for v in values):  # epoch, lr, one seed: exactly the value, not a rounded mean
            return values[0]
        return math.fsum(values) / len(values)

    def predictions(self) -> tuple[dict, list[str]] | None:
        """The last evaluation's per-image predictions of every seed as one table
        (``geoloc.study.predictions.epoch_table``); None when the task keeps none (no ``prediction_rows``)."""
        per_seed = []
        for seed, trainer in zip(self.seeds, self.trainers, strict=True):
            rows = getattr(trainer, "prediction_rows", None)
            sets = rows() if rows else {}
            if sets:
                per_seed.append((seed, {name: set_rows(*arrays) for name, arrays in sets.items()}))
        return epoch_table(per_seed) if per_seed else None

    def state_dict(self) -> dict:
        if len(self.trainers) == 1:
            return self.trainers[0].state_dict()
        return {"epoch": self.epoch, "seeds": [t.state_dict() for t in self.trainers]}

    def load_state_dict(self, state: dict) -> None:
        if len(self.trainers) == 1:
            self.trainers[0].load_state_dict(state)
            return
        saved = state.get("seeds") or []
        if len(saved) != len(self.trainers):
            raise CheckpointMismatch(
                f"checkpoint holds {len(saved) or 1} seed(s), this run trains {len(self.trainers)}; refusing to load it"
            )
        for trainer, seed_state in zip(self.trainers, saved, strict=True):
            trainer.load_state_dict(seed_state)
