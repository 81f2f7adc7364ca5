"""TensorBoard events of one run: per-epoch scalars and an HParams session written at the START.

Ray's own TensorBoard logger writes hparams only when a trial ends, so a running trial would be
missing from the HParams dashboard; here the session start (hyperparameters + metric names) is
written when the run starts and the session end when it finishes.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

# Metric keys (DESIGN.md) that are not validation metrics, and their tags.
_TAGS = {"train_loss": "train/loss", "val_loss": "val/loss", "temperature": "temperature", "lr": "lr"}
HPARAM_METRICS = ("score", "acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km", "median_km", "val_loss", "train_loss")


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a metric key: train/loss, val/loss, val/acc_1km, lr, time/epoch_s ..."""
    if key in _TAGS:
        return _TAGS[key]
    if key.endswith("_s"):
        return f"time/{key}"
    return f"val/{key}"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists and None become strings (HParams takes scalars)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class EventLogger:
    """One run's event file: ``log(metrics, epoch)`` per epoch, ``close(status)`` at the end."""

    def __init__(self, logdir: str | Path, hparams: dict):
        # flush_secs: a running trial shows up in TensorBoard within seconds, not minutes.
        self.writer = SummaryWriter(str(logdir), flush_secs=5)
        experiment, session_start, self._session_end = hparams_summaries(
            hparams, {tensorboard_tag(k): None for k in HPARAM_METRICS}
        )
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)
        self.writer.flush()

    def log(self, metrics: dict, epoch: int) -> None:
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(tensorboard_tag(key), value, global_step=epoch)
        self.writer.flush()

    def close(self, finished: bool = True) -> None:
        if finished:
            self.writer.file_writer.add_summary(self._session_end)
        self.writer.close()
