"""CUDA graphs of the training step's two encoders: each forward and backward one launch.

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
