"""Which torch device a run or an extraction uses (one rule for both), and what a trial claims of it."""

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


def claim_device(name: str, option: str, threads: int | None, gpu_share: float = 1.0) -> torch.device:
    """The run's device (``pick_device``), and the process-wide settings of a trial on it: torch's CPU
    threads (``threads``, else the process's ``cpu_share``) and, on a GPU, the trial's share of the card's
    memory (trials packed onto one card each keep to theirs). Idempotent: every seed of a trial calls it."""
    device = pick_device(name, option)
    torch.set_num_threads(threads or cpu_share())
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_share), index)
    return device
