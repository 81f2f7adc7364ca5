"""Optuna without Ray: a study's sampler, directions, metric names and objective values, the sampling of one trial's
parameters from the search space, and the trials enqueued before sampling (the base, the grid).
``geoloc.tuning.searcher`` (Ray's side) and ``geoloc.tuning.recovery`` both use it."""

from __future__ import annotations

import warnings

import optuna

from geoloc.study.space import ChoiceEntry, FloatEntry, IntEntry
from geoloc.study.studyfile import StudyConfig, base_values, grid_axes, grid_cells

optuna.logging.set_verbosity(optuna.logging.WARNING)  # Ray's trial table is the progress display
TrialState = optuna.trial.TrialState
STARTED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
EPOCH_VALUES = "epoch_values"
"""User attribute of a pareto study's trial: {epoch: its objective values}, since Optuna keeps
intermediate values (``Trial.report``) for single-objective studies only."""
WORKER_FAILED = "the trial's worker failed; see error.txt in the trial folder"


def make_sampler(study: StudyConfig, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler. A resumed study's is seeded past its first one (``trials_so_far``): a
    sampler seeded as at the start would draw the first trials' parameters again."""
    algo, seed = study.search.algorithm, study.seed + trials_so_far
    if algo == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=study.search.n_startup_trials)
    if algo == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # grid: the cells are enqueued in order (see OptunaStudySearcher); Optuna's GridSampler is not
    # used because it calls Study.stop() when the grid is exhausted, which fails outside optimize().
    return optuna.samplers.RandomSampler(seed=seed)


def optuna_directions(study: StudyConfig) -> list[str]:
    """The Optuna study's directions, one per objective (``StudyConfig.objectives``)."""
    return ["maximize" if how == "max" else "minimize" for how in study.objectives().values()]


def name_metrics(record: optuna.Study, study: StudyConfig) -> None:
    """Optuna's metric names: the objectives' metric keys (``score``, or each objective of a pareto study),
    so optuna-dashboard and Optuna's plots show them instead of "Objective 0"."""
    names = list(study.objectives())
    if record.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            record.set_metric_names(names)


def objective_values(keys: list[str], row: dict | None) -> list[float] | None:
    """A metrics row's values of the objectives ``keys`` (``StudyConfig.objectives``), in order;
    None when it lacks one."""
    if not row or any(key not in row for key in keys):
        return None
    return [float(row[key]) for key in keys]


def sample(trial: optuna.Trial, study: StudyConfig) -> dict:
    """Define-by-run sampling of the search space (conditional entries only when they apply)."""
    sampled: dict = {}
    for entry in study.space:
        if not entry.applies(sampled):
            continue
        if isinstance(entry, ChoiceEntry):
            sampled[entry.name] = trial.suggest_categorical(entry.name, entry.values)
        elif isinstance(entry, IntEntry):
            sampled[entry.name] = trial.suggest_int(entry.name, entry.low, entry.high, step=entry.step)
        elif isinstance(entry, FloatEntry):
            sampled[entry.name] = trial.suggest_float(entry.name, entry.low, entry.high, log=entry.log)
    if study.search.algorithm == "grid":
        for name, values in grid_axes(study).items():  # grid-only axes such as train.seed for repeats
            if name not in sampled:
                sampled[name] = trial.suggest_categorical(name, values)
    return sampled


def enqueued(study: StudyConfig) -> list[dict]:
    """The fixed parameters of the trials enqueued when the study is created, in order (they get the
    lowest numbers): the base configuration (``search.enqueue_base``), then every grid cell, the base's
    own cell only once (``SearchConfig.enqueue_base``): a grid's queue is its ``num_trials`` cells."""
    queue = [base_values(study)] if study.search.enqueue_base else []
    if study.search.algorithm == "grid":
        cells = grid_cells(study)
        if queue:
            cells.remove(queue[0])  # validation made the base one of the cells; it runs first
        queue += cells
    return queue
