"""One driver per study: the study lock.

Two launchers on one study (a job resubmitted while the first still runs, a second ``make run``)
would restore the same trials and write the same folders twice. So the launcher holds
``STUDY_DIR/.lock`` while it runs, a lease of filelock's ``SoftFileLease``: a marker file naming
its holder (host, pid), refreshed by a heartbeat thread every ``LEASE_S / 3`` seconds. Beside it,
``STUDY_DIR/driver.json`` says since when and with which command, for the refusal message.

A second launcher decides at once, with one exception, by what it finds:

- a holder that died on this host (SIGKILL, a crash): taken over at once, since filelock checks
  the recorded pid and its start time;
- a marker refreshed within ``LEASE_S``: refused (``StudyLocked``), the holder is alive on this
  host or another;
- a marker older than ``LEASE_S``, the exception (a lost node, whose pid means nothing here): it
  waits until it has itself seen the marker unchanged for ``LEASE_S`` (filelock's rule, on its own
  clock), then takes it over.

The freshness test compares the marker's modification time with this host's clock, so it assumes
the clocks of a cluster agree to well within ``LEASE_S`` (NTP); the takeover itself does not
depend on clocks.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

from filelock import SoftFileLease, Timeout

from geoloc.common.atomic import read_json, write_json
from geoloc.study.folders import StudyFolder

LEASE_S = 30.0  # every launcher must agree on it (filelock refuses a lease of another length)
LOCK, DRIVER = StudyFolder.LOCK, StudyFolder.DRIVER


class StudyLocked(Exception):
    """Another live launcher runs this study; the message names it in one line."""


class StudyLock:
    """``with StudyLock(study_dir):`` holds the study for this process (see the module docstring).

    The study folder (and its storage folder) is created for the lock if missing, and removed again
    on release when nothing else was written into it: a launcher refused for bad input leaves nothing.
    """

    def __init__(self, study_dir: str | Path):
        self.path = Path(study_dir)
        self._lease: SoftFileLease | None = None
        self._created: list[Path] = []  # the folders made for the lock, removed again while empty

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]  # deepest first
        self.path.mkdir(parents=True, exist_ok=True)
        lease = SoftFileLease(self.path / LOCK, lease_duration=LEASE_S)
        try:
            if not _try(lease, 0):
                owner = lease.owner
                if owner is None or self._marker_age() < LEASE_S:
                    raise StudyLocked(self._refusal(owner))
                print(
                    f"{self.path}: the last driver ({owner.hostname}, pid {owner.pid}) has not refreshed its lock "
                    f"for {self._marker_age():.0f} s; taking the study over in at most {2 * LEASE_S:.0f} s",
                    file=sys.stderr,
                )
                if not _try(lease, 2 * LEASE_S):
                    raise StudyLocked(self._refusal(lease.owner))
        except StudyLocked:
            self._remove_if_empty()
            raise
        self._lease = lease
        write_json(
            self.path / DRIVER,
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": shlex.join(sys.argv),
            },
        )

    def release(self) -> None:
        if self._lease is None:
            return
        (self.path / DRIVER).unlink(missing_ok=True)
        self._lease.release(force=True)
        self._lease = None
        self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        for folder in self._created:
            if not folder.is_dir() or any(folder.iterdir()):
                return
            folder.rmdir()

    def _marker_age(self) -> float:
        try:
            return time.time() - (self.path / LOCK).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _refusal(self, owner) -> str:
        who = f"host {owner.hostname}, pid {owner.pid}" if owner else "another launcher"
        driver = read_json(self.path / DRIVER) or {}
        if owner and driver.get("pid") == owner.pid:
            who += f", since {driver.get('since')}"
        return (
            f"{self.path} is being run by another launcher ({who}); wait for it to end, or stop it "
            f"(a driver that died is detected: {LEASE_S:.0f} s after its last heartbeat on another host, at once here)"
        )


def _try(lease: SoftFileLease, timeout: float) -> bool:
    try:
        lease.acquire(timeout=timeout)
    except Timeout:
        return False
    return True
