"""A Pareto study's own result: the front it found, and how many epochs it took to find it.

A study file with ``objective: {type: pareto, metrics: [acc_1km, acc_2500km]}`` searches for the
trials that no other trial beats on every one of those metrics, rather than for the best score;
the directions come from the metric registry. The study file records the objective; a study with
``type: score`` (the default, also of an older folder without ``objective``) is a score study and
gets none of this.

- The front found: every finished trial that ran the study's full epoch budget
  (``budget.full_epochs``: base.train.epochs), with its values at that epoch, and among them the
  Pareto set. Trials that ASHA stopped earlier are left out: their values are of fewer epochs,
  and a trial with a great first epoch would otherwise sit on the front without ever having been
  trained as long as the others.
- The hypervolume of that front against the epochs spent: trials in Optuna trial-number order;
  after the first k, the epochs spent are the sum of the epochs those k trials ran (stopped,
  errored and running ones included: all of them cost compute), and the hypervolume is that of
  the full-budget trials among them. A search that reaches a front with fewer epochs is cheaper.
- The reference point (`reference_point`, the one rule, for the analysis and the benchmarks): for
  a fraction metric (accuracies, score: 0..1) its worst possible value, 0 when maximised and 1
  when minimised; for any other metric (a loss, a distance) the worst value among the points.
  Only the first is a fixed bound: hypervolumes of different studies are comparable only when
  every objective is a fraction, since otherwise each study sets its own bound. A point at the
  observed worst value of such a metric adds no volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from geoloc.common.metrics import MetricRegistry
from geoloc.study.sections import ObjectiveConfig
from geoloc.tuning import pareto as pareto_helpers

from .budget import full_epochs, trials_at
from .load import Study

HISTORY_COLUMNS = ["k", "number", "epochs_spent", "hypervolume"]


@dataclass
class Objective:
    metrics: list[str]  # registry keys with a direction, in the study file's order
    maximise: list[bool]  # one flag per metric, from the registry

    def describe(self) -> str:
        """The objective in words: "max acc_1km, max acc_2500km"."""
        return ", ".join(f"{'max' if up else 'min'} {m}" for m, up in zip(self.metrics, self.maximise, strict=True))


@dataclass
class Front:
    """The front a Pareto study found (module docstring)."""

    objective: Objective
    epochs: int  # the full budget: trials that ran it are compared, at that epoch
    # The full-budget trials with a value of every objective: number, trial_id, the objective metrics,
    # the varied hyperparameters, and on_front (in the Pareto set), in trial-number order.
    trials: pd.DataFrame
    reference: np.ndarray | None  # None while no trial ran the full budget (no point to bound)
    history: pd.DataFrame  # HISTORY_COLUMNS: one row per trial, in trial-number order

    def pareto_set(self) -> pd.DataFrame:
        """The trials on the front, best first by the first objective, without the on_front flag."""
        first, up = self.objective.metrics[0], self.objective.maximise[0]
        on = self.trials[self.trials["on_front"]].drop(columns="on_front")
        return on.sort_values(first, ascending=not up, kind="stable").reset_index(drop=True)

    @property
    def hypervolume(self) -> float:
        return float(self.history["hypervolume"].iloc[-1]) if len(self.history) else 0.0

    @property
    def epochs_spent(self) -> int:
        return int(self.history["epochs_spent"].iloc[-1]) if len(self.history) else 0


def reference_point(registry: MetricRegistry, metrics: Sequence[str], values: ArrayLike) -> np.ndarray:
    """The worst corner a hypervolume counts from, one number per metric (the module's rule).

    values: the points, (n, len(metrics)), one column per metric; NaN is ignored. A metric
    without a direction has no worst value: ValueError. NaN where a non-fraction metric has no
    value among the points.
    """
    points = np.asarray(values, dtype=float).reshape(-1, len(metrics))
    corner = []
    for column, metric in zip(points.T, metrics, strict=True):
        direction = registry.direction(metric)
        if direction is None:
            raise ValueError(f"{metric}: no direction in the metric registry, so no worst value")
        if registry.fraction(metric):
            corner.append(0.0 if direction == "max" else 1.0)
            continue
        seen = column[~np.isnan(column)]
        corner.append(float(seen.min() if direction == "max" else seen.max()) if len(seen) else math.nan)
    return np.array(corner)


def objective(study: Study) -> tuple[Objective | None, list[str]]:
    """The study file's Pareto objective (None for a score study, or without a study file) and
    warnings about metrics left out of it (`usable`)."""
    if study.config is None:
        return None, []
    return usable(study.config.objective, study.registry, study.metrics)


def usable(goal: ObjectiveConfig, registry: MetricRegistry, reported: list[str]) -> tuple[Objective | None, list[str]]:
    """A study file's objective as an `Objective` of the metrics that the study's registry gives a
    direction and that the trials ``reported``, and warnings about the others (the study file was
    checked against the registry its base implies, which an older metrics.json may not match)."""
    if goal.type != "pareto":
        return None, []
    named = list(goal.metrics)
    kept = [m for m in named if registry.direction(m) and m in reported]
    warnings = []
    if len(kept) < len(named):
        left = ", ".join(m for m in named if m not in kept)
        warnings.append(
            f"warning: pareto objective: {left} left out (not a metric with a direction that the trials reported)"
        )
    if not kept:
        warnings.append("warning: pareto objective: no usable metric; no front or hypervolume")
        return None, warnings
    return Objective(kept, [registry.direction(m) == "max" for m in kept]), warnings


def front(study: Study, goal: Objective | None = None) -> tuple[Front | None, list[str]]:
    """The front of a Pareto study and its hypervolume history (None for a score study), and warnings.
    ``goal`` asks for the front of other objectives, of any study (the benchmarks compare score studies)."""
    warnings = []
    if goal is None:
        goal, warnings = objective(study)
    if goal is None:
        return None, warnings
    metrics = goal.metrics
    epochs = full_epochs(study)
    full = trials_at(study, epochs)
    complete = full.dropna(subset=metrics)
    if len(complete) < len(full):
        warnings.append(
            f"warning: pareto objective: {len(full) - len(complete)} trial(s) that ran {epochs} epochs lack a "
            f"value of {', '.join(metrics)} there and are left out of the front"
        )
    points = complete[metrics].to_numpy(float)
    trials = complete[["number", "trial_id", *metrics, *study.varied]].reset_index(drop=True)
    trials["on_front"] = pareto_helpers.pareto_mask(points, goal.maximise)
    reference = reference_point(study.registry, metrics, points) if len(points) else None
    history = _history(study, trials, goal, reference)
    return Front(goal, epochs, trials, reference, history), warnings


def _history(study: Study, full: pd.DataFrame, goal: Objective, reference) -> pd.DataFrame:
    """HISTORY_COLUMNS after each of the study's trials, in trial-number order (``study.trials``'
    order: numberless hand-made trials last)."""
    order = study.trials
    spent = pd.to_numeric(order["epochs"], errors="coerce").fillna(0).astype(int).cumsum()
    joined = order["trial_id"].isin(set(full["trial_id"]))
    volumes = [0.0]  # before the first full-budget trial: nothing dominated
    if reference is not None:
        points = full.set_index("trial_id").loc[order.loc[joined, "trial_id"], goal.metrics].to_numpy(float)
        volumes += list(pareto_helpers.hypervolume_history(points, goal.maximise, reference))
    return pd.DataFrame(
        {
            "k": range(1, len(order) + 1),
            "number": order["number"].to_numpy(),
            "epochs_spent": spent.to_numpy(),
            "hypervolume": [volumes[n] for n in joined.cumsum()],
        },
        columns=HISTORY_COLUMNS,
    )
