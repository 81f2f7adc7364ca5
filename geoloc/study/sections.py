"""The sections of a study file besides its base run and search space: search, scheduler, objective,
resources and failure, each field documented where declared (``geoloc.study.studyfile`` composes them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from geoloc.common.validation import (
    FieldError,
    Float,
    Section,
)


class SearchConfig(Section):
    """How trials are proposed."""

    algorithm: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    """Optuna TPE (multivariate, seeded), random, grid (every combination of the choices) or
    NSGA-II (Optuna's genetic multi-objective sampler, for ``objective.type: pareto``; its first
    generation, 50 trials, is random, so a smaller study is random search; TPE samples
    multi-objective studies too)."""
    num_samples: StrictInt = Field(8, ge=1)
    """Trials to run (tpe, random). For grid it is the grid size times ``repeats`` and may be left out."""
    repeats: StrictInt = Field(1, ge=1)
    """Grid only: run every cell with train.seed = 0 .. repeats-1 (ablations with repeated seeds)."""
    seeds: StrictInt = Field(1, ge=1)
    """Train every sampled configuration with this many seeds (train.seed, train.seed + 1, ...) in
    lock-step inside one trial; the trial reports their mean to the scheduler and the sampler and
    records every seed's metrics (works with ASHA, unlike ``repeats``). 1 is one run per trial."""
    max_concurrent: StrictInt = Field(2, ge=1)
    """Trials running at once (also bounded by the CPUs and GPUs available)."""
    n_startup_trials: StrictInt = Field(4, ge=1)
    """TPE: random trials before the model kicks in."""
    enqueue_base: StrictBool = False
    """Run the base configuration (e.g. the paper defaults) as the first trial, so its value of each choice
    entry must be among the choices. tpe, random, nsga2: it is the first of the ``num_samples`` trials.
    grid: the base is one of the grid's cells (its value of every axis must be among the axis's values:
    each choice entry, ``when`` or not, since a grid sets every axis, and train.seed for ``repeats``);
    that cell runs first and counts as the base, then every other cell once, so the study runs exactly
    the grid's cells, as without ``enqueue_base``."""

    @model_validator(mode="after")
    def _one_way_to_repeat_seeds(self) -> SearchConfig:
        if self.seeds > 1 and self.repeats > 1:
            # Trial seeds 0, 1, ... each training seeds s .. s+K-1 would train the same seeds twice.
            raise FieldError(
                "seeds", f"repeats seeds inside each trial; drop repeats ({self.repeats}) or set seeds to 1"
            )
        return self


class SchedulerConfig(Section):
    """Early stopping of weak trials after each epoch, judged by ``score`` (asha) or by the pareto
    objective's metrics (moasha)."""

    type: Literal["asha", "moasha", "none"] = "asha"
    """ASHA (asynchronous successive halving on ``score``), MOASHA (the same rungs, promoting by
    non-dominated rank on ``objective.metrics``, ``geoloc.tuning.moasha``; for a pareto objective) or
    none (every trial runs all epochs)."""
    grace_period: StrictInt = Field(1, ge=1)
    """Epochs every trial runs before it can be stopped."""
    reduction_factor: Float = Field(2.0, gt=1)
    """Keep the top 1/reduction_factor at each rung."""
    brackets: StrictInt = Field(1, ge=1)
    """ASHA brackets (MOASHA runs one)."""

    @property
    def name(self) -> str | None:
        """How a trial's status names the scheduler that stopped it ("ASHA", "MOASHA"); None for none."""
        return {"asha": "ASHA", "moasha": "MOASHA"}.get(self.type)

    @model_validator(mode="after")
    def _one_moasha_bracket(self) -> SchedulerConfig:
        if self.type == "moasha" and self.brackets != 1:
            raise FieldError("brackets", f"moasha runs one bracket, got {self.brackets}")
        return self


class ObjectiveConfig(Section):
    """What the study optimises: one number, or the Pareto set of several."""

    type: Literal["score", "pareto"] = "score"
    """"score": maximise ``score``, the weighted mean of the accuracies at ``base.eval.thresholds_km``
    with the weights ``base.eval.score_weights``. "pareto": search for the Pareto set of ``metrics``
    (a multi-objective Optuna study; early stopping by ``scheduler.type: moasha`` or none)."""
    metrics: tuple[StrictStr, ...] = ()
    """pareto: two or more metric keys of the run's registry that have a direction (``acc_1km``,
    ``acc_2500km``, ``val_loss``, ``median_km``, ...); each is maximised or minimised as the
    registry says."""

    @model_validator(mode="before")
    @classmethod
    def _removed_weights(cls, data: Any) -> Any:
        if isinstance(data, dict) and "weights" in data:
            raise FieldError("weights", "removed; set base.eval.score_weights (one weight per threshold) instead")
        return data


class ResourcesConfig(Section):
    """What one trial asks Ray for."""

    cpu: Float = Field(1.0, gt=0)
    """CPUs per trial; torch uses as many threads."""
    gpu: Float = Field(0.0, ge=0)
    """GPUs per trial; a fraction (0.25) packs several trials on one card."""


class FailureConfig(Section):
    """What happens when a trial's worker dies."""

    max_failures: StrictInt = Field(2, ge=0)
    """Restarts of a trial from its last checkpoint before it is marked errored."""
