"""Helpers for tests that run real studies through tune_main.py in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from geoloc.study.folders import StatusRecord, StudyFolder, TrialFolder

ROOT = Path(__file__).resolve().parents[1]

TINY_STUDY = {
    "name": "tiny",
    "description": "test study",
    "seed": 0,
    "base": {
        "data": {"offline": {"n_train": 1500, "n_val": 200, "n_gallery": 1500, "feature_dim": 64, "views": 2}},
        "model": {"hidden_dim": 64, "depth": 1, "embed_dim": 32, "image_hidden_dim": 64},
        "train": {"epochs": 3, "batch_size": 128, "queue_size": 128, "lr": 1e-3, "device": "cpu"},
    },
    "search_space": {
        "train.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
        "train.noise.batch_sigma": {"type": "choice", "values": [0.0, 1.0]},
    },
    "search": {"algorithm": "tpe", "num_samples": 6, "max_concurrent": 2, "n_startup_trials": 3},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1},
    "failure": {"max_failures": 0},
}


def write_study(path: Path, study: dict, offline_root: str) -> Path:
    study = json.loads(json.dumps(study))
    study["base"]["data"]["offline"]["root"] = offline_root
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def tune_main(*args, timeout: int = 600, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "tune_main.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        **kwargs,
    )


def trial_dirs(study_dir: Path) -> list[Path]:
    return [t.path for t in StudyFolder(study_dir).trials()]


def read_status(trial: Path) -> StatusRecord | None:
    return TrialFolder(trial).read_status()


def read_metrics(trial: Path) -> list[dict]:
    return TrialFolder(trial).read_metrics().rows


def start_study(study_file: Path, storage: Path, *extra, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """tune_main.py in the background, in a session of its own (so that a test can kill all it started)."""
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tune_main.py"),
            str(study_file),
            "--storage",
            str(storage),
            "--no-analysis",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        cwd=ROOT,
        start_new_session=True,
    )


def ended(study_dir: Path) -> list[Path]:
    """The trial folders whose status says finished or stopped."""
    return [t for t in trial_dirs(study_dir) if TrialFolder(t).ended()] if study_dir.exists() else []


def optuna_trials(study_dir: Path, name: str = "tiny"):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=StudyFolder(study_dir).optuna_url).trials


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


AGENT_FLAGS = (  # the per-node ports that two Ray nodes on one machine must not share
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


class RayHead:
    """A one-node Ray instance started with ``ray start --head --block`` on free ports and a temporary
    folder of its own, so that stopping its one process stops everything it started. Launchers join it
    with ``--address``: a study then spends no Ray start and stop of its own (about 8 s on 2 cores)."""

    def __init__(self, num_cpus: int = 2):
        self.tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a limit
        gcs, *agent = free_ports(1 + len(AGENT_FLAGS))
        self.address = f"127.0.0.1:{gcs}"
        # Ray's token authentication (on by default): clients that join need RAY_AUTH_MODE=token too, and
        # find the token where ``ray start`` keeps it (~/.ray/auth_token).
        self.env = {"RAY_AUTH_MODE": "token"}  # what a launcher that joins it needs beside its --address
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **self.env}
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--port={gcs}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--temp-dir={self.tmp}",
            *(f"--{flag}={port}" for flag, port in zip(AGENT_FLAGS, agent, strict=True)),
            "--disable-usage-stats",
            "--block",
        ]
        log = open(self.tmp / "head.log", "w")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        status = [command[0], "status", f"--address={self.address}"]
        while subprocess.run(status, env=env, capture_output=True).returncode:
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"the shared Ray head did not come up: {(self.tmp / 'head.log').read_text()[-2000:]}"
                )
            time.sleep(1)

    def stop(self) -> None:
        """SIGTERM to the head's process (it stops what it started), then its whole session, then its folder."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_for(condition, timeout=300, what=""):
    """Poll ``condition`` every half second until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
