"""The metric record and registry: every key a run reports, with its direction, unit and TensorBoard tag.

A task builds its run's registry (``geoloc.tasks.Task.registry``; GeoCLIP's in
``geoloc/tasks/geoclip/metrics.py``); the launcher stores it in the study folder
(``metrics.json``, ``geoloc.study.folders``) and everything after it (the analysis, the summary)
reads it from there, so no reader parses metric names back. TensorBoard scalars and HParams,
Ray's progress table, the launcher's summary and the analysis all take keys, tags and directions
from here. Every task's registry has ``score`` (kind "score", maximised: what ASHA and Optuna see)
and the time keys ``train_s`` and ``eval_s``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from geoloc.common.atomic import write_json

Kind = Literal["loss", "accuracy", "recall", "score", "points", "region", "distance", "ceiling", "train", "time"]
"""What a metric is. ``accuracy``: the share within a distance threshold (``threshold_km``); ``recall``: a
retrieval's share of queries whose true match ranks among the top k (no threshold); ``points``: a score on a
fixed scale of its own, neither a share nor a distance (GeoScore, 0..5000), maximised like an accuracy but not
one (no point of the error curve, not part of ``score``); ``region``: the share of images whose prediction lies
in their own country or continent (no threshold)."""


def accuracy_key(threshold_km: float) -> str:
    """``acc_1km``, ``acc_2500km``, ``acc_0.5km``: the metric key of one threshold."""
    return f"acc_{threshold_km:g}km"


def ceiling_key(threshold_km: float) -> str:
    """``ceiling_1km``: the share of images with any gallery point within the threshold."""
    return f"ceiling_{threshold_km:g}km"


@dataclass(frozen=True)
class Metric:
    key: str  # as in metrics.jsonl
    kind: Kind
    direction: Literal["max", "min"] | None  # which way is better; None where "best" means nothing
    fraction: bool  # a share in 0..1 (shown in percent)
    tag: str  # TensorBoard tag
    hparam: bool = False  # listed as a metric of TensorBoard's HParams session
    threshold_km: float | None = None  # for accuracies and ceilings
    eval_set: str | None = None  # the evaluation set's name; None for training metrics
    primary: bool = False  # of the first evaluation set (the one ``score`` and the scheduler use)


@dataclass(frozen=True)
class MetricRegistry:
    metrics: tuple[Metric, ...]

    # -- lookups ---------------------------------------------------------------------------------

    def __iter__(self):
        return iter(self.metrics)

    def __contains__(self, key: str) -> bool:
        return any(m.key == key for m in self.metrics)

    def get(self, key: str) -> Metric | None:
        return next((m for m in self.metrics if m.key == key), None)

    def direction(self, key: str) -> str | None:
        metric = self.get(key)
        return metric.direction if metric else None

    def fraction(self, key: str) -> bool:
        """True for a share in 0..1 (shown in percent); False for any other key, known or not."""
        metric = self.get(key)
        return bool(metric and metric.fraction)

    def tag(self, key: str) -> str:
        """The TensorBoard tag; a key the registry does not know is logged under ``other/``."""
        metric = self.get(key)
        return metric.tag if metric else f"other/{key}"

    def accuracies(self, eval_set: str | None = None) -> list[str]:
        """Accuracy keys of one evaluation set (default: the primary one), finest threshold first."""
        return [m.key for m in self.metrics if m.kind == "accuracy" and self._of(m, eval_set)]

    def ceilings(self, eval_set: str | None = None) -> list[str]:
        return [m.key for m in self.metrics if m.kind == "ceiling" and self._of(m, eval_set)]

    def hparam_tags(self) -> list[str]:
        """Tags of the metrics TensorBoard's HParams tab lists for every trial."""
        return [m.tag for m in self.metrics if m.hparam]

    def progress_columns(self) -> list[str]:
        """Ray's live trial table: the score, the finest and coarsest accuracy (where the task has
        accuracies) and the primary evaluation loss (where it has one)."""
        accs = self.accuracies()
        losses = [m.key for m in self.metrics if m.kind == "loss" and m.primary][:1]
        return ["epoch", "score", *dict.fromkeys(accs[:1] + accs[-1:]), *losses]

    def headline(self) -> list[str]:
        """The primary evaluation's metrics that have a direction, score last: a trial's result in one line."""
        keys = [m.key for m in self.metrics if m.primary and m.direction and m.key != "score"]
        return [*keys, "score"]

    @staticmethod
    def _of(metric: Metric, eval_set: str | None) -> bool:
        return metric.primary if eval_set is None else metric.eval_set == eval_set

    # -- the study folder's copy -----------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        write_json(path, [asdict(m) for m in self.metrics])

    @classmethod
    def load(cls, path: str | Path) -> MetricRegistry:
        """Raises OSError or ValueError when the file is missing or not a registry."""
        return cls(tuple(Metric(**entry) for entry in json.loads(Path(path).read_text(encoding="utf-8"))))
