"""Faults a multi-day sweep meets: killed workers, a killed driver, diverging trials, bad input."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from geoloc.study.folders import Status, StudyFolder, TrialFolder

from .studyutil import (
    TINY_STUDY,
    ended,
    optuna_trials,
    read_metrics,
    read_status,
    start_study,
    trial_dirs,
    wait_for,
    write_study,
)
from .studyutil import tune_main as run_tune_main

pytestmark = pytest.mark.slow


# A pareto study (issue 15): multi-objective TPE, MOASHA at epochs 1 and 2, both accuracies recorded.
PARETO = {
    "objective": {"type": "pareto", "metrics": ["acc_1km", "acc_2500km"]},
    "scheduler": {"type": "moasha", "grace_period": 1, "reduction_factor": 2},
}


@pytest.mark.parametrize("objective", ["score", "pareto"])
def test_killed_driver_resumes_without_losing_or_rerunning_trials(tmp_path, offline_root_session, objective):
    study = copy.deepcopy(TINY_STUDY) | (PARETO if objective == "pareto" else {})
    study["search"]["num_samples"] = 6
    study["base"]["train"]["epochs"] = 4
    study["base"]["data"]["offline"]["n_train"] = 4000  # epochs long enough to be killed mid-way
    study_file = write_study(tmp_path / "s.yaml", study, offline_root_session)
    storage, study_dir = tmp_path / "results", tmp_path / "results" / "tiny"

    driver = start_study(study_file, storage)
    wait_for(lambda: trial_dirs(study_dir) if study_dir.exists() else [], what="a first trial")
    study_records = {name: (study_dir / name).read_bytes() for name in (StudyFolder.STUDY, StudyFolder.REGISTRY)}
    # The driver waits, frozen, while the second launchers are refused: only the driver writes that a trial
    # ended, and on an idle machine the whole study (six trials, most stopped after an epoch) took less
    # time than the two refusals, so the kill below came after its end. Its lease stays fresh meanwhile
    # (refreshed every 10 s, held for 30 s).
    os.kill(driver.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()  # a second launcher on the running study, with or without --resume:
        seconds = [start_study(study_file, storage, *extra, stderr=subprocess.PIPE) for extra in ([], ["--resume"])]
        for proc in seconds:  # refused at once, naming the first
            assert proc.wait(timeout=60) == 2 and time.monotonic() - started < 30
            message = proc.stderr.read().decode().strip()
            assert f"pid {driver.pid}" in message and "\n" not in message, message
    finally:
        os.kill(driver.pid, signal.SIGCONT)
    assert {name: (study_dir / name).read_bytes() for name in study_records} == study_records
    deadline = time.time() + 300
    while True:  # look with the driver frozen, so that no trial ends between the look and the kill
        assert time.time() < deadline and driver.poll() is None, "the study ended before 3 trials had"
        time.sleep(0.1)
        os.kill(driver.pid, signal.SIGSTOP)
        if len(ended(study_dir)) >= 3:
            break
        os.kill(driver.pid, signal.SIGCONT)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started, like a lost SSH session
    driver.wait()
    before = {t.name: read_metrics(t) for t in ended(study_dir)}
    assert len(before) < study["search"]["num_samples"], "the study ended before the driver was killed"

    proc = run_tune_main(study_file, "--storage", storage, "--resume", "--no-analysis")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = trial_dirs(study_dir)
    assert len(trials) == 6
    for name, metrics in before.items():  # finished trials kept, not rerun
        assert read_metrics(study_dir / name) == metrics
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in optuna_trials(study_dir)}
    for t in trials:
        status = read_status(t)
        epochs = [m["epoch"] for m in read_metrics(t)]
        assert epochs == list(range(1, status.epochs + 1)), (t.name, epochs)
        if status.status is Status.STOPPED:  # named after the scheduler that stopped it
            assert status.stopped_by == ("MOASHA" if objective == "pareto" else "ASHA"), (t.name, status)
        assert (
            states[t.name.removeprefix("trial_")]
            == {Status.FINISHED: "COMPLETE", Status.STOPPED: "PRUNED"}[status.status]
        )
    assert sorted(states) == sorted(t.name.removeprefix("trial_") for t in trials)  # the two records agree
    if objective == "pareto":
        check_pareto_record(study_dir, trials, proc.stdout)
    from analysis import analyse

    summary = analyse(study_dir, tmp_path / "analysis")
    assert len(__import__("pandas").read_csv(tmp_path / "analysis" / "trials.csv")) == 6, summary


def check_pareto_record(study_dir: Path, trials: list[Path], launcher_output: str) -> None:
    """Optuna holds both directions, every finished trial's two values and every trial's per-epoch
    values; the launcher printed the Pareto set of the trials that ran every epoch."""
    import optuna

    from geoloc.tuning.pareto import pareto_mask

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    record = optuna.load_study(study_name="tiny", storage=StudyFolder(study_dir).optuna_url)
    assert [d.name for d in record.directions] == ["MAXIMIZE", "MAXIMIZE"]
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in record.trials}
    full = {}
    for trial in trials:
        rows, frozen = read_metrics(trial), by_ray_id[trial.name.removeprefix("trial_")]
        values = {str(r["epoch"]): [r["acc_1km"], r["acc_2500km"]] for r in rows}
        assert frozen.user_attrs["epoch_values"] == values
        if read_status(trial).status is Status.FINISHED:
            assert frozen.values == values[str(rows[-1]["epoch"])]
            full[trial.name] = frozen.values
    assert full, "no trial ran every epoch"
    names = list(full)
    front = [
        n for n, on in zip(names, pareto_mask(np.array([full[n] for n in names]), [True, True]), strict=True) if on
    ]
    listed = launcher_output.split("Pareto set of max acc_1km, max acc_2500km:")[1].split("results:")[0]
    assert sorted(n for n in names if n in listed) == sorted(front), listed


def test_killed_worker_restarts_from_its_checkpoint_with_every_seed(tmp_path, offline_root_session):
    """``search.seeds: 3`` under ASHA: each trial trains three seeds in lock-step and reports their mean
    to Ray and Optuna; a worker killed mid-epoch resumes all three exactly where they were."""
    from geoloc.run.loop import train
    from geoloc.study.studyfile import load_study_file, trial_config

    study = copy.deepcopy(TINY_STUDY)
    study["search"] = {"algorithm": "random", "num_samples": 2, "max_concurrent": 2, "seeds": 3}
    study["failure"] = {"max_failures": 2}
    study["base"]["data"]["offline"]["n_train"] = 2500  # epochs long enough to be killed mid-way
    study_file = write_study(tmp_path / "s.yaml", study, offline_root_session)
    study_dir = tmp_path / "results" / "tiny"
    driver = start_study(study_file, tmp_path / "results")
    try:

        def running_after_one_epoch() -> Path | None:
            """A trial in its second epoch (ASHA may have stopped the other at the first rung): its epoch-1 row
            and checkpoint written (the row comes first: a kill between the two restarts the trial afresh)."""
            for trial in trial_dirs(study_dir) if study_dir.exists() else []:
                status = read_status(trial)
                saved = read_metrics(trial) and TrialFolder(trial).checkpoint.exists()
                if saved and status and status.status is Status.RUNNING and status.pid:
                    return trial
            return None

        wait_for(running_after_one_epoch, what="a trial past its first epoch")
        killed = running_after_one_epoch()
        os.kill(read_status(killed).pid, signal.SIGKILL)  # mid-epoch 2
        assert driver.wait(timeout=300) == 0
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    reported = {t.user_attrs["ray_trial_id"]: t.intermediate_values for t in optuna_trials(study_dir)}
    loaded = load_study_file(study_file)
    for trial in trial_dirs(study_dir):
        folder = TrialFolder(trial)
        rows, per_seed = read_metrics(trial), folder.read_seeds().rows
        epochs = [m["epoch"] for m in rows]
        assert epochs == list(range(1, len(epochs) + 1))  # no gap, no duplicate
        assert [(r["epoch"], r["seed"]) for r in per_seed] == [(e, s) for e in epochs for s in (0, 1, 2)]
        for row in rows:
            seeds = [r["score"] for r in per_seed if r["epoch"] == row["epoch"]]
            assert row["score"] == sum(seeds) / 3
        assert reported[folder.read_trial()["trial_id"]] == {e: m["score"] for e, m in zip(epochs, rows, strict=True)}
        assert read_status(trial).status in (Status.FINISHED, Status.STOPPED)
    # The killed trial's seeds continued exactly: the same rows as an uninterrupted run of its configuration.
    straight = TrialFolder(tmp_path / "straight")
    cfg = trial_config(loaded, TrialFolder(killed).read_trial()["params"])
    # With the trial's one thread (resources.cpu: 1): on a CPU where MKL's sums depend on the thread
    # count, two threads here would give other last digits than the trial, whatever the resume did.
    epochs_and_threads = {"epochs": len(read_metrics(killed)), "threads": 1}
    train(cfg.model_copy(update={"train": cfg.train.model_copy(update=epochs_and_threads)}), straight.path, seeds=3)
    times = ("train_s", "eval_s")
    assert [{k: v for k, v in r.items() if k not in times} for r in TrialFolder(killed).read_seeds().rows] == [
        {k: v for k, v in r.items() if k not in times} for r in straight.read_seeds().rows
    ]
    assert len(read_metrics(killed)) >= 2


def test_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path, offline_root_session, shared_ray):
    study = copy.deepcopy(TINY_STUDY)
    study["search"] = {"algorithm": "grid", "max_concurrent": 2}
    study["search_space"] = {"train.lr": {"type": "choice", "values": [1e-3, 1e30]}}  # 1e30 overflows to NaN
    study["scheduler"] = {"type": "none"}
    study_file = write_study(tmp_path / "s.yaml", study, offline_root_session)
    proc = run_tune_main(
        study_file,
        "--storage",
        tmp_path / "results",
        "--no-analysis",
        "--address",
        shared_ray.address,
        env=shared_ray.env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study_dir = tmp_path / "results" / "tiny"
    by_lr = {TrialFolder(t).read_trial()["params"]["train.lr"]: read_status(t) for t in trial_dirs(study_dir)}
    assert by_lr[1e-3].status is Status.FINISHED
    assert by_lr[1e30].status is Status.ERRORED and "loss is nan" in by_lr[1e30].reason
    failed = [t for t in optuna_trials(study_dir) if t.state.name == "FAIL"]
    assert len(failed) == 1 and "diverged" in failed[0].user_attrs["fail_reason"]
    from analysis import analyse

    analyse(study_dir, tmp_path / "analysis")
    trials = __import__("pandas").read_csv(tmp_path / "analysis" / "trials.csv")
    assert (trials["status"] == "errored").sum() == 1


def test_tensorboard_serves_every_trial_with_the_study_thresholds(tmp_path, offline_root_session, shared_ray):
    """A study with other thresholds (0.5, 10, 100 km): TensorBoard (served, and read back with its
    own EventAccumulator), the analysis tables and the launcher's summary all show those accuracies."""
    study = copy.deepcopy(TINY_STUDY)
    study["search"]["num_samples"] = 3
    study["base"]["eval"] = {"thresholds_km": [0.5, 10, 100], "score_weights": [1, 1, 1]}
    accs = ["acc_0.5km", "acc_10km", "acc_100km"]
    study_file = write_study(tmp_path / "s.yaml", study, offline_root_session)
    proc = run_tune_main(study_file, "--storage", tmp_path / "r", "--address", shared_ray.address, env=shared_ray.env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study_dir = tmp_path / "r" / "tiny"
    assert "acc_0.5km" in proc.stdout.split("best trial:")[1] and "acc_100km" in proc.stdout.split("top trials:")[1]
    assert "acc_1km" not in proc.stdout.split("best trial:")[1]
    ablation = (study_dir / "analysis" / "ablation_train_noise_batch_sigma.csv").read_text().splitlines()[0]
    assert all(f"{a}_mean" in ablation for a in accs) and "acc_1km" not in ablation

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for trial in trial_dirs(study_dir):
        events = EventAccumulator(str(TrialFolder(trial).events_dir()))
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
        tags = {m.name.tag for m in plugin_data_pb2.HParamsPluginData.FromString(content).experiment.metric_infos}
        assert {f"val/{a}" for a in accs} | {"val/score", "val/loss", "train/loss"} <= tags
        assert not any("acc_1km" in t for t in tags)
        assert {f"val/{a}" for a in accs} <= set(events.Tags()["scalars"])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "tensorboard"),
            "--logdir",
            str(study_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def get(path, body=None):
        req = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        # TensorBoard's run: the trial folder's named event folder (trial_<id>/t0003 lr=... batch_sigma=...)
        names = sorted(str(TrialFolder(t).events_dir().relative_to(study_dir)) for t in trial_dirs(study_dir))

        def runs_listed():
            try:
                return sorted(get("/data/runs")) == names
            except OSError:
                return False

        wait_for(runs_listed, timeout=120, what="tensorboard to list the runs")
        tags = get("/data/plugin/scalars/tags")
        for name in names:
            assert {"val/score", "val/acc_0.5km", "train/loss"} <= set(tags[name])
        experiment = get("/data/plugin/hparams/experiment", {"experimentName": ""})
        assert {"train.lr", "train.noise.batch_sigma"} <= {h["name"] for h in experiment["hparamInfos"]}
        assert {"val/score", "val/acc_0.5km", "val/acc_10km", "val/acc_100km"} <= {
            m["name"]["tag"] for m in experiment["metricInfos"]
        }
        groups = get(
            "/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 100,
            },
        )
        sessions = {s["name"] for g in groups["sessionGroups"] for s in g["sessions"]}
        assert sessions == set(names)
    finally:
        server.terminate()
        server.wait(timeout=30)
