"""CUDA graphs of the training step: its two encoders' forward and backward, or the whole step.

At the published sizes a step is about 300 small kernels (three Fourier branches of four layers
over 4,608 locations, the Equal Earth projection, the image head, their backward) that take the
GPU about 1.3 ms on an H200 while launching them one by one from Python takes about 6 ms.
``torch.cuda.make_graphed_callables`` records each encoder's forward and backward once and
replays them, so the host's work per step is a few launches.

A graph replays fixed shapes: the step's usual ones (a full batch; a full queue) are graphed the
first time they are seen, and any other (the first steps while the queue fills, an epoch's short
last batch, evaluation, which runs in eval mode) runs the modules as they are. The graphs use
the modules' own parameters, updated in place by the optimiser, and are captured under the
step's precision, so they compute what the modules compute. A capture that fails leaves the run
on the plain modules, with a warning.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Hashable

import torch
from torch import nn


class _Own(nn.Module):
    """A module behind a forward of its own: graphing replaces this forward, not the inner module's,
    which stays usable at other shapes and in evaluation."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class GraphedModules:
    """``run(module, x)``: ``module(x)``, replayed from a CUDA graph when ``x`` has a graphed shape."""

    def __init__(self, shapes: dict[nn.Module, tuple[int, ...]], enabled: bool):
        self.shapes = shapes  # module -> the one input shape to graph it at
        self.enabled = enabled
        self.graphed: dict[nn.Module, nn.Module] = {}

    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not (self.enabled and x.is_cuda and module.training and tuple(x.shape) == self.shapes.get(module)):
            return module(x)
        if module not in self.graphed:
            if not any(p.requires_grad for p in module.parameters()):
                return module(x)  # frozen: nothing to graph a backward for
            try:
                self.graphed[module] = torch.cuda.make_graphed_callables(_Own(module), (x.detach(),))
            except Exception as e:  # noqa: BLE001 (any capture failure: carry on without graphs)
                warnings.warn(f"CUDA graph capture failed, the step runs without graphs: {e}", stacklevel=2)
                self.enabled = False
                return module(x)
        return self.graphed[module](x)


class CapturedSteps:
    """``run(key, fn, *inputs)``: ``fn(*inputs)``, on a GPU replayed from one CUDA graph per ``key``
    (``train.graph_step``): everything the step launches (the noise's displacement, both encoders, the
    loss, backward, the fused capturable Adam with its learning rate a device tensor, the logit scale's
    clamp, the queue's push at its device-side position) in one launch.

    ``fn`` must do device work only, return a tuple of tensors and change no Python state that a
    replay would have to change too; ``key`` must name everything that changes what it launches
    (shapes, which inputs are None). The first ``WARMUP`` calls of a key run ``fn`` as it is, on a side
    stream (real steps: cuBLAS's workspaces and the optimiser's state are made there, outside the
    capture); the next is captured, which runs nothing, and then replayed, as every later call is,
    after its tensors are copied into the graph's own input buffers. Outputs are copies, so a later
    replay does not overwrite them. A capture that fails leaves the run on ``fn``, with a warning.
    """

    WARMUP = 3

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.calls: Counter[Hashable] = Counter()
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, tuple, tuple[torch.Tensor, ...]]] = {}

    def run(self, key: Hashable, fn: Callable[..., tuple[torch.Tensor, ...]], *inputs) -> tuple[torch.Tensor, ...]:
        if not self.enabled:
            return fn(*inputs)
        if key in self.graphs:
            graph, static_inputs, outputs = self.graphs[key]
            for buffer, x in zip(static_inputs, inputs, strict=True):
                if buffer is not None:
                    buffer.copy_(x, non_blocking=True)
            graph.replay()
            return tuple(o.clone() for o in outputs)
        self.calls[key] += 1
        if self.calls[key] <= self.WARMUP:
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                outputs = fn(*inputs)
            main.wait_stream(side)
            return tuple(o.clone() for o in outputs)
        static_inputs = tuple(None if x is None else x.clone() for x in inputs)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the streamed feed's reader thread may allocate pinned memory meanwhile.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = fn(*static_inputs)
        except Exception as e:  # noqa: BLE001 (any capture failure: carry on without the graph)
            warnings.warn(f"CUDA graph capture of the step failed, it runs without: {e}", stacklevel=2)
            self.enabled = False
            return fn(*inputs)
        self.graphs[key] = (graph, static_inputs, outputs)
        graph.replay()
        return tuple(o.clone() for o in outputs)
