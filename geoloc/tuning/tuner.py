"""The Ray Tune side of a study: the scheduler (ASHA, MOASHA or none) and the Tuner (new, or restored to resume)."""

from __future__ import annotations

import logging
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from geoloc.study.folders import StudyFolder, TrialFolder
from geoloc.study.studyfile import StudyConfig, num_trials
from geoloc.tuning.moasha import MOASHAScheduler
from geoloc.tuning.searcher import OptunaStudySearcher
from geoloc.tuning.trainable import train_trial


class _NoRayResultFiles(logging.Filter):
    """Drops Ray's warning that trials have no ``result.json``/``progress.csv``: the project writes each
    trial's record to its own ``metrics.jsonl`` (Ray's loggers are off), so the warning, which reads like
    lost results, says nothing. Any other failure to read a trial still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = record.getMessage().splitlines()
        return not (lines[0].startswith("Failed to fetch metrics") and all("not found" in x for x in lines[1:]))


logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_NoRayResultFiles())


def trial_dirname(trial) -> str:
    """Ray's name and folder of a trial: the trial folder of ``geoloc.study.folders``."""
    return f"{TrialFolder.PREFIX}{trial.trial_id}"


def make_scheduler(study: StudyConfig):
    s = study.scheduler
    if s.type == "none":
        return FIFOScheduler()
    if s.type == "moasha":
        return MOASHAScheduler(
            metrics=study.objectives(),
            time_attr="epoch",
            max_t=study.epochs,
            grace_period=min(s.grace_period, study.epochs),
            reduction_factor=s.reduction_factor,
        )
    return ASHAScheduler(
        time_attr="epoch",
        max_t=study.epochs,
        grace_period=min(s.grace_period, study.epochs),
        reduction_factor=s.reduction_factor,
        brackets=s.brackets,
    )


def make_tuner(study: StudyConfig, study_dir: Path, resume: bool, reporter=None, callbacks=()) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored (``resume``) with a fresh searcher on the same Optuna storage.
    ``reporter``: Ray's trial table (``--verbose``); else Ray prints nothing and ``callbacks`` (the quiet progress
    of ``geoloc.tuning.progress``) show the trials. A restored Tuner takes this launcher's choice, not the first's."""
    folder = StudyFolder(study_dir)
    searcher = ConcurrencyLimiter(
        OptunaStudySearcher(study, study_dir, folder.optuna_url), max_concurrent=study.search.max_concurrent
    )
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, study=study, study_dir=str(study_dir)),
        {"cpu": study.resources.cpu, "gpu": study.resources.gpu},
    )
    if resume and tune.Tuner.can_restore(str(study_dir)):
        tuner = tune.Tuner.restore(
            str(study_dir),
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
        if run_config is not None:  # the console of this launcher (--verbose or not), not the pickled one
            run_config.progress_reporter, run_config.verbose = reporter, 1 if reporter else 0
            run_config.callbacks = list(callbacks)
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            search_alg=searcher,
            scheduler=make_scheduler(study),
            num_samples=num_trials(study),
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
            reuse_actors=True,  # a worker process runs trial after trial: torch is imported once per slot
        ),
        run_config=tune.RunConfig(
            name=study.name,
            storage_path=str(study_dir.parent),
            failure_config=tune.FailureConfig(max_failures=study.failure.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # markers of bytes: see trainable.py
            progress_reporter=reporter,
            callbacks=list(callbacks),
            verbose=1 if reporter else 0,
        ),
    )
