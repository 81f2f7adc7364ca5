"""scripts/slurm/ray_study.sbatch: the SLURM start-up of a Ray cluster and a study on it.

The slow test runs the script with bash on this machine as SLURM would run it in a one-node
allocation (the SLURM variables set by hand; no scontrol or srun needed), and checks that the study
completes and that nothing the script started outlives it.
"""

from __future__ import annotations

import copy
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from geoloc.study.folders import Status, StudyFolder

from .studyutil import ROOT, TINY_STUDY, read_metrics, read_status, trial_dirs, write_study

SCRIPT = ROOT / "scripts" / "slurm" / "ray_study.sbatch"


def sbatch_options(text: str) -> list[str]:
    """The #SBATCH lines sbatch reads: those before the first command (## lines are off)."""
    options = []
    for line in text.splitlines():
        if line.startswith("#SBATCH"):
            options.append(line.removeprefix("#SBATCH").split("#")[0].strip())
        elif line.strip() and not line.startswith("#"):
            break
    return options


def test_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_header_asks_one_task_per_node_with_cpus_and_gpus_per_node():
    options = sbatch_options(SCRIPT.read_text())
    assert "--ntasks-per-node=1" in options
    assert any(re.fullmatch(r"--nodes=\d+", o) for o in options)
    assert any(re.fullmatch(r"--cpus-per-task=\d+", o) for o in options)
    assert any(re.fullmatch(r"--gpus-per-node=(\w+:)?\d+|--gres=gpu(:\w+)?:\d+", o) for o in options), options


def test_script_never_stops_every_ray_process_of_the_user():
    """`ray stop` kills every Ray process of the user on the node, another job's too: the script
    stops what it started, from traps that also run on failure and on scancel (SIGTERM)."""
    commands = [line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")]
    bare_stop = re.compile(r'\bray(\.scripts\.scripts)?\s+stop\b|ray_cmd\[@\]\}"\s+stop\b')
    assert not [c for c in commands if bare_stop.search(c)]
    assert any(re.match(r"\s*trap cleanup EXIT\b", c) for c in commands)
    assert any(re.match(r"\s*trap\s+(?!-\s)\S.*\bTERM\b", c) for c in commands)


def processes_with_env(marker: bytes) -> list[int]:
    """Processes whose environment holds marker: whatever the script started, Ray's workers included
    (their command lines are rewritten to ray::..., their environment is inherited)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in env:
                found.append(int(proc.name))
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:150].decode(errors="replace")
    except OSError:
        return f"{pid} (gone)"


def stub(folder: Path, name: str, called: Path) -> None:
    """A command that records being called and fails."""
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{called}"\nexit 1\n')
    path.chmod(0o755)


@pytest.mark.slow
def test_one_node_allocation_runs_the_study_and_leaves_no_ray_process(tmp_path, offline_root_session):
    study = copy.deepcopy(TINY_STUDY)
    study["search"] = {"algorithm": "random", "num_samples": 2, "max_concurrent": 2}
    study["scheduler"] = {"type": "none"}
    study["base"]["train"]["epochs"] = 1
    study_file = write_study(tmp_path / "s.yaml", study, offline_root_session)
    storage, study_dir = tmp_path / "results", tmp_path / "results" / "tiny"

    job_id = str(random.randrange(10**6, 10**7))  # unique: marks every process of this run
    stubs, called = tmp_path / "bin", tmp_path / "called"
    stubs.mkdir()
    for name in ("scontrol", "srun"):  # a one-node allocation must not need them
        stub(stubs, name, called)
    # A user who once ran a study locally: ray.init() left ~/.ray/auth_token, which makes Ray 2.60
    # turn token authentication on for `ray start --head` (and only there).
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
    env.update(
        HOME=str(home),
        RAY_START_TIMEOUT="60",  # fail in 90 s, not 330 s, when the cluster does not come up
        PATH=os.pathsep.join([str(stubs), str(Path(sys.executable).parent), env["PATH"]]),
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NODELIST=os.uname().nodename,
        SLURM_JOB_NUM_NODES="1",
        SLURM_NNODES="1",
        SLURM_CPUS_ON_NODE="2",
        SLURM_SUBMIT_DIR=str(ROOT),
    )
    marker = f"SLURM_JOB_ID={job_id}".encode()
    try:
        # Output to a file, not a pipe: a Ray process left behind would hold a pipe open, and the
        # test would wait for it instead of finding it.
        with open(tmp_path / "job.out", "w") as out:
            proc = subprocess.run(
                ["bash", str(SCRIPT), str(study_file), "--storage", str(storage), "--no-analysis"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=240,
                cwd=tmp_path,  # the script runs the study from SLURM_SUBMIT_DIR
                env=env,
            )
        log = (tmp_path / "job.out").read_text()
        assert proc.returncode == 0, log[-6000:]
        assert not called.exists(), called.read_text()
        port = int(re.search(r"Ray head on \S+ at \S+:(\d+)", log)[1])
        assert 20000 <= port < 30000, port  # from the job id: not Ray's 6379, which another job may hold
        # this job's own temp dir, and the study ran on this cluster (not on a Ray of its own)
        assert list(Path(f"/tmp/ray-{job_id}").glob("session_latest/artifacts/*/tiny")), log[-6000:]

        trials = trial_dirs(study_dir)
        assert len(trials) == 2, log[-6000:]
        for t in trials:
            assert read_status(t).status is Status.FINISHED, t
            assert [m["epoch"] for m in read_metrics(t)] == [1]
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        states = [
            t.state.name for t in optuna.load_study(study_name="tiny", storage=StudyFolder(study_dir).optuna_url).trials
        ]
        assert states == ["COMPLETE", "COMPLETE"]

        deadline = time.monotonic() + 10  # Ray's workers exit shortly after their raylet
        while (left := processes_with_env(marker)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, [command_line(p) for p in left]
    finally:
        for pid in processes_with_env(marker):  # only this run's processes
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(f"/tmp/ray-{job_id}", ignore_errors=True)
