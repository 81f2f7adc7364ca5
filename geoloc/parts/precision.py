"""The arithmetic a run's steps run in (``train.precision``), and the exact fp32 that some parts need.

Both switches that set it are process-wide state: autocast is a context, but TF32 is a global flag
of torch's CUDA backend. A trial therefore sets TF32 for the span of each step and evaluation and
puts the previous value back after it (``precision``), so a ``tf32`` trial cannot leave TF32 on for
the next trial of the same worker (Ray reuses worker processes across trials).

``exact_fp32`` switches both off for the parts whose inputs bf16 or TF32 would ruin: the random
Fourier features (phases of the sigma 2^8 branch reach about 10^3 rad, where TF32's 10-bit
mantissa is off by whole radians) and the evaluation's similarities (bf16 rounds them to about
0.003, which makes ties and wrong top-1 picks among nearby gallery points).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matrix products on (or off) inside the block; the previous setting afterwards."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@contextlib.contextmanager
def precision(name: str, device: torch.device) -> Iterator[None]:
    """The arithmetic of ``train.precision`` for one step or evaluation: ``bf16`` autocast, ``tf32``
    matrix products (CUDA only; on the CPU it is fp32), or plain ``fp32`` (TF32 off, whatever an
    earlier trial of this process left)."""
    # No cast cache on a GPU: CUDA graphs (geoloc.parts.graphs) cannot be captured with it; each weight is
    # cast once per forward anyway.
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=device.type != "cuda")
        if name == "bf16"
        else contextlib.nullcontext()
    )
    with tf32(name == "tf32"), autocast:
        yield


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """Neither autocast nor TF32 inside the block: matrix products of fp32 inputs are exact fp32."""
    with tf32(False), torch.autocast(device.type, enabled=False):
        yield
