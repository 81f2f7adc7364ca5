"""The Ray trainable: a short adapter from a Tune trial to ``geoloc.train.train`` (the shape of Ray's
``custom_func_checkpointing.py`` example). Everything a trial writes goes to its trial folder
(``geoloc.folders``); this module adds only what Ray needs: the reports and the checkpoints.
It writes the worker's half of ``status.json`` ("running", and "errored" when the loss diverges);
the driver's searcher writes the outcome (the protocol is in ``geoloc/folders.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

import ray
from ray import tune

from .folders import Status, StatusRecord, StudyFolder
from .study import StudyConfig, trial_config
from .train import DivergenceError, train

REPORT_PREFIX = ".report-"  # a trial's temporary folder handing its checkpoint to Ray


def train_trial(config: dict, study: StudyConfig, study_dir: str) -> None:
    """One trial: the sampled values (``config["params"]``) on the study's base, trained epoch by epoch.

    Resumes from Ray's checkpoint or from the trial folder's own ``checkpoint.pt``, whichever is
    newer (the driver may have been killed after the trial went on), so no epoch runs twice.
    """
    context = tune.get_context()
    folder = StudyFolder(study_dir).trial(context.get_trial_id())
    folder.path.mkdir(parents=True, exist_ok=True)
    params = config["params"]
    cfg = trial_config(study, params)
    folder.write_trial(context.get_trial_id(), config["number"], params)

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
            link_or_copy(checkpoint, Path(tmp) / checkpoint.name)  # Ray copies it into its checkpoint folder
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    node = {"node": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id()[:12]}
    with contextlib.ExitStack() as stack:
        restored = tune.get_checkpoint()
        restore = Path(stack.enter_context(restored.as_directory())) / folder.CHECKPOINT if restored else None
        try:
            train(
                cfg,
                folder.path,
                seeds=study.search.seeds,
                resume=True,
                restore=restore,
                on_epoch=report,
                context=node,
                hparams={**params, "trial": folder.name},
            )
        except DivergenceError as e:
            folder.write_status(StatusRecord(Status.ERRORED, e.epochs_done, cfg.train.epochs, reason=str(e)))
            raise


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system has them: the checkpoint is then written once, not twice."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)
