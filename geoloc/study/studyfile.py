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

The search space is parsed once, at load, into typed entries (``geoloc.study.space``;
``study.space``, in file order);
``resolved_study`` gives the study back as plain data in the file's form.
"""

from __future__ import annotations

import itertools
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    SerializeAsAny,
    StrictInt,
    StrictStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from geoloc.common.metrics import MetricRegistry
from geoloc.common.validation import (
    ConfigError,
    FieldError,
    Section,
    config_error,
    get_path,
    load_yaml,
    set_path,
)
from geoloc.study.config import JobConfig, parse_job, registry_of
from geoloc.study.sections import FailureConfig, ObjectiveConfig, ResourcesConfig, SchedulerConfig, SearchConfig
from geoloc.study.space import ChoiceEntry, Entry, FixedEntry
from geoloc.tasks import task_of

# -- the study file ----------------------------------------------------------------------------


class StudyConfig(Section):
    """A whole study file."""

    name: StrictStr = Field("", validate_default=True)
    """Study name: the folder under the storage path and the Optuna study name."""
    description: StrictStr = ""
    """What question the study answers (shown by --dry-run)."""
    seed: StrictInt = 0
    """Seed of the search algorithm."""
    storage: StrictStr = "results"
    """Where study folders go: a local or shared (NFS) folder; relative to the working directory."""
    base: SerializeAsAny[JobConfig] = Field(default_factory=lambda: parse_job({}))
    """The run configuration every trial starts from: its ``task`` key picks the task (``geoloc.tasks``;
    geoclip by default), whose ``config.py`` documents every section."""
    search_space: dict[str, Entry] = Field(default_factory=dict)
    """Dotted run-configuration keys -> entries (see the module docstring), in file order."""
    search: SearchConfig = Field(default_factory=SearchConfig)
    """How trials are proposed."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    """Early stopping."""
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    """What the study maximises."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """What one trial asks for."""
    failure: FailureConfig = Field(default_factory=FailureConfig)
    """Retries of failed trials."""

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, name: str) -> str:
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"needs a folder-safe study name (letters, digits, - _ .), got {name!r}")
        return name

    @field_validator("base", mode="before")
    @classmethod
    def _task_config(cls, raw: Any) -> Any:
        """Plain data -> the configuration of the task it names (its errors keep their key paths)."""
        if not isinstance(raw, dict):
            return raw
        try:
            return parse_job(raw)
        except ConfigError as e:
            key, _, message = str(e).partition(": ")
            raise FieldError(key, message) from None

    @field_validator("search_space", mode="before")
    @classmethod
    def _entries(cls, raw: Any) -> Any:
        """The file's form (a bare value is a fixed entry) -> entries named by their keys."""
        if not isinstance(raw, dict):
            return raw
        entries = {}
        for name, spec in raw.items():
            spec = dict(spec) if isinstance(spec, dict) else {"type": "fixed", "value": spec}
            if "name" in spec:
                raise FieldError(f"{name}.name", "unknown key (an entry's name is its key in search_space)")
            entries[name] = {"type": None, **spec, "name": name}
        return entries

    @field_serializer("search_space")
    def _file_form(self, space: dict[str, Entry]) -> dict:
        return {name: entry.yaml_form() for name, entry in space.items()}

    @model_validator(mode="after")
    def _check_space(self) -> StudyConfig:
        """Entries name leaves of the run configuration, every value they can take gives a valid
        run, and a grid has only choices."""
        base, earlier = self.base.model_dump(mode="json"), []
        score_keys = task_of(self.base).score_keys
        for entry in self.space:
            where = f"search_space.{entry.name}"
            if not _is_leaf(base, entry.name):
                raise FieldError(where, "not a key of the run configuration")
            if entry.name in score_keys:
                raise FieldError(
                    where,
                    f"defines score ({', '.join(score_keys)}), so trials that vary it would not compare; "
                    "set it in base, or run one study per value",
                )
            for key in entry.when:
                if key not in earlier:
                    raise FieldError(f"{where}.when.{key}", "must name an earlier search_space entry")
            earlier.append(entry.name)
        for entry in self.space:
            for value in entry.extremes():
                try:
                    parse_job(set_path(base, entry.name, value))
                except ConfigError as e:
                    raise FieldError(f"search_space.{entry.name}", f"value {value!r} is invalid: {e}") from None
        if self.search.seeds > 1 and "train.seed" in self.search_space:
            raise FieldError(
                "search_space.train.seed", "search.seeds trains seeds train.seed, +1, ... itself; remove it"
            )
        self._check_enqueued_base()
        self._check_objective()
        self._check_devices()
        if self.search.algorithm == "grid":
            bad = [e.name for e in self.space if not isinstance(e, (ChoiceEntry, FixedEntry))]
            if bad:
                raise FieldError(f"search_space.{bad[0]}", "grid search needs 'choice' entries")
        return self

    def _check_enqueued_base(self) -> None:
        """With ``search.enqueue_base`` the base runs as a trial, so each choice it meets must offer the
        base's value (Optuna would refuse it only when the study runs): as the sampler walks the space
        (``when`` included), or in a grid every axis, since the base is one of its cells."""
        if not self.search.enqueue_base:
            return
        base = self.base.model_dump(mode="json")
        if self.search.algorithm == "grid":
            choices = grid_axes(self)
        else:
            choices, taken = {}, {}
            for entry in self.space:
                if not isinstance(entry, FixedEntry) and entry.applies(taken):
                    taken[entry.name] = get_path(base, entry.name)
                    if isinstance(entry, ChoiceEntry):
                        choices[entry.name] = entry.values
        for name, values in choices.items():
            value = get_path(base, name)
            if value in values:
                continue
            if name in self.search_space:
                raise FieldError(
                    f"search_space.{name}",
                    f"the base value {value!r} (base.{name}) is not one of the choices {values}; "
                    f"search.enqueue_base runs the base as a trial: add it to the values or change base.{name}",
                )
            raise FieldError(  # a grid's own axis: train.seed for repeats
                f"base.{name}",
                f"{value!r} is not one of the grid's values {values} (search.repeats: {self.search.repeats}); "
                "search.enqueue_base runs the base as one of the grid's cells: set it to one of them",
            )

    def _check_objective(self) -> None:
        """Pareto metrics are registry metrics with a direction, and the scheduler ranks what the study optimises."""
        objective, scheduler = self.objective, self.scheduler.type
        if objective.type == "score":
            if objective.metrics:
                raise FieldError("objective.metrics", "only for objective.type pareto (score is one metric)")
            if scheduler == "moasha":
                raise FieldError(
                    "scheduler.type", "moasha ranks several objectives; set objective.type: pareto or use asha"
                )
            return
        registry = self.registry
        if len(set(objective.metrics)) < 2:
            raise FieldError(
                "objective.metrics", f"pareto needs two or more different metrics, got {list(objective.metrics)}"
            )
        for key in objective.metrics:
            if key not in registry:
                known = [m.key for m in registry if m.direction]
                raise FieldError(
                    "objective.metrics", f"unknown metric {key!r}; metrics with a direction: {', '.join(known)}"
                )
            if registry.direction(key) is None:
                raise FieldError("objective.metrics", f"{key} has no better direction; it cannot be optimised")
        if scheduler == "asha":
            raise FieldError(
                "scheduler.type", "asha stops trials on the single score; a pareto objective needs moasha or none"
            )

    def _check_devices(self) -> None:
        """``train.device`` and ``resources.gpu`` agree: Ray hides every GPU from a trial that asks for
        none, so ``cuda`` there fails inside every trial; a ``cpu`` trial's GPU reservation sits idle."""
        entry = self.search_space.get("train.device")
        devices = set(entry.extremes() if entry else [self.base.train.device])
        gpu = self.resources.gpu
        if gpu == 0 and "cuda" in devices:
            raise FieldError(
                "resources.gpu",
                "0, but train.device can be cuda: Ray gives such a trial no GPU; ask for one "
                "(resources.gpu: 1, or 0.25 to pack four trials on a card) or use train.device: auto",
            )
        if gpu > 0 and devices == {"cpu"}:
            raise FieldError(
                "resources.gpu",
                f"{gpu:g}, but train.device is cpu: the card would be reserved and sit idle; set it to 0",
            )

    def objectives(self) -> dict[str, str]:
        """What the study optimises: metric key -> "max" or "min" (``{"score": "max"}`` for a score study)."""
        if self.objective.type == "score":
            return {"score": "max"}
        registry = self.registry
        return {key: registry.direction(key) for key in self.objective.metrics}

    @cached_property
    def registry(self) -> MetricRegistry:
        """The metric registry of the study's runs (the base's task's; a search space cannot change it)."""
        return registry_of(self.base)

    @property
    def space(self) -> list[Entry]:
        """The search-space entries, in file order."""
        return list(self.search_space.values())

    @property
    def epochs(self) -> int:
        return self.base.train.epochs


def _is_leaf(tree: dict, dotted: str) -> bool:
    """True when ``dotted`` names a leaf (not a section) of the configuration."""
    try:
        return not isinstance(get_path(tree, dotted), dict)
    except KeyError:
        return False


def load_study_file(path: str | Path, overrides: dict | None = None) -> StudyConfig:
    """A validated study; ``overrides`` ({"base.train.epochs": 3}, dotted keys) come from --set."""
    raw = load_yaml(path)
    for key, value in (overrides or {}).items():
        raw = set_path(raw, key, value)
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise config_error(StudyConfig, e) from None


def trial_config(study: StudyConfig, sampled: dict) -> JobConfig:
    """The run configuration of one trial: the base with the fixed and sampled values set."""
    data = study.base.model_dump(mode="json")
    for entry in study.space:
        if isinstance(entry, FixedEntry):
            data = set_path(data, entry.name, entry.value)
    for name, value in sampled.items():
        data = set_path(data, name, value)
    return parse_job(data)


def grid_axes(study: StudyConfig) -> dict[str, list]:
    """The grid's axes: every choice entry, plus train.seed for repeats."""
    axes = {e.name: list(e.values) for e in study.space if isinstance(e, ChoiceEntry)}
    if study.search.repeats > 1 and "train.seed" not in axes:
        axes["train.seed"] = list(range(study.search.repeats))
    return axes


def grid_cells(study: StudyConfig) -> list[dict]:
    """Every cell of the grid (axis name -> value), in order: the last axis varies fastest."""
    axes = grid_axes(study)
    return [dict(zip(axes, cell, strict=True)) for cell in itertools.product(*axes.values())]


def num_trials(study: StudyConfig) -> int:
    """Trials the study runs: the grid's cells (an enqueued base is one of them), or ``search.num_samples``
    (an enqueued base is the first of them); see ``SearchConfig.enqueue_base``."""
    if study.search.algorithm == "grid":
        return len(grid_cells(study))
    return study.search.num_samples


def base_values(study: StudyConfig) -> dict:
    """The base configuration's value of every entry that is not fixed (the base as a trial); in a grid,
    also of its own axes (``train.seed`` for repeats), so that it is one of the grid's cells."""
    base = study.base.model_dump(mode="json")
    names = [e.name for e in study.space if not isinstance(e, FixedEntry)]
    if study.search.algorithm == "grid":
        names += [name for name in grid_axes(study) if name not in names]
    return {name: get_path(base, name) for name in names}


def resolved_study(study: StudyConfig) -> dict:
    """Plain data of the whole validated study in the file's form (written as STUDY_DIR/study.yaml)."""
    return study.model_dump(mode="json")
