"""The Ray trainable: a short adapter from a Tune trial to ``geoloc.run.loop.train`` (the shape of Ray's
``custom_func_checkpointing.py`` example). Everything a trial writes goes to its trial folder
(``geoloc.study.folders``); this module adds only what Ray needs: the reports and the checkpoints.
It writes the worker's half of ``status.json`` ("running", and "errored" when the loss diverges);
the driver's searcher writes the outcome (the protocol is in ``geoloc/study/folders.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import ray
from ray import tune

from geoloc.parts.resumable import DivergenceError
from geoloc.run.loop import train
from geoloc.study.folders import Status, StatusRecord, StudyFolder
from geoloc.study.runname import run_name
from geoloc.study.studyfile import StudyConfig, trial_config

REPORT_PREFIX = ".report-"  # a trial's temporary folder handing its checkpoint to Ray
RAY_MARKER = "epoch.json"  # what a Ray checkpoint of a trial holds (see train_trial)


def train_trial(config: dict, study: StudyConfig, study_dir: str) -> None:
    """One trial: the sampled values (``config["params"]``) on the study's base, trained epoch by epoch.

    Resumes from the trial folder's own ``checkpoint.pt`` (written before each report, so never
    behind Ray's record), so no epoch runs twice. Ray's checkpoint of a trial is only a marker of
    the epoch (``epoch.json``, bytes): the model's state lives once, in ``checkpoint.pt``. Ray keeps
    every marker, because a driver killed between two of its experiment snapshots (10 s apart at
    least) restores a trial from the checkpoint its last snapshot named, which Ray would have
    deleted meanwhile had it kept only the newest few; the trial then failed to restore.
    """
    context = tune.get_context()
    folder = StudyFolder(study_dir).trial(context.get_trial_id())
    folder.path.mkdir(parents=True, exist_ok=True)
    params = config["params"]
    cfg = trial_config(study, params)
    # The TensorBoard run's name: the same on every restart (number, values and the study's keys are).
    run = run_name(config["number"], params, keys=[entry.name for entry in study.space])
    folder.write_trial(context.get_trial_id(), config["number"], params, run=run)

    last = folder.read_metrics().last
    if last is not None and (folder.ended() or last["epoch"] >= cfg.train.epochs):
        # It ended (or trained its last epoch) after Ray's last snapshot and before the driver died:
        # report its last epoch again, so the searcher records the end, and train nothing.
        tune.report(last)
        return
    for stale in folder.path.glob(REPORT_PREFIX + "*"):  # left by a worker killed while reporting
        shutil.rmtree(stale, ignore_errors=True)
    epochs_done = last["epoch"] if last else 0
    folder.write_status(StatusRecord(Status.RUNNING, epochs_done, cfg.train.epochs, pid=os.getpid()))

    def report(metrics: dict, checkpoint: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=REPORT_PREFIX, dir=folder.path) as tmp:
            (Path(tmp) / RAY_MARKER).write_text(json.dumps({"epoch": metrics["epoch"], "state": checkpoint.name}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    node = {"node": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id()[:12]}
    try:
        train(
            cfg,
            folder.path,
            seeds=study.search.seeds,
            resume=True,
            on_epoch=report,
            context=node,
            hparams={**params, "trial": folder.name},
            gpu_share=study.resources.gpu or 1.0,  # packed trials keep to their fraction of the card
        )
    except DivergenceError as e:
        folder.write_status(StatusRecord(Status.ERRORED, e.epochs_done, cfg.train.epochs, reason=str(e)))
        raise
