"""MOASHA: asynchronous successive halving that promotes trials by non-dominated rank, as a Ray Tune scheduler.

Optuna samples multi-objective studies but cannot prune them, and Ray's schedulers take a single
metric; Syne Tune's MOASHA (Schmucker et al. 2021) is the multi-objective ASHA, and this is it on
Ray Tune's scheduler interface, so a Pareto study stops its poor trials early as an ASHA study does.

The bookkeeping is Ray's ASHA (``ray.tune.schedulers.async_hyperband``) with one bracket:

- Rungs at ``grace_period * reduction_factor**k`` for ``k < int(log(max_t / grace_period) /
  log(reduction_factor) + 1)``, Ray's formula; so the last rung is ``max_t`` itself when ``max_t`` is
  such a milestone (float rounding permitting, as in Ray: max_t 1000, factor 10 gives 1, 10, 100).
- A result whose ``time_attr`` has reached a rung the trial has not recorded yet (the highest such
  rung) records the trial's objective vector there and decides: CONTINUE when the trial is among
  ``geoloc.tuning.pareto.promoted`` of everything the rung holds, its own vector included, else STOP. The
  decision is asynchronous: made with what the rung holds when the trial arrives, never revised.
- A result at or past ``max_t`` is STOP (the trial is done); the final result, given to
  ``on_trial_complete``, is recorded at the rung it reaches, as Ray's ASHA records it.
- A result without ``time_attr`` or one of the objectives decides nothing (CONTINUE), as in Ray.
- Removed and errored trials keep what they recorded; Ray's ASHA forgets only their bracket, and
  there is one here.

Where it differs from Ray's ASHA, with one objective: the arrival is ranked within the rung including
itself (as Syne Tune's MOASHA does) rather than compared with the percentile of the rung before it,
so the boundary can fall one place apart (rung 1, 3, arrival 1.5, factor 2: Ray's cut of {1, 3} is 2,
STOP; here 1.5 is second of three and two are kept, CONTINUE). A tie goes to the earlier arrival,
where Ray lets an arrival equal to the cut continue. An objective vector with a NaN ranks behind
every complete one (``geoloc.tuning.pareto``), so the trial stops unless it is the first at its rung;
Ray's ASHA, whose ``nan < cutoff`` is False, lets such a trial continue.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from geoloc.tuning.pareto import pareto_mask, promoted

logger = logging.getLogger(__name__)


@dataclass
class Rung:
    milestone: float  # in units of the scheduler's time_attr
    results: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """trial_id -> the objective vector it arrived with, in the order of ``metrics``; in arrival order."""


class MOASHAScheduler(FIFOScheduler):
    """Multi-objective ASHA with one bracket (see the module's docstring for the rule).

    ``metrics`` maps each objective's result key to "max" or "min"; one objective is allowed (then it
    is successive halving on that metric). Tune's own ``metric``/``mode`` (the Tuner's bookkeeping,
    e.g. "score") are accepted and leave the objectives alone.
    """

    def __init__(
        self,
        metrics: Mapping[str, str],
        time_attr: str = "epoch",
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 4,
    ):
        if not metrics:
            raise ValueError("MOASHA needs at least one objective in metrics")
        if bad := {key: mode for key, mode in metrics.items() if mode not in ("max", "min")}:
            raise ValueError(f"each objective's mode must be 'max' or 'min', got {bad}")
        if not 0 < grace_period <= max_t:
            raise ValueError(f"need 0 < grace_period <= max_t, got grace_period={grace_period}, max_t={max_t}")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        super().__init__()
        self.metrics = dict(metrics)
        self.time_attr = time_attr
        self.max_t = max_t
        self.reduction_factor = reduction_factor
        self.maximise = [mode == "max" for mode in self.metrics.values()]
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)  # Ray's _Bracket, s = 0
        self.rungs = [Rung(grace_period * reduction_factor**k) for k in range(count)]
        self.num_stopped = 0
        self._warned_missing = False

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # Tune's single metric is its own; the objectives were given to the constructor

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        vector = self._vector(result)
        if vector is None:
            return TrialScheduler.CONTINUE
        if result[self.time_attr] >= self.max_t:
            decision = TrialScheduler.STOP
        else:
            decision = self._arrive(trial.trial_id, result[self.time_attr], vector)
        if decision == TrialScheduler.STOP:
            self.num_stopped += 1
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        vector = self._vector(result)
        if vector is not None:
            self._arrive(trial.trial_id, result[self.time_attr], vector)

    def _vector(self, result: dict) -> tuple[float, ...] | None:
        """The result's objective vector (None as NaN), or None when it lacks time_attr or an objective."""
        if self.time_attr not in result:
            return None
        if missing := [key for key in self.metrics if key not in result]:
            if not self._warned_missing:  # a misspelt objective would otherwise silently turn MOASHA into FIFO
                logger.warning("MOASHA: a result lacks objectives %s; such results decide nothing", missing)
                self._warned_missing = True
            return None
        return tuple(math.nan if result[key] is None else float(result[key]) for key in self.metrics)

    def _arrive(self, trial_id: str, now: float, vector: tuple[float, ...]) -> str:
        for rung in reversed(self.rungs):  # the highest rung reached and not yet recorded, as Ray's _Bracket
            if now < rung.milestone or trial_id in rung.results:
                continue
            rung.results[trial_id] = vector
            keep = promoted(list(rung.results.values()), self.maximise, self.reduction_factor)
            return TrialScheduler.CONTINUE if keep[-1] else TrialScheduler.STOP  # the arrival is the last row
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        objectives = ", ".join(f"{key} {mode}" for key, mode in self.metrics.items())
        lines = [f"Using MOASHA ({objectives}): num_stopped={self.num_stopped}"]
        for rung in self.rungs:
            front = pareto_mask(list(rung.results.values()), self.maximise)
            lines.append(f"  {self.time_attr} {rung.milestone:g}: {len(front)} recorded, {front.sum()} on the front")
        return "\n".join(lines)

    # As Ray's ASHA: the whole state, pickled (it is plain data).
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__, out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as saved:
            self.__dict__.update(pickle.load(saved))
