"""The study lock (``geoloc.tuning.lock``) against real holders in other processes, on this host and "another"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from geoloc.tuning import lock as study_lock
from geoloc.tuning.lock import StudyLock, StudyLocked

from .studyutil import ROOT

LEASE_S = 2.0  # short leases, so that a lost node's lock expires within the test

HOLDER = """
import socket, sys, time
if sys.argv[2] != "-":
    socket.gethostname = lambda: sys.argv[2]  # pretend to run on another node of the cluster
from geoloc.tuning import lock
lock.LEASE_S = float(sys.argv[3])
held = lock.StudyLock(sys.argv[1])  # kept referenced: a collected lease is released
held.acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture(autouse=True)
def short_lease(monkeypatch):
    monkeypatch.setattr(study_lock, "LEASE_S", LEASE_S)


@pytest.fixture
def holder(tmp_path):
    """Start a process that takes the lock of ``study_dir`` as if on ``host`` ("-": this host)."""
    started = []

    def start(study_dir, host="-"):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(study_dir), host, str(LEASE_S)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_live_holder_on_this_host_is_named_and_the_study_is_left_alone(tmp_path, holder):
    study_dir = tmp_path / "study"
    proc = holder(study_dir)
    before = sorted(p.name for p in study_dir.iterdir())
    started = time.monotonic()
    with pytest.raises(StudyLocked) as refused:
        StudyLock(study_dir).acquire()
    assert time.monotonic() - started < 1.0
    message = str(refused.value)
    assert f"pid {proc.pid}" in message and "since 20" in message and "\n" not in message
    assert sorted(p.name for p in study_dir.iterdir()) == before == sorted([study_lock.DRIVER, study_lock.LOCK])


def test_a_holder_killed_on_this_host_is_taken_over_at_once(tmp_path, holder):
    study_dir = tmp_path / "study"
    kill(holder(study_dir))
    started = time.monotonic()
    with StudyLock(study_dir):
        assert time.monotonic() - started < 1.0
        assert study_lock.read_json(study_dir / study_lock.DRIVER)["pid"] == os.getpid()
    assert not any(study_dir.iterdir())  # released, and the dead holder's records are gone


def test_a_holder_on_another_host_is_refused_while_its_heartbeat_is_fresh(tmp_path, holder):
    study_dir = tmp_path / "study"
    holder(study_dir, host="node-b")
    time.sleep(1.5 * LEASE_S)  # older than a lease: only the heartbeat keeps it fresh
    started = time.monotonic()
    with pytest.raises(StudyLocked, match="host node-b"):
        StudyLock(study_dir).acquire()
    assert time.monotonic() - started < 1.0


def test_the_lock_of_a_lost_node_is_taken_over_after_one_lease(tmp_path, holder):
    study_dir = tmp_path / "study"
    kill(holder(study_dir, host="node-b"))  # its pid means nothing here; only the lease's age does
    time.sleep(1.5 * LEASE_S)
    started = time.monotonic()
    with StudyLock(study_dir):
        waited = time.monotonic() - started
        assert study_lock.read_json(study_dir / study_lock.DRIVER)["pid"] == os.getpid()
    assert LEASE_S <= waited < 2 * LEASE_S + 1


def test_one_process_holds_and_releases_and_a_kept_folder_stays(tmp_path):
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    (study_dir / "study.yaml").write_text("name: s\n")
    with StudyLock(study_dir):
        assert (study_dir / study_lock.LOCK).exists()
    assert sorted(p.name for p in study_dir.iterdir()) == ["study.yaml"]
    with StudyLock(study_dir):  # and it can be taken again
        pass
    with StudyLock(tmp_path / "storage" / "new"):
        pass
    assert not (tmp_path / "storage").exists()  # folders made only for the lock go with it
