"""``python tune_main.py status STUDY_DIR`` on a study in each state, each reached for real: running
(a launcher in the background), interrupted (its driver killed with SIGKILL), finished (resumed to its
end), damaged (a truncated ``optuna.db``, a broken ``status.json``), and a path that is not a study.
The status command starts no Ray and takes no lock, so it answers while the launcher runs."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys

import pytest

from geoloc.study.folders import StudyFolder, TrialFolder

from .studyutil import ROOT, TINY_STUDY, start_study, trial_dirs, wait_for, write_study
from .studyutil import tune_main as run_tune_main

pytestmark = pytest.mark.slow


def status(study_dir) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tune_main.py"), "status", str(study_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def verdict(proc) -> str:
    return proc.stdout.strip().splitlines()[-1]


EPOCHS = 8  # a trial's epochs take seconds, so the test sees one running after its first epoch


def running_with_an_epoch(trial) -> bool:
    record = TrialFolder(trial).read_status()
    return record is not None and record.status.value == "running" and bool(TrialFolder(trial).read_metrics().rows)


def test_status_of_a_running_an_interrupted_a_finished_and_a_damaged_study(tmp_path, offline_root_session):
    study = copy.deepcopy(TINY_STUDY)
    study["search"]["num_samples"] = 4
    study["search"]["max_concurrent"] = 1  # one trial after another: long enough to be seen running
    study["scheduler"] = {"type": "none"}
    study["base"]["train"]["epochs"] = EPOCHS
    study_file = write_study(tmp_path / "s.yaml", study, offline_root_session)
    storage, study_dir = tmp_path / "results", tmp_path / "results" / "tiny"

    # not a study: a folder without study.yaml or trials, and a missing path
    for path in (tmp_path, tmp_path / "nowhere"):
        proc = status(path)
        assert proc.returncode == 2 and "not a study" in proc.stderr, proc.stdout + proc.stderr

    driver = start_study(study_file, storage)
    try:
        wait_for(lambda: any(running_with_an_epoch(t) for t in trial_dirs(study_dir)), what="a trial past its epoch 1")
        # Frozen until it is killed: it starts no further trial, so the study cannot end before the kill,
        # however long the checks below take on a loaded machine (it did once, all six trials ended).
        os.killpg(driver.pid, signal.SIGSTOP)
        proc = status(study_dir)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert verdict(proc) == "status: running", proc.stdout
        assert f"pid {driver.pid}" in proc.stdout and ": alive" in proc.stdout, proc.stdout
        assert re.search(r"\d+ running", proc.stdout), proc.stdout
        assert "(of 4 planned)" in proc.stdout
        assert (study_dir / StudyFolder.LOCK).exists()  # the launcher still holds its lock
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray, like a lost SSH session
        driver.wait()
    proc = status(study_dir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert verdict(proc).startswith("status: interrupted"), proc.stdout
    assert f"pid {driver.pid}" in proc.stdout and "stale" in proc.stdout, proc.stdout
    assert "resume:    python tune_main.py" in proc.stdout and "--resume" in proc.stdout
    assert f"analyse:   python -m analysis {study_dir}" in proc.stdout
    resume = proc.stdout.split("resume:    ")[1].splitlines()[0].split()
    assert resume[:2] == ["python", "tune_main.py"]

    # the printed resume command finishes the study
    done = run_tune_main(*resume[2:], "--no-analysis")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    proc = status(study_dir)
    assert proc.returncode == 0 and verdict(proc) == "status: finished", proc.stdout + proc.stderr
    assert "launcher: none holds the study" in proc.stdout
    trials = trial_dirs(study_dir)
    counts = {s: sum(TrialFolder(t).read_status().status.value == s for t in trials) for s in ("finished", "stopped")}
    assert f"{counts['finished']} finished" in proc.stdout
    for t in trials:  # every trial with its epochs
        record = TrialFolder(t).read_status()
        assert re.search(rf"{t.name}\s+#\d+\s+{record.status.value}\s+epoch {record.epochs}/{EPOCHS}", proc.stdout)
    # the best score at the full budget, a known answer from the trials' own logs
    best = max(r["score"] for t in trials for r in TrialFolder(t).read_metrics().rows if r["epoch"] == EPOCHS)
    assert f"best so far at the budget ({EPOCHS} epochs):" in proc.stdout
    assert f"max score = {best:.4f}" in proc.stdout, proc.stdout

    # damaged: a broken status.json, then a truncated optuna.db
    broken = TrialFolder(trials[0]).path / TrialFolder.STATUS
    kept = broken.read_bytes()
    broken.write_text('{"status": "finis')
    proc = status(study_dir)
    assert proc.returncode == 1 and verdict(proc).startswith("status: damaged"), proc.stdout
    assert f"damaged: {trials[0].name}/status.json is unreadable" in proc.stdout
    broken.write_bytes(kept)
    db = StudyFolder(study_dir).optuna_db
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    proc = status(study_dir)
    assert proc.returncode == 1 and verdict(proc).startswith("status: damaged"), proc.stdout
    assert "damaged: the Optuna storage" in proc.stdout and "--rebuild-optuna" in proc.stdout
    db.write_bytes(data)
    assert status(study_dir).returncode == 0
