"""A damaged Optuna storage: recognised in one line, and the study's record rebuilt from its trial folders
(geoloc/tuning/recovery.py). Real SQLite storages written by the real searcher; the last test runs real studies."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest

import tune_main
from geoloc.study.folders import Status, StatusRecord, StudyFolder
from geoloc.study.studyfile import load_study_file, num_trials
from geoloc.tuning.optuna_trials import WORKER_FAILED, enqueued
from geoloc.tuning.recovery import (
    RebuildError,
    StorageBusy,
    StorageDamaged,
    check_optuna_storage,
    rebuild_optuna_storage,
)
from geoloc.tuning.searcher import OptunaStudySearcher

from .studyutil import TINY_STUDY, read_metrics, read_status, start_study, trial_dirs, write_study
from .studyutil import tune_main as run_tune_main

DIVERGED = "training loss is nan at epoch 2; the trial diverged"
EPOCHS = {"finished": 3, "stopped": 1, "diverged": 1, "died": 2, "running": 2, "starting": 0}

# TPE over every kind of entry (log float, int with a step, choice, a conditional one), the base enqueued.
TPE = {
    "space": {
        "train.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
        "train.noise.batch_sigma": {"type": "choice", "values": [0.0, 1.0]},
        "train.queue_size": {"type": "int", "low": 0, "high": 512, "step": 128},
        "train.noise.queue_sigma": {"type": "uniform", "low": 0.0, "high": 2.0, "when": {"train.noise.batch_sigma": 1}},
    },
    "search": {"algorithm": "tpe", "num_samples": 10, "n_startup_trials": 2, "enqueue_base": True},
    "outcomes": ["finished", "stopped", "diverged", "died", "asked", "running", "starting", "finished"],
}
# A grid with repeats (train.seed is a grid-only axis): 8 cells, the last three not started at the crash.
GRID = {
    "space": {
        "train.noise.batch_sigma": {"type": "choice", "values": [0.0, 1.0]},
        "train.queue_size": {"type": "choice", "values": [0, 128]},
    },
    "search": {"algorithm": "grid", "repeats": 2},
    "outcomes": ["finished", "stopped", "diverged", "asked", "running"],
}
# A pareto study (NSGA-II, MOASHA) with a choice among lists, which Optuna stores as JSON.
PARETO = {
    "space": {
        "train.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
        "model.rff_scales": {"type": "choice", "values": [[1, 16, 256], [1, 16, 256, 4096]]},
    },
    "search": {"algorithm": "nsga2", "num_samples": 10, "enqueue_base": True},
    "study": {"objective": {"type": "pareto", "metrics": ["acc_1km", "val_loss"]}, "scheduler": {"type": "moasha"}},
    "outcomes": ["finished", "stopped", "diverged", "died", "asked", "running", "starting", "finished"],
}


def score(number: int, epoch: int) -> float:
    return 0.1 * number + epoch / 7  # not round in binary: the rebuilt values must be the same floats


def metrics_row(number: int, epoch: int) -> dict:
    """A metrics row with the score and the pareto objectives of ``PARETO``."""
    return {"epoch": epoch, "score": score(number, epoch), "acc_1km": score(number, epoch) / 3, "val_loss": 5 / epoch}


def make_study(tmp_path: Path, kind: dict):
    """A study folder and its Optuna storage written the way a run writes them, with no Ray: the searcher
    proposes and records, the test plays the workers (trial.json, metrics.jsonl, the worker's status)."""
    spec = copy.deepcopy(TINY_STUDY)
    spec["search_space"], spec["search"] = kind["space"], kind["search"]
    spec.update(kind.get("study", {}))
    study = load_study_file(write_study(tmp_path / "study.yaml", spec, str(tmp_path / "offline")))
    folder = StudyFolder(tmp_path / "results" / study.name)
    folder.path.mkdir(parents=True)
    searcher = OptunaStudySearcher(study, folder.path, folder.optuna_url)
    for i, outcome in enumerate(kind["outcomes"]):
        tid = f"{i:05d}abc"
        suggestion = searcher.suggest(tid)
        if outcome == "asked":
            continue  # the driver died before this trial's worker wrote trial.json
        trial = folder.trial(tid)
        trial.path.mkdir()
        trial.write_trial(tid, suggestion["number"], suggestion["params"])
        trial.write_status(StatusRecord(Status.RUNNING, 0, study.epochs, pid=os.getpid()))
        rows = [metrics_row(suggestion["number"], e) for e in range(1, EPOCHS[outcome] + 1)]
        for row in rows:
            trial.append_metrics(row)
        ends = outcome in ("finished", "stopped")
        for row in rows[:-1] if ends else rows:  # Ray hands an ended trial's last result to on_trial_complete only
            searcher.on_trial_result(tid, row)
        if ends:
            searcher.on_trial_complete(tid, rows[-1])
        elif outcome == "diverged":
            trial.write_status(StatusRecord(Status.ERRORED, 1, study.epochs, reason=DIVERGED))
            searcher.on_trial_complete(tid, error=True)
        elif outcome == "died":
            searcher.on_trial_complete(tid, error=True)
    # A rerun set aside by an earlier resume: its number is taken by a live folder, and it must be ignored.
    orphan = StudyFolder(folder.path / StudyFolder.ORPHANS).trial("old")
    orphan.path.mkdir(parents=True)
    orphan.write_trial("old", 1, {"train.noise.batch_sigma": 1.0})
    return study, folder


def record(folder: StudyFolder, name: str) -> dict:
    """What the study's Optuna record says, in plain data."""
    storage = optuna.storages.RDBStorage(folder.optuna_url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = [
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "distributions": t.distributions,
                "values": t.values,
                "intermediate_values": t.intermediate_values,
                "user_attrs": t.user_attrs,
                "fixed_params": t.system_attrs.get("fixed_params"),
            }
            for t in study.get_trials()
        ]
        return {"name": study.study_name, "directions": [d.name for d in study.directions], "trials": trials}
    finally:
        storage.engine.dispose()


def damage(db: Path, how: str, committed: int | None = None) -> None:
    """``committed``: the size of the committed database, when a hot journal holds a longer file's undo."""
    data = db.read_bytes()
    if how == "truncated":  # a full disk or an interrupted copy
        db.write_bytes(data[: (committed or len(data)) // 2])
    elif how == "garbled":  # pages overwritten in the middle, the header intact
        noise = random.Random(0).randbytes(8192)
        db.write_bytes(data[:8192] + noise + data[8192 + len(noise) :])
    elif how == "garbage":
        db.write_bytes(random.Random(0).randbytes(len(data)))
    elif how == "empty":
        db.write_bytes(b"")


def kill_a_writer(db: Path) -> None:
    """A process killed inside a write transaction: it leaves a hot journal beside the database."""
    code = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA cache_size=1'); db.execute('BEGIN')\n"
        "db.execute('CREATE TABLE junk(x)')\n"
        "for _ in range(100): db.execute('INSERT INTO junk VALUES (?)', (os.urandom(4000),))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True)
    assert Path(f"{db}-journal").stat().st_size > 0


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its content's hash (the lock's files, written by every launcher, left out)."""
    skip = {StudyFolder.LOCK, StudyFolder.DRIVER}
    return {
        str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def asked_without_folder(trial: dict) -> dict:
    """The documented rebuild of a trial asked just before the crash: RUNNING, only its fixed params known."""
    return {**trial, "params": {}, "distributions": {}, "intermediate_values": {}, "user_attrs": {}}


# -- checking --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "garbled", "garbage", "empty", "truncated, with a hot journal"])
def test_damage_is_recognised_in_one_line_and_nothing_changes(tmp_path, how):
    study, folder = make_study(tmp_path, GRID)
    committed = folder.optuna_db.stat().st_size
    if "journal" in how:  # (cutting only what the killed writer added would leave a whole database)
        kill_a_writer(folder.optuna_db)
    damage(folder.optuna_db, how.split(",")[0], committed)
    before = snapshot(folder.path)
    with pytest.raises(StorageDamaged) as e:
        check_optuna_storage(folder.path, study.name)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{folder.optuna_db} is damaged (")
    expected = {"empty": "the file is empty", "garbage": "file is not a database"}.get(how, "malformed")
    assert expected in e.value.reason, message
    assert snapshot(folder.path) == before


def test_an_intact_storage_passes_even_with_the_hot_journal_of_a_killed_writer(tmp_path):
    study, folder = make_study(tmp_path, GRID)
    check_optuna_storage(folder.path, study.name)
    kill_a_writer(folder.optuna_db)  # what a SIGKILLed driver can leave: the next writer rolls it back
    check_optuna_storage(folder.path, study.name)
    with pytest.raises(StorageDamaged, match="holds no study named 'other'"):
        check_optuna_storage(folder.path, "other")


def test_a_storage_locked_by_a_live_writer_is_busy_not_damaged(tmp_path, capsys):
    """SQLite's locks end with their process, so a locked ``optuna.db`` is one a live process is writing
    (a launcher caught mid-transaction by ``status``): neither the check, nor ``status``, nor a resume
    calls it damaged or offers to rebuild it, and nothing changes."""
    import sqlite3

    study, folder = make_study(tmp_path, GRID)
    shutil.copyfile(tmp_path / "study.yaml", folder.path / "study.yaml")  # where a launcher keeps it: status reads it
    before = snapshot(folder.path)
    writer = sqlite3.connect(folder.optuna_db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # what a writer holds while it commits
    try:
        with pytest.raises(StorageBusy, match="is locked by a process writing to it"):
            check_optuna_storage(folder.path, study.name)
        assert tune_main.main(["status", str(folder.path)]) in (0, 1)
        out = capsys.readouterr().out
        assert "is locked by a process writing to it: not checked" in out and "damaged" not in out, out
        argv = [str(tmp_path / "study.yaml"), "--storage", str(folder.path.parent), "--resume"]
        assert tune_main.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is locked by a process writing to it; stop that process" in err, err
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert snapshot(folder.path) == before
    check_optuna_storage(folder.path, study.name)  # intact once the writer is gone


# -- rebuilding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [TPE, GRID, PARETO], ids=["tpe", "grid", "pareto"])
def test_rebuilt_record_equals_the_record_before_the_damage(tmp_path, kind):
    study, folder = make_study(tmp_path, kind)
    before = record(folder, study.name)
    committed = folder.optuna_db.stat().st_size
    if kind is GRID:  # with the journal of a killed writer, which must not be rolled back into the fresh file
        kill_a_writer(folder.optuna_db)
    damage(folder.optuna_db, "truncated", committed)
    damaged = folder.optuna_db.read_bytes()
    journal = Path(f"{folder.optuna_db}-journal").read_bytes() if kind is GRID else None

    summary = rebuild_optuna_storage(study, folder.path)

    asked = kind["outcomes"].index("asked")  # the Ray ids follow the order in which trials were asked
    expected = [asked_without_folder(t) if t["number"] == asked else t for t in before["trials"]]
    after = record(folder, study.name)
    assert after == {**before, "trials": expected}
    assert after["directions"] == (["MAXIMIZE", "MINIMIZE"] if kind is PARETO else ["MAXIMIZE"])
    assert after["name"] == study.name
    finished = [t for t in after["trials"] if t["state"] == "COMPLETE"]
    if kind is PARETO:  # both objectives of every finished trial, its epochs' values as a user attribute
        assert finished and all(t["values"] == [t["values"][0], 5 / 3] for t in finished)
        assert all(t["user_attrs"]["epoch_values"]["3"] == t["values"] for t in finished)
        assert {tuple(t["params"]["model.rff_scales"]) for t in after["trials"] if t["params"]} <= {
            (1, 16, 256),
            (1, 16, 256, 4096),
        }
    states = [t["state"] for t in after["trials"]]
    assert states[: len(kind["outcomes"])] == [
        {"finished": "COMPLETE", "stopped": "PRUNED", "diverged": "FAIL", "died": "FAIL"}.get(o, "RUNNING")
        for o in kind["outcomes"]
    ]
    fail_reasons = [t["user_attrs"]["fail_reason"] for t in after["trials"] if t["state"] == "FAIL"]
    assert fail_reasons == [DIVERGED, WORKER_FAILED][: len(fail_reasons)]
    queue = enqueued(study)
    assert queue and [t["fixed_params"] for t in after["trials"][: len(queue)]] == queue
    if kind is GRID:
        assert states[len(kind["outcomes"]) :] == ["WAITING"] * 3
    assert summary.damaged.read_bytes() == damaged and summary.damaged.name.startswith("optuna.db.damaged-")
    if journal:
        assert Path(f"{summary.damaged}-journal").read_bytes() == journal
    assert sorted(p.name for p in folder.path.glob("optuna.db*")) == sorted(
        ["optuna.db", summary.damaged.name] + ([f"{summary.damaged.name}-journal"] if journal else [])
    )
    assert summary.folders == len(kind["outcomes"]) - 1
    assert f"{len(states)} trials (" in str(summary) and "\n" not in str(summary)
    check_optuna_storage(folder.path, study.name)


def spoil_folders(folder: StudyFolder, how: str) -> None:
    trial = folder.trial("00000abc")
    doc = trial.read_trial()
    if how == "two folders, one number":
        shutil.copytree(trial.path, folder.trial("twin").path)
    elif how == "a parameter not in the space":
        trial.write_trial(doc["trial_id"], doc["number"], {**doc["params"], "train.epochs": 3})
    elif how == "a value outside its range":
        trial.write_trial(doc["trial_id"], doc["number"], {**doc["params"], "train.lr": 1.0})


@pytest.mark.parametrize(
    "how, expected",
    [
        ("two folders, one number", "both hold Optuna trial 0"),
        ("a parameter not in the space", "do not fit the study's search space"),
        ("a value outside its range", "trial.json: The value 1.0 of parameter 'train.lr' isn't contained"),
    ],
)
def test_folders_that_do_not_add_up_are_named_and_nothing_changes(tmp_path, how, expected):
    study, folder = make_study(tmp_path, TPE)
    damage(folder.optuna_db, "truncated")
    spoil_folders(folder, how)
    before = snapshot(folder.path)
    with pytest.raises(RebuildError, match=re.escape(expected)) as e:
        rebuild_optuna_storage(study, folder.path)
    assert "\n" not in str(e.value)
    assert snapshot(folder.path) == before


def test_resumed_grid_reruns_what_the_crash_cut_short_and_starts_the_waiting_cells(tmp_path):
    """On the rebuilt record the searcher's resume logic does what it does after a killed driver: the
    trial asked without a folder and the one cut short are rerun under their numbers, then the cells
    that never started, in order, each with its cell's params; then the grid is done."""
    study, folder = make_study(tmp_path, GRID)
    damage(folder.optuna_db, "garbage")
    rebuild_optuna_storage(study, folder.path)
    searcher = OptunaStudySearcher(study, folder.path, folder.optuna_url)
    suggestions = [searcher.suggest(f"new{i}") for i in range(5)]
    cells = enqueued(study)
    assert [s["number"] for s in suggestions] == [3, 4, 5, 6, 7]
    assert [s["params"] for s in suggestions] == cells[3:]
    assert searcher.suggest("one-too-many") == OptunaStudySearcher.FINISHED
    assert (folder.path / StudyFolder.ORPHANS / "trial_00004abc").is_dir()  # the cut-short run, set aside


def test_launcher_names_the_damage_and_the_rebuild_command_and_refuses_a_needless_rebuild(tmp_path, capsys):
    study, folder = make_study(tmp_path, GRID)
    argv = [str(tmp_path / "study.yaml"), "--storage", str(folder.path.parent), "--resume"]

    assert tune_main.main([*argv, "--rebuild-optuna"]) == 2  # intact: nothing to rebuild
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rebuild-optuna:" in err and "is intact, nothing to rebuild" in err

    assert tune_main.main([argv[0], "--rebuild-optuna"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --rebuild-optuna: only with --resume")

    damage(folder.optuna_db, "truncated")
    before = snapshot(folder.path)
    assert tune_main.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"error: --resume: the Optuna storage {folder.optuna_db} is damaged ("
    )
    assert "(database disk image is malformed)" in err and "the study's 4 trial folders are intact" in err
    assert err.rstrip().endswith("resume with: python tune_main.py " + " ".join(argv) + " --rebuild-optuna")
    assert snapshot(folder.path) == before


# -- end to end ------------------------------------------------------------------------------------


def signal_session(driver: subprocess.Popen, sig: int) -> None:
    """The driver and every process it started: its session (Ray's workers lead process groups of their own)."""
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if os.getsid(pid) == driver.pid:
                os.kill(pid, sig)


OPTUNA_STATE = {
    Status.FINISHED: "COMPLETE",
    Status.STOPPED: "PRUNED",
    Status.ERRORED: "FAIL",
    Status.RUNNING: "RUNNING",
}


def in_step(folder: StudyFolder, name: str) -> bool:
    """The Optuna record says what the folders say, with a trial ended and one running an epoch on:
    a moment at which a killed driver leaves a record that the folders rebuild exactly (otherwise a
    worker may have written an epoch the driver has not recorded yet, which the rebuild would add)."""
    if not folder.optuna_db.exists():
        return False
    storage = None
    try:
        storage = optuna.storages.RDBStorage(
            folder.optuna_url, engine_kwargs={"connect_args": {"timeout": 0.2}}, skip_table_creation=True
        )
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    except Exception:  # being created, or locked by the frozen driver
        return False
    finally:
        if storage is not None:
            storage.engine.dispose()
    running = [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]
    if not running or not any(t.state.is_finished() for t in trials):
        return False
    for t in trials:
        trial = folder.trial(str(t.user_attrs.get("ray_trial_id")))
        status = read_status(trial.path) if (trial.path / trial.TRIAL).exists() else None
        epochs = [m["epoch"] for m in read_metrics(trial.path)]
        if status is None or OPTUNA_STATE[status.status] != t.state.name or sorted(t.intermediate_values) != epochs:
            return False
    return len(folder.trials()) == len(trials)


@pytest.mark.slow
def test_killed_study_with_a_truncated_storage_is_rebuilt_and_completed(tmp_path, offline_root_session, capsys):
    """A real study's driver, Ray and workers are SIGKILLed mid-study (frozen first, at a moment in step,
    so the Optuna record to compare with is exact); its optuna.db is truncated; --resume refuses in one
    line and changes nothing; the rebuild equals the record before the damage, running trials included;
    --resume --rebuild-optuna completes the study, and Optuna and the trial folders agree."""
    spec = copy.deepcopy(TINY_STUDY)
    # Three trials at once on two cores: when one ends the others are mid-run (two trials started together
    # run in lockstep and end together), so moments in step are many.
    spec["search"].update(num_samples=4, max_concurrent=3)
    spec["resources"] = {"cpu": 0.5}
    spec["base"]["data"]["offline"]["n_train"] = 2000
    study_file = write_study(tmp_path / "s.yaml", spec, offline_root_session)
    storage = tmp_path / "results"
    folder = StudyFolder(storage / "tiny")
    driver = start_study(study_file, storage)
    try:
        deadline = time.time() + 240
        while True:  # freeze the driver and its workers, and kill them only at a moment the record is in step
            assert time.time() < deadline and driver.poll() is None, "the study ended before a moment in step"
            time.sleep(0.1)
            signal_session(driver, signal.SIGSTOP)
            if in_step(folder, "tiny"):
                break
            signal_session(driver, signal.SIGCONT)
    finally:
        signal_session(driver, signal.SIGKILL)  # the driver, Ray and the workers at once: a lost node
        driver.wait()
    before = record(folder, "tiny")
    states = {t["state"] for t in before["trials"]}
    assert "RUNNING" in states and states & {"COMPLETE", "PRUNED"}, states
    damage(folder.optuna_db, "truncated")
    damaged = folder.optuna_db.read_bytes()
    files = snapshot(folder.path)

    argv = [str(study_file), "--storage", str(storage), "--no-analysis", "--resume"]
    assert tune_main.main(argv) == 2  # in this process: the launcher's checks come before Ray and take no time
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged (database disk image is malformed)" in err
    assert err.rstrip().endswith(" ".join(argv) + " --rebuild-optuna")
    assert snapshot(folder.path) == files

    # The rebuild itself, on a copy of the damaged study (the launcher's rebuild is resumed at once).
    copied = StudyFolder(tmp_path / "copy" / "tiny")
    shutil.copytree(folder.path, copied.path)
    study = load_study_file(study_file)
    summary = rebuild_optuna_storage(study, copied.path)
    assert record(copied, "tiny") == before

    proc = run_tune_main(*argv, "--rebuild-optuna", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rebuilt_line = next(line for line in proc.stdout.splitlines() if line.startswith("rebuilt the Optuna record"))
    assert rebuilt_line.split(";")[0] == str(summary).split(";")[0]
    assert [p.read_bytes() for p in folder.path.glob("optuna.db.damaged-*")] == [damaged]

    after = {t["number"]: t for t in record(folder, "tiny")["trials"]}
    assert len(after) == num_trials(study) == len(trial_dirs(folder.path))
    for t in before["trials"]:
        if t["state"] != "RUNNING":  # ended before the crash: kept as they were, not rerun
            assert after[t["number"]] == t
    by_ray_id = {t["user_attrs"]["ray_trial_id"]: t for t in after.values()}
    for trial in trial_dirs(folder.path):
        status, metrics = read_status(trial), read_metrics(trial)
        assert status.status.counted, (trial.name, status)
        lines = (trial / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, status.epochs + 1))  # none twice
        t = by_ray_id[trial.name.removeprefix("trial_")]
        assert t["state"] == OPTUNA_STATE[status.status]
        assert t["intermediate_values"] == {m["epoch"]: m["score"] for m in metrics}
        assert t["values"] == [metrics[-1]["score"]]
