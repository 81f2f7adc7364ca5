"""A damaged Optuna storage: found before a resume, and rebuilt from the trial folders on request.

``STUDY_DIR/optuna.db`` is an SQLite file, and a shared file system or a full disk can leave it
truncated or garbled. The trial folders (``geoloc.study.folders``) hold everything the study's Optuna
record holds, so the record can be rebuilt from them.

``check_optuna_storage`` reads the file without changing it: an empty file (SQLite would take it
for an empty database, and the resume would silently start the study over), then SQLite's
``PRAGMA quick_check`` of every page on a read-only connection (on a private copy when a killed
writer left its journal, which only a writer may roll back), then the study and all its trials
through Optuna. Any failure raises ``StorageDamaged`` with SQLite's reason, in one line, except
"database is locked": SQLite's locks end with the process that holds them, so a locked file is one a
live process is writing (the study's own launcher, caught mid-transaction), not a damaged one; that
raises ``StorageBusy`` (``python tune_main.py status`` says so and goes on; a resume refuses to start).

``rebuild_optuna_storage`` writes a fresh file beside the damaged one, then keeps the damaged one
as ``optuna.db.damaged-YYYYmmdd-HHMMSS`` (with its journal, if any; nothing is deleted) and puts
the fresh one in its place. The study is created as the searcher creates it (same name and
directions), and one trial is added per number, in order, since Optuna numbers trials as they are
added:

| trial folder ``trial_<ray id>/`` | rebuilt Optuna trial |
| --- | --- |
| ``status.json`` finished | COMPLETE, value = the last epoch's ``score`` (a pareto study: its objective values) |
| stopped (by the scheduler) | PRUNED, value = the last epoch's ``score`` as ``Study.tell`` records it (pareto: none) |
| errored | FAIL, user attribute ``fail_reason`` = the status's reason |
| running, missing or unreadable | RUNNING: cut short by the crash; the searcher's resume handles it |

Every rebuilt trial from a folder has ``params`` from ``trial.json``, their distributions as
``searcher.sample`` creates them (it is run on an ``optuna.trial.FixedTrial`` of those params, so
the two cannot disagree), ``intermediate_values`` = the ``score`` of every trained epoch in
``metrics.jsonl`` (a pareto study: the user attribute ``epoch_values`` instead), the user
attribute ``ray_trial_id``, and the start and end times of its
``trial.json`` and ``status.json``. Trials enqueued at the study's creation (``searcher.enqueued``:
the base configuration, the grid cells) keep their ``fixed_params`` system attribute, as
``Study.enqueue_trial`` stores it. Folders under ``STUDY_DIR/.orphaned/`` (set-aside reruns) are
ignored.

A number without a folder was asked for just before the crash, before its worker wrote
``trial.json``, or not asked at all:

- below the highest number with a folder, it was asked (Optuna hands out numbers in order): it
  comes back RUNNING without params (its enqueued ``fixed_params`` kept). If Ray's own record
  restores that trial, its results go to this number; otherwise the searcher reuses the number
  for the next trial, with the same fixed params, as after a killed driver. (WAITING would make
  ``ask`` hand the number to a second trial while Ray's restored one runs under it.)
- above it, an enqueued trial comes back WAITING with its fixed params (a grid cell not started
  yet); any other number has no trace and is not rebuilt. (A trial that Ray had queued but not
  started, numbered above every folder, looks the same and is rebuilt so too.)

What only the damaged file held is not rebuilt: the params and Ray id of a trial asked without a
folder, and the samplers' caches in system attributes (such as TPE's ``tpe:relative_params:*``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sqlite3
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import sqlalchemy.exc

from geoloc.common.atomic import atomic_path
from geoloc.study.folders import Status, StudyFolder, TrialFolder
from geoloc.study.studyfile import StudyConfig

TrialState = optuna.trial.TrialState
SIDECARS = ("-journal", "-wal", "-shm")  # SQLite's files beside a database: they belong to that file
LOCKED = "database is locked"  # SQLite's reason when another connection holds the lock past the timeout


class StorageDamaged(Exception):
    """The study's Optuna storage cannot be read; the message names the file and SQLite's reason in one line."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, " ".join(reason.split())
        super().__init__(f"{path} is damaged ({self.reason})")


class StorageBusy(Exception):
    """A live process holds the study's Optuna storage locked (module docstring); one line naming it."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"{path} is locked by a process writing to it")


class RebuildError(Exception):
    """The trial folders do not add up to an Optuna record (one line, naming the folder)."""


@dataclass(frozen=True)
class Rebuilt:
    """What ``rebuild_optuna_storage`` did; ``str()`` is the launcher's one line."""

    study_name: str
    folders: int  # trial folders read
    states: dict[str, int]  # rebuilt trials by Optuna state
    damaged: Path  # where the damaged file was kept

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in self.states.items())
        return (
            f"rebuilt the Optuna record of study {self.study_name!r} from {self.folders} trial folders: "
            f"{sum(self.states.values())} trials ({counts}); the damaged file is kept as {self.damaged}"
        )


# -- checking ------------------------------------------------------------------------------------


def check_optuna_storage(study_dir: str | Path, study_name: str) -> None:
    """Raises ``StorageDamaged`` unless the study's ``optuna.db`` reads whole (``StorageBusy`` while a live
    process holds it locked); changes nothing in it."""
    path = StudyFolder(study_dir).optuna_db
    reason = "the file is empty" if path.stat().st_size == 0 else _quick_check(path) or _optuna_check(path, study_name)
    if reason and LOCKED in reason:
        raise StorageBusy(path)
    if reason:
        raise StorageDamaged(path, reason)


def _quick_check(path: Path) -> str | None:
    """SQLite's structural check of every page (truncated or garbled files fail it); None when ok."""
    sidecars = [Path(f"{path}{s}") for s in SIDECARS if Path(f"{path}{s}").exists()]
    if not sidecars:
        return _run_quick_check(path.resolve().as_uri() + "?mode=ro")
    # A driver killed mid-write leaves a journal that the next writer rolls back, which a read-only
    # connection refuses to do: check a private copy, so the study's files stay exactly as they are.
    with tempfile.TemporaryDirectory() as tmp:
        for src in (path, *sidecars):
            shutil.copyfile(src, Path(tmp) / src.name)
        return _run_quick_check((Path(tmp) / path.name).as_uri())


def _run_quick_check(uri: str) -> str | None:
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as e:
        return str(e)
    return None if rows == [("ok",)] else "; ".join(row[0] for row in rows[:3])


def _optuna_check(path: Path, study_name: str) -> str | None:
    """The study and all its trials read through Optuna, as the searcher will read them."""
    storage = None
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{path}", skip_table_creation=True)
        optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return f"it holds no study named {study_name!r}"
    except (sqlalchemy.exc.DatabaseError, optuna.exceptions.StorageInternalError) as e:
        # Optuna wraps what SQLAlchemy raises inside its sessions, and SQLAlchemy wraps SQLite's error.
        error = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ else e
        return str(getattr(error, "orig", None) or error)
    finally:
        if storage is not None:
            storage.engine.dispose()
    return None


# -- rebuilding ----------------------------------------------------------------------------------


def rebuild_optuna_storage(study: StudyConfig, study_dir: str | Path) -> Rebuilt:
    """Keep the damaged ``optuna.db`` aside and write the study's record, rebuilt from its trial
    folders (the rules are in the module docstring), in its place. Raises ``RebuildError``, with
    nothing changed, when the folders do not add up."""
    folder = StudyFolder(study_dir)
    folders = folder.trials()  # .orphaned/ lies a level deeper, so set-aside reruns are not among them
    trials = _rebuilt_trials(study, folders)
    with atomic_path(folder.optuna_db) as fresh:  # in place when the damaged one is kept aside
        _write(study, trials, fresh)
        damaged = _keep_aside(folder.optuna_db)
    states = Counter(t.state.name for t in trials)
    order = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    return Rebuilt(study.name, len(folders), {s: states[s] for s in order if states[s]}, damaged)


def _write(study: StudyConfig, trials: list[optuna.trial.FrozenTrial], db: Path) -> None:
    """A new storage holding the study as the searcher creates it, with ``trials`` added in order."""
    from geoloc.tuning.optuna_trials import name_metrics, optuna_directions

    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    try:
        record = optuna.create_study(study_name=study.name, storage=storage, directions=optuna_directions(study))
        name_metrics(record, study)
        for trial in trials:
            record.add_trial(trial)  # numbered as added
    finally:
        storage.engine.dispose()


def _keep_aside(db: Path) -> Path:
    """``optuna.db.damaged-<time>``: a hard link (the study never lacks an ``optuna.db``), and the
    sidecar files moved beside it, since a stale journal would be rolled back into the fresh file."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = db.with_name(f"{db.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db.with_name(f"{db.name}.damaged-{stamp}-{n}")
    try:
        os.link(db, aside)
    except OSError:  # a file system without hard links
        shutil.copy2(db, aside)
    for suffix in SIDECARS:
        if Path(f"{db}{suffix}").exists():
            os.replace(f"{db}{suffix}", f"{aside}{suffix}")
    return aside


def _rebuilt_trials(study: StudyConfig, folders: list[TrialFolder]) -> list[optuna.trial.FrozenTrial]:
    """One trial per number, in number order (see the module docstring)."""
    from geoloc.tuning.optuna_trials import enqueued  # imports Ray: only when rebuilding, the check stays quick

    queue = enqueued(study)
    by_number: dict[int, tuple[TrialFolder, dict]] = {}
    for trial in folders:
        doc = trial.read_trial()
        number = doc.get("number") if doc else None
        if not isinstance(number, int) or number < 0:
            raise RebuildError(f"{trial.path / trial.TRIAL}: no trial number in it")
        if number in by_number:
            raise RebuildError(f"{by_number[number][0].path} and {trial.path} both hold Optuna trial {number}")
        by_number[number] = trial, doc
    last = max(by_number, default=-1)
    rebuilt = []
    for number in range(max(last + 1, len(queue))):
        system_attrs = {"fixed_params": queue[number]} if number < len(queue) else {}
        if number in by_number:
            rebuilt.append(_from_folder(study, *by_number[number], system_attrs))
        elif number < last:  # asked, but its worker had not started: reused or rejoined on resume
            rebuilt.append(optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs=system_attrs))
        else:  # enqueued, not started yet: what Study.enqueue_trial adds
            rebuilt.append(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=system_attrs))
    return rebuilt


def _from_folder(study: StudyConfig, trial: TrialFolder, doc: dict, system_attrs: dict) -> optuna.trial.FrozenTrial:
    """The Optuna trial that a trial folder records (the table in the module docstring)."""
    from geoloc.tuning.optuna_trials import EPOCH_VALUES, WORKER_FAILED, objective_values, sample

    params = doc.get("params") or {}
    probe = optuna.trial.FixedTrial(params)  # records the distribution of every value sample() suggests
    try:
        with warnings.catch_warnings():  # a value out of range: create_trial refuses it below
            warnings.simplefilter("ignore")
            fits = sample(probe, study) == params
    except ValueError:  # a value the search space needs is missing, or a choice it lacks
        fits = False
    if not fits:
        raise RebuildError(f"{trial.path / trial.TRIAL}: its params {params} do not fit the study's search space")
    # Epoch 0 (eval.at_start) is the untrained model: the searcher reports trained epochs only.
    keys = list(study.objectives())
    by_epoch = {row["epoch"]: values for row in trial.read_metrics().rows if (values := objective_values(keys, row))}
    by_epoch.pop(0, None)
    last = by_epoch[max(by_epoch)] if by_epoch else None
    pareto = study.objective.type == "pareto"
    status = trial.recorded_status()  # missing or unreadable: as if cut short
    outcome = status.status if status else Status.RUNNING
    user_attrs = {"ray_trial_id": doc.get("trial_id", trial.name[len(trial.PREFIX) :])}
    if pareto and by_epoch:  # as the searcher sets it: at the first reported epoch
        user_attrs[EPOCH_VALUES] = {str(epoch): values for epoch, values in by_epoch.items()}
    state, values = TrialState.RUNNING, None  # also for a finished trial without a score: the resume reruns it
    if outcome is Status.FINISHED and last is not None:
        # Study.tell records a NaN value as FAIL
        state, values = (TrialState.FAIL, None) if any(map(math.isnan, last)) else (TrialState.COMPLETE, last)
    elif outcome is Status.STOPPED:
        # Study.tell gives a pruned trial its last intermediate value, but not a NaN (and none in a pareto study)
        state = TrialState.PRUNED
        if not pareto and last is not None and not math.isnan(last[0]):
            values = last
    elif outcome is Status.ERRORED:
        state, user_attrs["fail_reason"] = TrialState.FAIL, status.reason or WORKER_FAILED
    try:
        frozen = optuna.trial.create_trial(
            state=state,
            values=values,
            params=params,
            distributions=probe.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
            intermediate_values={} if pareto else {epoch: values[0] for epoch, values in by_epoch.items()},
        )
    except ValueError as e:  # a value outside its range: the study file changed, or the base lies outside it
        raise RebuildError(f"{trial.path / trial.TRIAL}: {e}") from None
    frozen.datetime_start = _mtime(trial.path / trial.TRIAL) or frozen.datetime_start
    if state.is_finished():
        frozen.datetime_complete = _mtime(trial.path / trial.STATUS) or frozen.datetime_start
    return frozen


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime)
    except OSError:
        return None


__all__ = ["RebuildError", "Rebuilt", "StorageBusy", "StorageDamaged", "check_optuna_storage", "rebuild_optuna_storage"]
