"""The cluster path as a user runs it, with real processes: ``ray start`` of a head (token
authentication, the dashboard's job server) and of a second node joined to it, then
``ray job submit --working-dir .`` of studies, ``ray job stop`` mid-study and a resubmission with
``--resume``. The commands are the README's (``CLUSTER_COMMANDS``); two nodes on one machine
add only distinct ports and temporary folders, which separate machines do not need.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from geoloc.study.folders import Status, StudyFolder, TrialFolder

from .studyutil import (
    AGENT_FLAGS,
    ROOT,
    TINY_STUDY,
    ended,
    free_ports,
    optuna_trials,
    read_metrics,
    read_status,
    trial_dirs,
    write_study,
)
from .test_figures_unchanged import FIGURES, NOT_FIGURES, as_recorded, studies

pytestmark = pytest.mark.slow

# The README's commands, word for word (test_the_readme_gives_the_commands_this_test_runs).
CLUSTER_COMMANDS = {
    "head": "ray start --head --port=6379 --dashboard-port=8265",
    "node": "ray start --address=HEAD_IP:6379",
    "submit": "ray job submit --address=http://localhost:8265 --working-dir=. --",
    "stop": "ray job stop --address=http://localhost:8265 JOB_ID",
}
# Forbidden in a job's log: Ray's warnings that read like lost results.
LOST_RESULTS = re.compile(r"Failed to fetch metrics|were not found|Traceback")
CLUSTER_MARKER = "GEOLOC_TEST_CLUSTER"  # in the environment of every process of a test cluster


def readme_command(name: str, **values: str) -> list[str]:
    """A README command with its placeholders (``HEAD_IP:6379``, ``JOB_ID``, ...) replaced."""
    command = CLUSTER_COMMANDS[name]
    for placeholder, value in values.items():
        command = command.replace(placeholder, value)
    return command.split()


class LocalCluster:
    """A head and one more node started with ``ray start --block`` (so that stopping the two
    processes stops everything they started), each with its own temporary folder."""

    def __init__(self, env: dict):
        self.env = env
        self.tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a limit
        self.env[CLUSTER_MARKER] = str(self.tmp)
        gcs, dashboard, *agent_ports = free_ports(10)
        self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"
        self.procs: list[subprocess.Popen] = []
        self.start(readme_command("head", **{"6379": str(gcs), "8265": str(dashboard)}), agent_ports[:4], "head")
        self.start(readme_command("node", **{"HEAD_IP:6379": self.gcs}), agent_ports[4:], "node")
        self.wait_for_nodes(2)

    def start(self, command: list[str], ports: list[int], name: str) -> None:
        one_machine = [
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--temp-dir={self.tmp / name}",  # else the second node shares (and cleans) the head's files
            *(f"--{flag}={port}" for flag, port in zip(AGENT_FLAGS, ports, strict=True)),
            "--disable-usage-stats",
            "--block",
        ]
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        self.procs.append(subprocess.Popen(command + one_machine, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = subprocess.run(
                ["ray", "status", f"--address={self.gcs}"], env=self.env, capture_output=True, text=True
            )
            if status.returncode == 0 and len(re.findall(r"^\s*1 node_", status.stdout, re.M)) == n:
                return
            time.sleep(1)
        raise AssertionError(f"{n} Ray nodes did not come up: {(self.tmp / 'head.log').read_text()[-2000:]}")

    def processes(self) -> list[int]:
        """Every live process of this cluster: they inherit its marker in their environment (Ray
        renames its workers' command lines, so these cannot be found by command line)."""
        marker = f"{CLUSTER_MARKER}={self.tmp}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
        return found

    def shutdown(self) -> list[int]:
        """Stop both nodes; the processes that outlived them by 30 s (then killed) are returned."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        deadline = time.time() + 30
        while (left := self.processes()) and time.time() < deadline:
            time.sleep(1)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return left

    def job(self, *args, wait: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        *submit, dashes = readme_command("submit", **{"http://localhost:8265": self.dashboard})
        return subprocess.run(
            [*submit, *([] if wait else ["--no-wait"]), dashes, "python", "tune_main.py", *map(str, args)],
            env=env or self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def stop(self, job_id: str) -> subprocess.CompletedProcess:
        stop = readme_command("stop", **{"http://localhost:8265": self.dashboard, "JOB_ID": job_id})
        return subprocess.run(stop, env=self.env, capture_output=True, text=True, timeout=120)

    def logs(self, job_id: str) -> str:
        logs = ["ray", "job", "logs", f"--address={self.dashboard}", job_id]
        return subprocess.run(logs, env=self.env, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def cluster():
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",  # as README: every node and client holds the same token
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_JOB_STOP_WAIT_TIME_S": "60",  # as README: a stopped job gets time to save its state
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)
    started = LocalCluster(env)
    yield started
    left = started.shutdown()
    assert not left, f"Ray processes outlived the cluster: {left}"


def job_id(output: str) -> str:
    return re.search(r"Job '(raysubmit_\w+)' submitted successfully", output).group(1)


def test_the_readme_gives_the_commands_this_test_runs():
    readme = (ROOT / "README.md").read_text()
    for command in CLUSTER_COMMANDS.values():
        assert command in readme, command
    assert "RAY_AUTH_MODE=token" in readme and "RAY_JOB_STOP_WAIT_TIME_S" in readme


def test_a_job_without_the_token_is_refused(cluster):
    assert len(cluster.processes()) >= 6  # two nodes' Ray processes, found as the teardown's check finds them
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # another cluster's token
    proc = cluster.job("--help", env=env)
    assert proc.returncode != 0 and "Authentication" in proc.stdout + proc.stderr, proc.stdout[-2000:]


def test_a_submitted_study_runs_on_both_nodes_and_gives_the_local_figures(cluster, tmp_path, offline_root_session):
    study_file = write_study(tmp_path / "grid.yaml", studies()["grid"], offline_root_session)
    proc = cluster.job(study_file, "--storage", tmp_path / "shared", "--no-analysis")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-3000:]
    assert not LOST_RESULTS.search(log), LOST_RESULTS.search(log).group(0) + log[-3000:]

    study_dir = tmp_path / "shared" / "grid"
    trials = StudyFolder(study_dir).trials()
    assert len({t.read_metrics().last["node_id"] for t in trials}) == 2  # trials ran on both nodes
    assert sorted(t.state.name for t in optuna_trials(study_dir, "grid")) == ["COMPLETE"] * 4
    recorded = json.loads(FIGURES.read_text())["grid"]  # the same study, run locally before
    for trial in trials:
        number = str(trial.read_trial()["number"])
        rows = [{k: v for k, v in row.items() if k not in NOT_FIGURES} for row in trial.read_metrics().rows]
        assert trial.read_trial()["params"] == recorded[number]["params"]
        assert as_recorded(rows, recorded[number]["metrics"]) == recorded[number]["metrics"], (
            f"trial {number}: other metrics as a job"
        )
    assert not (study_dir / StudyFolder.LOCK).exists()
    assert served_study_names(study_dir) == ["grid"]  # as the README's optuna-dashboard command shows it


def served_study_names(study_dir: Path) -> list[str]:
    """The README's way to watch a study: ``optuna-dashboard`` on its ``optuna.db``, asked over HTTP."""
    (port,) = free_ports(1)
    server = subprocess.Popen(
        ["optuna-dashboard", StudyFolder(study_dir).optuna_url, "--port", str(port), "--quiet"],
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as reply:
                    return [study["study_name"] for study in json.load(reply)["study_summaries"]]
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_stopped_job_resubmitted_with_resume_loses_and_repeats_no_trial(cluster, tmp_path, offline_root_session):
    study = copy.deepcopy(TINY_STUDY)
    study["base"]["train"]["epochs"] = 4
    study["base"]["data"]["offline"]["n_train"] = 4000  # epochs long enough to be stopped mid-way
    study_file = write_study(tmp_path / "s.yaml", study, offline_root_session)
    study_dir = tmp_path / "shared" / "tiny"
    args = (study_file, "--storage", tmp_path / "shared", "--no-analysis")

    first = job_id(cluster.job(*args, wait=False).stdout)
    deadline = time.time() + 300
    while len(ended(study_dir)) < 2 and time.time() < deadline:
        time.sleep(0.5)
    uploaded = list((cluster.tmp / "head").glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*/"))
    assert uploaded and {p.name for p in uploaded[0].iterdir()} >= {"geoloc", "analysis", "studies", "tune_main.py"}
    assert not {p.name for p in uploaded[0].iterdir()} & {".venv", "results", "tests", "bench", ".git"}
    before = {t.name: read_metrics(t) for t in ended(study_dir)}

    assert cluster.stop(first).returncode == 0
    logs = cluster.logs(first)
    assert "interrupted:" in logs and "resume with:" in logs and "--resume" in logs, logs[-3000:]
    assert "stopped by ASHA" in logs or "finished" in logs

    proc = cluster.job(*args, "--resume")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-3000:]
    assert not LOST_RESULTS.search(log), log[-3000:]
    trials = trial_dirs(study_dir)
    assert len(trials) == study["search"]["num_samples"]
    for name, metrics in before.items():  # trials that ended before the stop: kept, not rerun
        assert read_metrics(study_dir / name) == metrics
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in optuna_trials(study_dir, "tiny")}
    assert sorted(states) == sorted(t.name.removeprefix(TrialFolder.PREFIX) for t in trials)
    for t in trials:
        status = read_status(t)
        assert [m["epoch"] for m in read_metrics(t)] == list(range(1, status.epochs + 1)), t.name  # none twice
        expected = {Status.FINISHED: "COMPLETE", Status.STOPPED: "PRUNED"}[status.status]
        assert states[t.name.removeprefix(TrialFolder.PREFIX)] == expected
