"""How training batches reach the device: the training cache held on the GPU, or read ahead.

The trainer draws an epoch's order and views on its CPU generator (``Trainer.batches``), so which
rows make a batch, and every later random draw, are in program order whichever way is used; the
two ways give the same rows, converted from float16 to float32 exactly, so the same run.

- **Resident** (a CUDA device, and the cache fits ``RESIDENT_SHARE`` of the trial's share of the
  card's memory): the float16 features and the coordinates are copied to the GPU once; a batch is
  a gather there, and the only host-to-device traffic of a step is its 512 indices (pinned,
  asynchronous). An MP-16-sized cache of 4.7M x 768 float16 is 7 GB: resident on a card of its
  own, streamed when four trials share an 80 GB card with several views per image.
- **Streamed** (otherwise, and always on the CPU): a background thread reads the next
  ``READ_AHEAD`` batches with ``os.pread`` (``FeatureCache.read``) while the step runs, into
  pinned buffers on a GPU, which are then copied asynchronously and converted to float32 there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np
import torch

from geoloc.data.cache import FeatureCache

RESIDENT_SHARE = 0.5  # of the trial's GPU memory, at most, for the cache; the rest for model, queue and evaluation
READ_AHEAD = 3  # batches read ahead of the step by the background thread
UPLOAD_ROWS_BYTES = 256 * 2**20  # the resident cache is copied to the GPU in pieces of this size


class Feed:
    """The training cache as (float32 features, float32 coordinates) batches on ``device``."""

    def __init__(self, cache: FeatureCache, device: torch.device, budget_bytes: int = 0, resident: bool | None = None):
        """``resident`` overrides the choice by ``budget_bytes`` (the benchmarks compare both ways)."""
        self.cache, self.device = cache, device
        self.pinned = device.type == "cuda"
        self.coords = torch.from_numpy(cache.coords).float()
        self.resident = self.pinned and cache.nbytes <= budget_bytes if resident is None else resident
        self.coords_t = self.coords.to(device) if self.resident else None
        self.features_t = self._upload() if self.resident else None

    @classmethod
    def for_run(cls, cache: FeatureCache, device: torch.device, gpu_share: float = 1.0) -> Feed:
        """Resident when the cache fits ``RESIDENT_SHARE`` of this trial's share of the card."""
        budget = 0
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            budget = int(RESIDENT_SHARE * min(1.0, gpu_share) * total)
        return cls(cache, device, budget)

    def _upload(self) -> torch.Tensor:
        cache = self.cache
        out = torch.empty((len(cache), cache.views, cache.feature_dim), dtype=torch.float16, device=self.device)
        step = max(1, UPLOAD_ROWS_BYTES // max(1, cache.nbytes // max(1, len(cache))))
        for start in range(0, len(cache), step):
            out[start : start + step].copy_(torch.from_numpy(cache.block(start, start + step)))
        return out

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors it holds on the device (none when streamed)."""
        if self.resident:
            yield "feed.features", self.features_t
            yield "feed.coords", self.coords_t

    def epoch(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features, coordinates) of each (indices, views) batch, on the device, float32."""
        if self.resident:
            for idx, views in batches:
                i, v = (self._to_device(torch.from_numpy(a)) for a in (idx, views))
                yield self.features_t[i, v].float(), self.coords_t[i]
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="feed") as reader:
            batches = iter(batches)  # advanced on this thread only: its random draws stay in program order
            pending = deque(reader.submit(self._read, *b) for b in islice(batches, READ_AHEAD))
            while pending:
                rows, coords = pending.popleft().result()
                following = next(batches, None)
                if following is not None:
                    pending.append(reader.submit(self._read, *following))
                yield self._to_device(rows).float(), self._to_device(coords)

    def _read(self, idx: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch's float16 rows and coordinates on the host (pinned for a GPU): the reader's work."""
        rows = torch.empty((len(idx), self.cache.feature_dim), dtype=torch.float16, pin_memory=self.pinned)
        self.cache.read(idx, views, out=rows.numpy())
        coords = self.coords[torch.from_numpy(idx)]
        return rows, coords.pin_memory() if self.pinned else coords

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.pinned:
            return tensor
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)
