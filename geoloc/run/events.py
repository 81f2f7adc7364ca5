"""TensorBoard events of one run: per-epoch scalars and an HParams session written at the START.

Ray's own TensorBoard logger writes hparams only when a trial ends, so a running trial would be
missing from the HParams dashboard; here the session start (hyperparameters + metric tags from
the run's ``MetricRegistry``) is written when the run starts and the session end when it finishes.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from geoloc.common.metrics import MetricRegistry


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
    """One run's event file: ``log(metrics, epoch)`` per epoch, ``close(finished)`` at the end (idempotent)."""

    def __init__(self, logdir: str | Path, hparams: dict, registry: MetricRegistry):
        self.registry = registry
        # flush_secs: a running trial shows up in TensorBoard within seconds, not minutes.
        self.writer = SummaryWriter(str(logdir), flush_secs=5)
        # flatten: a sampled value may be a list (model.rff_scales), which HParams shows as text.
        experiment, session_start, self._session_end = hparams_summaries(
            flatten(hparams), dict.fromkeys(registry.hparam_tags())
        )
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)
        self.writer.flush()
        self._closed = False

    def log(self, metrics: dict, epoch: int) -> None:
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(self.registry.tag(key), value, global_step=epoch)
        self.writer.flush()

    def close(self, finished: bool) -> None:
        """Write the session end only for a run that trained every epoch; a second call does nothing."""
        if self._closed:
            return
        if finished:
            self.writer.file_writer.add_summary(self._session_end)
        self.writer.close()
        self._closed = True
