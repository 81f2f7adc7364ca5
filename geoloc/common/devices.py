"""Which torch device a run or an extraction uses (one rule for both)."""

from __future__ import annotations

import os

import torch


class DeviceError(ValueError):
    """A device was asked for that this machine does not have; the message names the option."""


def pick_device(name: str, option: str) -> torch.device:
    """``auto`` takes the GPU when one is visible, else the CPU; ``cuda`` without a GPU is refused.

    ``option`` names the setting in the error (``train.device``, ``--device``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{option}: {name} requested but no GPU is visible")
    return device


def cpu_share() -> int:
    """CPUs this process was given: Ray sets OMP_NUM_THREADS to a trial's CPUs; else the affinity mask."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return int(omp) if omp.isdigit() and int(omp) > 0 else len(os.sched_getaffinity(0))
