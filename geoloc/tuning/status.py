"""``python tune_main.py status STUDY_DIR``: where a study stands, read from its folder alone.

It starts no Ray and takes no lock (a running launcher is not disturbed; two users may ask at once).
It prints, from the study folder (``geoloc.study.folders``):

- who holds the study: the launcher named by the lock marker (``geoloc.tuning.lock``) and
  ``driver.json`` (host, process, since when, its command), alive or stale. Alive: a marker refreshed
  within ``LEASE_S`` and, on this host, a process that still exists;
- the trials by status with their epochs (a ``running`` trial without a live launcher was cut short);
- the best so far at the study's budget (its full epoch count; else at the furthest epoch any trial
  reached, which it says): the best ``score``, or the best of each objective of a pareto study;
- whether ``optuna.db`` and every ``status.json`` read whole (``geoloc.tuning.recovery``; an
  ``optuna.db`` that a live process holds locked is said to be so, not damaged);
- the commands to resume, watch and analyse it.

The verdict is its last line and its exit status:

| verdict | exit | when |
| --- | --- | --- |
| running | 0 | a live launcher holds the study |
| finished | 0 | no live launcher; every planned trial ended |
| interrupted | 1 | no live launcher, and trials cut short or not started |
| damaged | 1 | an unreadable ``optuna.db``, ``status.json`` or ``study.yaml`` (resume rebuilds ``optuna.db``) |
| not a study | 2 | no ``study.yaml`` and no trial folder |
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from geoloc.common.atomic import read_json
from geoloc.common.validation import ConfigError
from geoloc.study.folders import Status, StudyFolder, TrialFolder
from geoloc.study.studyfile import StudyConfig, load_study_file, num_trials
from geoloc.tuning.lock import DRIVER, LEASE_S, LOCK

HEALTHY, INTERRUPTED, NOT_A_STUDY = 0, 1, 2


@dataclass(frozen=True)
class Holder:
    """The launcher named by the study lock's marker and ``driver.json``."""

    host: str | None
    pid: int | None
    since: str | None
    command: str | None
    age_s: float  # since the marker's last heartbeat
    alive: bool

    def describe(self) -> str:
        state = "alive" if self.alive else "stale (its launcher is gone)"
        since = f", since {self.since}" if self.since else ""
        beat = f", last heartbeat {self.age_s:.0f} s ago"
        return f"launcher: host {self.host or '?'}, pid {self.pid or '?'}{since}{beat}: {state}"


def holder(study_dir: Path) -> Holder | None:
    """The launcher holding ``study_dir`` by its marker, read without taking the lock; None when no marker."""
    from filelock import SoftFileLease

    marker = study_dir / LOCK
    try:
        age = time.time() - marker.stat().st_mtime
    except FileNotFoundError:
        return None
    owner = SoftFileLease(marker, lease_duration=LEASE_S).owner  # a read of the marker, nothing taken
    driver = read_json(study_dir / DRIVER)
    driver = driver if isinstance(driver, dict) else {}
    host = owner.hostname if owner else driver.get("host")
    pid = owner.pid if owner else driver.get("pid")
    alive = owner is not None and age < LEASE_S
    if alive and host == socket.gethostname():
        alive = _process_exists(pid)
    same = driver.get("pid") == pid
    return Holder(host, pid, driver.get("since") if same else None, driver.get("command") if same else None, age, alive)


def _process_exists(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class TrialState:
    folder: TrialFolder
    number: int | None
    status: Status | None  # None: status.json missing or unreadable
    epochs: int
    rows: list[dict]
    broken: str | None = None  # why status.json is unreadable


def read_trials(folder: StudyFolder) -> list[TrialState]:
    out = []
    for trial in folder.trials():
        doc = trial.read_trial() or {}
        rows = trial.read_metrics().rows
        try:
            record, broken = trial.read_status(), None
        except (ValueError, OSError) as e:
            record, broken = None, str(e) or type(e).__name__
        epochs = max([record.epochs if record else 0] + [int(r.get("epoch", 0)) for r in rows])
        out.append(TrialState(trial, doc.get("number"), record.status if record else None, epochs, rows, broken))
    return sorted(out, key=lambda t: (t.number is None, t.number or 0, t.folder.name))


def best_at_budget(study: StudyConfig, trials: list[TrialState]) -> list[str]:
    """Lines: the best value of each objective at the study's budget (else the furthest epoch reached)."""
    reached = [t for t in trials if t.rows]
    if not reached:
        return ["best so far: no trial has reported an epoch yet"]
    budget = study.epochs
    epoch = budget if any(r.get("epoch") == budget for t in reached for r in t.rows) else None
    if epoch is None:
        epoch = max(int(r.get("epoch", 0)) for t in reached for r in t.rows)
        lines = [f"best so far: no trial has reached the budget of {budget} epochs yet; at epoch {epoch}:"]
    else:
        lines = [f"best so far at the budget ({budget} epochs):"]
    for key, how in study.objectives().items():
        values = [
            (r[key], t) for t in reached for r in t.rows if r.get("epoch") == epoch and isinstance(r.get(key), float)
        ]
        if not values:
            lines.append(f"  {key}: none reported")
            continue
        value, trial = (max if how == "max" else min)(values, key=lambda v: v[0])
        params = (trial.folder.read_trial() or {}).get("params", {})
        shown = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())
        lines.append(f"  {how} {key} = {value:.4f}: {trial.folder.name} (trial {trial.number})  {shown}")
    return lines


def report(study_dir: str | Path, out=sys.stdout) -> int:
    """Prints where the study at ``study_dir`` stands; returns the exit status (module docstring)."""
    study_dir = Path(study_dir).expanduser()
    folder = StudyFolder(study_dir)
    yaml_path = study_dir / folder.STUDY
    if not study_dir.is_dir() or (not yaml_path.exists() and not folder.trials()):
        print(f"error: {study_dir} is not a study folder (no {folder.STUDY}, no trial folders)", file=sys.stderr)
        return NOT_A_STUDY

    def say(line: str = "") -> None:
        print(line, file=out)

    damage: list[str] = []
    study = None
    try:
        study = load_study_file(yaml_path)
    except (ConfigError, OSError) as e:
        damage.append(f"{yaml_path} is unreadable: {e}")
    say(f"study: {study.name if study else study_dir.name}  ({study_dir})")
    who = holder(study_dir)
    live = who is not None and who.alive
    say(who.describe() if who else "launcher: none holds the study")
    if who and who.command:
        say(f"  its command: {who.command}")

    trials = read_trials(folder)
    counts = Counter(t.status for t in trials)
    planned = num_trials(study) if study else None
    cut_short = counts[Status.RUNNING] + counts[None] if not live else 0
    parts = [f"{counts[s]} {s.value}" for s in Status if counts[s] and not (s is Status.RUNNING and not live)]
    if cut_short:
        parts.append(f"{cut_short} cut short")
    not_started = max(planned - len(trials), 0) if planned is not None else 0
    if not_started:
        parts.append(f"{not_started} not started")
    say(f"trials: {', '.join(parts) or 'none yet'}" + (f" (of {planned} planned)" if planned is not None else ""))
    for t in trials:
        if t.broken:
            damage.append(f"{t.folder.name}/{TrialFolder.STATUS} is unreadable: {t.broken}")
        word = t.status.value if t.status else "no status"
        if t.status is Status.RUNNING and not live:
            word = "cut short"
        of = f"/{study.epochs}" if study else ""
        say(f"  {t.folder.name:28s} #{t.number if t.number is not None else '?':<4} {word:10s} epoch {t.epochs}{of}")
    if study:
        for line in best_at_budget(study, trials):
            say(line)

    if folder.optuna_db.exists() and study:
        from geoloc.tuning.recovery import StorageBusy, StorageDamaged, check_optuna_storage

        try:
            check_optuna_storage(study_dir, study.name)
        except StorageBusy as e:
            say(f"optuna:    {e}: not checked this time (ask again)")
        except StorageDamaged as e:
            damage.append(f"the Optuna storage {e}")
    for line in damage:
        say(f"damaged: {line}")

    resume = f"python tune_main.py {yaml_path} --storage {study_dir.parent} --resume"
    if any("Optuna storage" in d for d in damage):
        resume += " --rebuild-optuna"
    say("")
    say(f"resume:    {resume}")
    say(f"watch:     python tune_main.py status {study_dir}")
    say(f"           tensorboard --logdir {study_dir}")
    say(f"           optuna-dashboard {folder.optuna_url}")
    say(f"analyse:   python -m analysis {study_dir}")

    if damage:
        verdict, code = "damaged: fix or rebuild before resuming (see above)", INTERRUPTED
    elif live:
        verdict, code = "running", HEALTHY
    elif cut_short or not_started or planned is None:
        verdict, code = "interrupted: no launcher runs it and trials are left; resume it (above)", INTERRUPTED
    else:
        verdict, code = "finished", HEALTHY
    say(f"status: {verdict}")
    return code
