"""Run configurations of any task: parsed, loaded from YAML, re-seeded.

``parse_job(data)`` validates plain data with the configuration class of the task its ``task``
key names (``geoloc.tasks``; ``geoclip`` when absent), so unknown keys, wrong types and
impossible values are a ``ConfigError`` whose message is one line starting with the key path
(``train.batch_size: must be >= 1, got 0``); command-line entries print it on stderr and exit
with status 2. A validated configuration cannot be changed: build a new one (``parse_job`` of
changed plain data). Its plain data (for YAML, JSON, checkpoints and HParams) is
``cfg.model_dump(mode="json")``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from geoloc.common.metrics import MetricRegistry
from geoloc.common.validation import config_error, deep_merge, load_yaml, set_path
from geoloc.tasks import DEFAULT_TASK, TaskConfig, task_named, task_of

JobConfig = TaskConfig
"""A validated run configuration of some task (its class is the task's ``config``)."""


def parse_job(data: dict | None) -> JobConfig:
    """A validated run configuration from plain data (missing keys keep their task's defaults)."""
    data = {} if data is None else data
    config = task_named(data.get("task", DEFAULT_TASK)).config
    try:
        return config.model_validate(data)
    except ValidationError as e:
        raise config_error(config, e) from None


def load_job(path: str | Path, overrides: dict | None = None) -> JobConfig:
    """A validated run configuration from a YAML file, with optional nested overrides applied on top.

    A study file is accepted too: its ``base`` section is the run (so ``python -m geoloc.train
    studies/quickstart.yaml`` trains the quickstart's base configuration once).
    """
    data = load_yaml(path)
    if "base" in data and "search_space" in data:
        data = data["base"] or {}
    if overrides:
        data = deep_merge(data, overrides)
    return parse_job(data)


def with_seed(cfg: JobConfig, seed: int) -> JobConfig:
    """The same run configuration with another ``train.seed`` (validated again: configurations are frozen)."""
    return parse_job(set_path(cfg.model_dump(mode="json"), "train.seed", seed))


def registry_of(cfg: JobConfig) -> MetricRegistry:
    """The metric registry of a run configuration (its task's)."""
    return task_of(cfg).registry(cfg)
