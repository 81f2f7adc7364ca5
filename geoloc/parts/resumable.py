"""Checkpoints of anything resumable, and the two ways a run refuses to go on: a diverged loss and a
checkpoint written for another configuration."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import torch

from geoloc.common.atomic import atomic_path

DEVICE_OPTIONS = ("fused", "foreach", "capturable")  # an optimiser's options that follow the device, not the run


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite: the trial stops with this reason instead of training on garbage."""

    def __init__(self, message: str, epochs_done: int):
        super().__init__(message)
        self.epochs_done = epochs_done

    def __reduce__(self):  # Ray copies and pickles a trial's exception: rebuilt from both arguments
        return type(self), (str(self), self.epochs_done)


class CheckpointMismatch(ValueError):
    """A checkpoint from a different model configuration."""


def portable_state(state: dict) -> dict:
    """An optimiser's or scheduler's state dict with learning rates as floats, not device tensors (a captured
    step's, ``train.graph_step``), so that a checkpoint loads on any device and into either kind of optimiser."""
    state = dict(state)
    if "param_groups" in state:
        state["param_groups"] = [
            {k: float(v) if k in ("lr", "initial_lr") else v for k, v in group.items()}
            for group in state["param_groups"]
        ]
    for key in ("base_lrs", "_last_lr"):
        if key in state:
            state[key] = [float(v) for v in state[key]]
    return state


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``saved``'s state and hyperparameters into ``optimizer``, which keeps its own ``DEVICE_OPTIONS`` (a GPU's
    fused or capturable Adam resumes on a CPU as the CPU's Adam, and the reverse) and, where its learning
    rate is a tensor (a captured step reads it), that tensor, filled with the saved rate."""
    own = {k: v for k, v in optimizer.param_groups[0].items() if k in DEVICE_OPTIONS}
    rate = optimizer.param_groups[0]["lr"]
    optimizer.load_state_dict({**saved, "param_groups": [g | own for g in saved["param_groups"]]})
    if isinstance(rate, torch.Tensor):
        group = optimizer.param_groups[0]
        group["lr"] = rate.fill_(float(group["lr"]))


class Resumable:
    """Checkpoint files of anything with ``state_dict``, ``load_state_dict`` and ``epoch``."""

    epoch: int

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def signature(self) -> dict:
        """What a checkpoint must match to load (a model's shape, its data), not the run's hyperparameters."""
        raise NotImplementedError

    def check_signature(self, state: dict) -> None:
        """CheckpointMismatch unless ``state`` was written for this ``signature``: nothing is loaded partly."""
        if state.get("signature") != self.signature():
            raise CheckpointMismatch(
                f"checkpoint was written for {state.get('signature')}, this run is {self.signature()}; "
                "refusing to load it partly"
            )

    def save(self, path: str | Path) -> None:
        """Atomic: a crash while saving leaves the previous checkpoint intact."""
        with atomic_path(path) as tmp:  # the file's own name: torch names the archive inside after it
            torch.save(self.state_dict(), tmp)

    def load(self, path: str | Path) -> None:
        # On the CPU: the generator state must stay there; load_state_dict puts the rest on the device.
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def restore_newest(self, paths: Iterable[Path | None]) -> None:
        """Load whichever of these checkpoints is ahead of this trainer; torn or missing files are skipped."""
        for path in paths:
            if path is not None and checkpoint_epoch(path) > self.epoch:
                self.load(path)


def checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint file holds; -1 for a missing, torn or foreign file."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return -1
