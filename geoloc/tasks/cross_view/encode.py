"""The cross-view trainer's inputs: an epoch's pairs as tensors, and the embeddings of a whole split.

Cached mode reads the feature caches, held once on the trial's device for all its seeds
(``CrossViewData.device_features``: a split's views are small next to its images). End to end
decodes the image files and applies Sample4Geo's paired augmentation to training pairs
(``geoloc.data.crossview.pairs``); the augmentation of each pair comes from one seed per batch
drawn from the trainer's generator, so the same state gives the same images, in this process or in
``train.workers`` loader processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from geoloc.data.crossview import CrossViewSet
from geoloc.tasks.cross_view.config import CrossViewConfig


class Encoder:
    """Inputs of one trainer (``cfg``'s mode) on ``device``."""

    def __init__(self, cfg: CrossViewConfig, data, device: torch.device):
        self.cfg, self.device = cfg, device
        self.features = data.device_features(device) if cfg.cached else {}

    # -- training --------------------------------------------------------------------------------

    def training_pairs(
        self, batches: list[np.ndarray], split: CrossViewSet, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(queries, references) of each batch of query indices, row i of both one pair."""
        if self.cfg.cached:
            queries, references = self.features[split.name]
            for idx in batches:
                # One cached view per pair; view v of a query and of its reference were augmented together.
                views = torch.randint(queries.shape[1], (len(idx),), generator=generator).to(self.device)
                rows = torch.as_tensor(idx, device=self.device)
                refs = torch.as_tensor(split.positive[idx], device=self.device)
                yield queries[rows, views].float(), references[refs, views].float()
            return
        from geoloc.data.crossview.pairs import pair_loader

        seeds = torch.randint(2**62, (len(batches),), generator=generator).tolist()
        loader = pair_loader(
            split,
            batches,
            seeds,
            query_size=self.cfg.model.query_size,
            reference_size=self.cfg.model.reference_size,
            workers=self.cfg.train.workers,
        )
        for queries, references in loader:
            yield queries.to(self.device, non_blocking=True), references.to(self.device, non_blocking=True)

    # -- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def embed(self, model, split: CrossViewSet, precision) -> tuple[torch.Tensor, torch.Tensor]:
        """Every query's and every reference's embedding of ``split`` (unaugmented; cached: view 0), in
        fp32 on the device; the model is put back in the mode it was in."""
        was_training = model.training
        model.eval()
        try:
            if self.cfg.cached:
                queries, references = self.features[split.name]
                chunks = self._chunks(queries[:, 0]), self._chunks(references[:, 0])
            else:
                from geoloc.data.crossview.pairs import image_loader

                size, workers = self.cfg.eval.batch_size, self.cfg.train.workers
                chunks = (
                    image_loader(split.queries, self.cfg.model.query_size, size, workers),
                    image_loader(split.references, self.cfg.model.reference_size, size, workers),
                )
            with precision():
                q = torch.cat([model.encode_queries(x.to(self.device).float()) for x in chunks[0]])
                r = torch.cat([model.encode_references(x.to(self.device).float()) for x in chunks[1]])
            return q.float(), r.float()
        finally:
            model.train(was_training)

    def _chunks(self, features: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(features, self.cfg.eval.batch_size))
