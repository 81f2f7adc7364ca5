"""The arithmetic a run's steps run in (``train.precision``), and the exact fp32 that some parts need.

Both switches that set it are process-wide state: autocast is a context, but TF32 is a global flag
of torch's CUDA backend. A trial therefore sets TF32 for the span of each step and evaluation and
puts the previous value back after it (``precision``), so a ``tf32`` trial cannot leave TF32 on for
the next trial of the same worker (Ray reuses worker processes across trials).

``exact_fp32`` switches both off for the parts whose inputs bf16 or TF32 would ruin: the random
Fourier features (phases of the sigma 2^8 branch reach about 10^3 rad, where TF32's 10-bit
mantissa is off by whole radians) and the evaluation's similarities (bf16 rounds them to about
0.003, which makes ties and wrong top-1 picks among nearby gallery points).

bf16 on a CPU (issue 26). Where the CPU has no native bf16 (no AVX512-BF16 or AMX; oneDNN's
``_is_mkldnn_bf16_supported``), torch emulates it, measured on a 2-core Xeon with oneDNN and ATen limited
to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``), one thread, the default location encoder:
encoding 8,192 locations without gradient took 14.6 s in bf16 against 1.5 s in fp32, and forward +
backward of 2,048 locations 56-64 s against 0.9-1.5 s, and a whole ``Evaluator`` call (600 images, 10K
gallery) 46-143 s against 4.7-8.9 s. So ``check_precision`` refuses ``bf16`` on such a
CPU (one line, at trial start), and every pass without gradient (evaluation, the embeddings of the
similarity sampler: ``part="eval"``) runs in fp32 on any CPU: its metrics are then the same on every
CPU whatever its bf16 support, at a cost where bf16 is native (the same Xeon with AMX: 0.4-0.6 s in
bf16 against 1.5 s in fp32 for the 8,192 encodes above, 1.4 s against 2.3-3.7 s for the evaluation).
Steps on a CPU with native bf16 keep bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from geoloc.common.validation import ConfigError


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matrix products on (or off) inside the block; the previous setting afterwards."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN sees it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(name: str, device: torch.device, key: str = "train.precision") -> None:
    """Refuse ``bf16`` on a CPU that only emulates it (ten to sixty times slower than fp32, see above)."""
    if name == "bf16" and device.type == "cpu" and not native_bf16():
        raise ConfigError(
            f"{key}: bf16 on this CPU (no AVX512-BF16 or AMX) is emulated, 10-60x slower than fp32; use fp32"
        )


@contextlib.contextmanager
def precision(name: str, device: torch.device, part: str = "step") -> Iterator[None]:
    """The arithmetic of ``train.precision`` for one step (``part="step"``) or pass without gradient
    (``part="eval"``): ``bf16`` autocast, ``tf32`` matrix products (CUDA only; on the CPU it is fp32),
    or plain ``fp32`` (TF32 off, whatever an earlier trial of this process left). On a CPU an
    ``eval`` pass is always fp32 (see the module's docstring)."""
    if part not in ("step", "eval"):
        raise ValueError(f"precision: part must be 'step' or 'eval', not {part!r}")
    if part == "eval" and device.type == "cpu":
        name = "fp32"
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
