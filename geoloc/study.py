"""Study files: one YAML file describes one study (base run, search space, search, scheduler, ...).

Everything is validated up front, before Ray starts: unknown keys, wrong types, impossible
values, and every value the search space can produce (its bounds and each choice are merged
into the base configuration and validated as a run would be), so a trial never dies of a
configuration error hours into a sweep.

Search-space entries (keys are dotted paths into the run configuration)::

    train.lr: 3.0e-4                                           fixed value
    train.noise.batch_sigma: {type: choice, values: [0, 0.15, 1.0]}   includes 0 = off
    train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}
    model.init_temperature: {type: uniform, low: 0.03, high: 0.1}
    train.queue_size: {type: int, low: 0, high: 4096, step: 256}
    train.noise.queue_sigma: {type: uniform, low: 0, high: 2, when: {train.noise.target: gps}}

``when`` makes an entry conditional: it is sampled only when the named earlier entries took
the given value (or one of a list of values); otherwise the base value stands.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .config import ConfigError, RunConfig, at_least, from_dict, get_path, load_yaml, set_path, to_dict

PARAM_TYPES = ("fixed", "uniform", "loguniform", "int", "choice")


@dataclass
class Param:
    """One search-space entry."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    values: list | None = None
    when: dict[str, list] = field(default_factory=dict)

    def applies(self, sampled: dict) -> bool:
        return all(sampled.get(key) in allowed for key, allowed in self.when.items())

    def extremes(self) -> list:
        """The values that validation tries: bounds or every choice."""
        if self.type == "choice" or self.type == "fixed":
            return list(self.values)
        return [self.low, self.high]


@dataclass
class SearchConfig:
    """How trials are proposed."""

    algorithm: Literal["tpe", "random", "grid"] = "tpe"
    """Optuna TPE (multivariate, seeded), random, or grid (every combination of the choices)."""
    num_samples: int = 8
    """Trials to run (tpe, random). For grid it is the grid size times ``repeats`` and may be left out."""
    repeats: int = 1
    """Grid only: run every cell with train.seed = 0 .. repeats-1 (ablations with repeated seeds)."""
    max_concurrent: int = 2
    """Trials running at once (also bounded by the CPUs and GPUs available)."""
    n_startup_trials: int = 4
    """TPE: random trials before the model kicks in."""
    enqueue_base: bool = False
    """Run the base configuration (e.g. the paper defaults) as the first trial."""

    def validate(self, path: str) -> None:
        for name in ("num_samples", "repeats", "max_concurrent", "n_startup_trials"):
            at_least(self, name, 1, path)


@dataclass
class SchedulerConfig:
    """Early stopping of weak trials, judged by ``score`` after each epoch."""

    type: Literal["asha", "none"] = "asha"
    """ASHA (asynchronous successive halving) or none (every trial runs all epochs)."""
    grace_period: int = 1
    """Epochs every trial runs before it can be stopped."""
    reduction_factor: float = 2.0
    """Keep the top 1/reduction_factor at each rung."""
    brackets: int = 1
    """ASHA brackets."""

    def validate(self, path: str) -> None:
        at_least(self, "grace_period", 1, path)
        at_least(self, "brackets", 1, path)
        if not self.reduction_factor > 1:
            raise ConfigError(f"{path}.reduction_factor: must be > 1, got {self.reduction_factor}")


@dataclass
class ObjectiveConfig:
    """The study's objective: ``score``, the weighted mean of the accuracies, maximised."""

    weights: list[float] | None = None
    """One weight per threshold of base.eval.thresholds_km; null keeps base.eval.score_weights (equal)."""


@dataclass
class ResourcesConfig:
    """What one trial asks Ray for."""

    cpu: float = 1.0
    """CPUs per trial; torch uses as many threads."""
    gpu: float = 0.0
    """GPUs per trial; a fraction (0.25) packs several trials on one card."""

    def validate(self, path: str) -> None:
        if not self.cpu > 0:
            raise ConfigError(f"{path}.cpu: must be > 0, got {self.cpu}")
        at_least(self, "gpu", 0, path)


@dataclass
class FailureConfig:
    """What happens when a trial's worker dies."""

    max_failures: int = 2
    """Restarts of a trial from its last checkpoint before it is marked errored."""

    def validate(self, path: str) -> None:
        at_least(self, "max_failures", 0, path)


@dataclass
class StudyConfig:
    """A whole study file."""

    name: str = ""
    """Study name: the folder under the storage path and the Optuna study name."""
    description: str = ""
    """What question the study answers (shown by --dry-run)."""
    seed: int = 0
    """Seed of the search algorithm."""
    storage: str = "results"
    """Where study folders go: a local or shared (NFS) folder; relative to the working directory."""
    base: RunConfig = field(default_factory=RunConfig)
    """The run configuration every trial starts from (geoloc/config.py)."""
    search_space: dict = field(default_factory=dict)
    """Dotted run-configuration keys -> entries (see the module docstring)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)

    def validate(self, path: str) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(f"name: needs a folder-safe study name (letters, digits, - _ .), got {self.name!r}")

    @property
    def epochs(self) -> int:
        return self.base.train.epochs

    def params(self) -> list[Param]:
        return parse_space(self.search_space, to_dict(self.base))


def load_study(path: str | Path, overrides: dict | None = None) -> StudyConfig:
    """A validated study; ``overrides`` ({"base.train.epochs": 3}) come from --set."""
    raw = load_yaml(path)
    for key, value in (overrides or {}).items():
        raw = set_path(raw, key, value)
    study = from_dict(StudyConfig, raw)
    if study.objective.weights is not None:
        base = to_dict(study.base)
        base["eval"]["score_weights"] = study.objective.weights
        try:
            study.base = from_dict(RunConfig, base)
        except ConfigError as e:
            raise ConfigError(str(e).replace("eval.score_weights", "objective.weights")) from None
    params = study.params()
    check_space_values(study.base, params)
    if study.search.algorithm == "grid":
        bad = [p.name for p in params if p.type not in ("choice", "fixed")]
        if bad:
            raise ConfigError(f"search_space.{bad[0]}: grid search needs 'choice' entries")
    return study


def parse_space(raw: dict, base: dict) -> list[Param]:
    params: list[Param] = []
    for name, spec in raw.items():
        where = f"search_space.{name}"
        if not _has_path(base, name):
            raise ConfigError(f"{where}: not a key of the run configuration")
        if not isinstance(spec, dict):
            params.append(Param(name, "fixed", values=[spec]))
            continue
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in PARAM_TYPES:
            raise ConfigError(f"{where}.type: must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        when = spec.pop("when", {}) or {}
        if not isinstance(when, dict):
            raise ConfigError(f"{where}.when: expected a mapping of earlier entries to values")
        for key in when:
            if key not in [p.name for p in params]:
                raise ConfigError(f"{where}.when.{key}: must name an earlier search_space entry")
        when = {k: v if isinstance(v, list) else [v] for k, v in when.items()}
        params.append(_param(name, kind, spec, when, where))
    return params


def _param(name: str, kind: str, spec: dict, when: dict, where: str) -> Param:
    allowed = {"fixed": {"value"}, "choice": {"values"}, "uniform": {"low", "high"},
               "loguniform": {"low", "high"}, "int": {"low", "high", "step"}}[kind]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key for type {kind} (known: {', '.join(sorted(allowed))})")
    missing = sorted(allowed - set(spec) - {"step"})
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required for type {kind}")
    if kind == "fixed":
        return Param(name, kind, values=[spec["value"]], when=when)
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: needs a non-empty list")
        return Param(name, kind, values=values, when=when)
    low, high = spec["low"], spec["high"]
    for key, value in (("low", low), ("high", high), ("step", spec.get("step", 1))):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
    if not low < high:
        raise ConfigError(f"{where}: needs low < high, got low={low} high={high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.low: loguniform needs low > 0, got {low}")
    if kind == "int" and not all(isinstance(v, int) for v in (low, high, spec.get("step", 1))):
        raise ConfigError(f"{where}: int needs integer low, high and step")
    return Param(name, kind, low=low, high=high, step=spec.get("step"), when=when)


def check_space_values(base: RunConfig, params: list[Param]) -> None:
    """Every bound and choice, put into the base configuration, must give a valid run."""
    base_dict = to_dict(base)
    for p in params:
        for value in p.extremes():
            try:
                from_dict(RunConfig, set_path(base_dict, p.name, value))
            except ConfigError as e:
                raise ConfigError(f"search_space.{p.name}: value {value!r} is invalid: {e}") from None


def run_config(study: StudyConfig, sampled: dict) -> RunConfig:
    """The run configuration of one trial: the base with the fixed and sampled values set."""
    data = to_dict(study.base)
    for p in study.params():
        if p.type == "fixed":
            data = set_path(data, p.name, p.values[0])
    for name, value in sampled.items():
        data = set_path(data, name, value)
    return from_dict(RunConfig, data)


def grid(study: StudyConfig) -> dict[str, list]:
    """The grid's axes: every choice entry, plus train.seed for repeats."""
    space = {p.name: p.values for p in study.params() if p.type == "choice"}
    if study.search.repeats > 1 and "train.seed" not in space:
        space["train.seed"] = list(range(study.search.repeats))
    return space


def num_trials(study: StudyConfig) -> int:
    if study.search.algorithm == "grid":
        return max(1, len(list(itertools.product(*grid(study).values()))))
    return study.search.num_samples


def _has_path(tree: dict, dotted: str) -> bool:
    """True when ``dotted`` names a leaf (not a section) of the configuration."""
    try:
        return not isinstance(get_path(tree, dotted), dict)
    except KeyError:
        return False


def resolved(study: StudyConfig) -> dict:
    """Plain data of the whole validated study (written as STUDY_DIR/study.yaml)."""
    return to_dict(study)


__all__ = ["StudyConfig", "Param", "load_study", "run_config", "grid", "num_trials", "resolved"]
