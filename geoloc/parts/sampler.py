"""An epoch's batches (``train.batches``): a seeded shuffle, or Sample4Geo's GPS and similarity sampling.

- **random** (published): a permutation of the training images cut into batches.
- **gps_neighbours**: batches assembled from each image's ``range`` nearest training images by
  great-circle distance (``geoloc.parts.neighbours.neighbour_batches``), so the in-batch negatives are
  close places. The lists are built once per training set and kept beside the cache.
- **similarity** (Dynamic Similarity Sampling): the same assembly from lists of the locations the
  model finds most alike: at epoch ``similarity_from_epoch`` and every ``similarity_every`` epochs
  after, each training image (its first cached view) is embedded by the image head and every
  training location by the location encoder, and image i lists the ``range`` locations j != i of
  largest similarity (``geoloc.parts.similarity.ranked_lists``: exact up to 200K images; above, TF32
  candidates re-scored on the trial's GPU or a faiss IVF index on the CPU, its recall measured and printed).
  Earlier epochs use the GPS lists.

Each batch's indices are sorted (reads go forward); one cached view per image is drawn per epoch.
Random draws come from the trainer's CPU generator: the order first, then the views. The state a
resumed trial needs (the current similarity lists, the GPS lists' identity) is ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from geoloc.common.validation import ConfigError
from geoloc.data.cache import FeatureCache
from geoloc.data.derived import cached_array, fingerprint
from geoloc.parts.config import BatchesConfig
from geoloc.parts.neighbours import nearest, neighbour_batches
from geoloc.parts.similarity import ranked_lists

SIMILARITY_CHUNK_BYTES = 2**30  # float32 scores of a chunk of images against every location (1M: 268 rows)
Embed = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # -> (image embeddings, location embeddings), (n, D) each


class ListSchedule:
    """When a sampler's similarity lists are used and rebuilt, and the lists' part of a resumable state:
    what GeoCLIP's ``BatchSampler`` and the cross-view ``PairSampler`` share. A subclass sets ``cfg``,
    ``gps_key`` (the GPS lists' identity; "" for random batches), ``similarity`` (the current lists or
    None) and ``similarity_epoch`` (the epoch they were built for)."""

    cfg: BatchesConfig
    gps_key: str
    similarity: np.ndarray | None
    similarity_epoch: int

    def uses_similarity(self, epoch: int) -> bool:
        return self.cfg.type == "similarity" and epoch >= self.cfg.similarity_from_epoch

    def rebuilds(self, epoch: int) -> bool:
        """Whether the similarity lists are built anew for ``epoch`` (1-based)."""
        due = (epoch - self.cfg.similarity_from_epoch) % self.cfg.similarity_every == 0
        return self.uses_similarity(epoch) and (due or self.similarity is None)

    def state_dict(self) -> dict:
        """Empty for random batches, else the GPS lists' identity and the current similarity lists."""
        if self.cfg.type == "random":
            return {}
        state: dict = {"gps_lists": self.gps_key}
        if self.similarity is not None:
            state["similarity"] = torch.from_numpy(self.similarity.astype(np.int32))
            state["similarity_epoch"] = self.similarity_epoch
        return state

    def load_state_dict(self, state: dict) -> None:
        """ValueError when the state's GPS lists are not this training set's."""
        if self.cfg.type == "random":
            return
        if state.get("gps_lists") != self.gps_key:
            raise ValueError(
                f"its neighbour lists ({state.get('gps_lists')}) are not this training set's ({self.gps_key})"
            )
        similarity = state.get("similarity")
        self.similarity = None if similarity is None else similarity.numpy().astype(np.int64)
        self.similarity_epoch = state.get("similarity_epoch", 0)


class BatchSampler(ListSchedule):
    """The batches of each epoch of one run (``epoch``), drawn on the trainer's ``generator``; the GPS
    lists are read from beside the cache (built there by the first run that needs them)."""

    def __init__(self, cfg: BatchesConfig, batch_size: int, cache: FeatureCache, generator: torch.Generator):
        self.cfg, self.batch_size, self.cache, self.generator = cfg, batch_size, cache, generator
        self.gps_lists: np.ndarray | None = None
        self.gps_key = ""
        self.similarity: np.ndarray | None = None  # the current similarity lists
        self.similarity_epoch = 0  # the epoch they were built for
        if cfg.type != "random":
            if cfg.range >= len(cache):
                raise ConfigError(
                    f"train.batches.range: lists of {cfg.range} neighbours need more training images than that; "
                    f"the training set has {len(cache)}"
                )
            self.gps_key = fingerprint(cache.coords, cfg.range)
            self.gps_lists = cached_array(
                cache.source.path,
                "gps-neighbours",
                self.gps_key,
                lambda: nearest(cache.coords, cache.coords, cfg.range, exclude_self=True),
            )

    def epoch(self, epoch: int, embed: Embed) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, views) of each batch of ``epoch`` (1-based); ``embed`` is called when lists are rebuilt."""
        if self.cfg.type == "random":
            yield from self._random()
            return
        if self.rebuilds(epoch):
            images, locations = embed()
            chunk = max(1, SIMILARITY_CHUNK_BYTES // (4 * len(locations)))  # rows of scores held at once
            self.similarity = ranked_lists(images, locations, self.cfg.range, exclude_self=True, chunk=chunk).lists
            self.similarity_epoch = epoch
        lists = self.similarity if self.uses_similarity(epoch) else self.gps_lists
        batches = neighbour_batches(lists, self.batch_size, self.cfg.neighbours, self.cfg.draw, self.generator)
        views = torch.randint(self.cache.views, (len(self.cache),), generator=self.generator).numpy()
        for idx in batches:
            yield idx, views[idx]

    def _random(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n, bs = len(self.cache), self.batch_size
        order = torch.randperm(n, generator=self.generator)
        views = torch.randint(self.cache.views, (n,), generator=self.generator)
        for start in range(0, n, bs):
            idx = order[start : start + bs].sort().values
            yield idx.numpy(), views[idx].numpy()


def embed_training_set(model, cache: FeatureCache, device: torch.device, precision, chunk: int = 8192) -> Embed:
    """The ``Embed`` of a trainer: unit image embeddings of every training image's first view and unit
    location embeddings of every training location, float32 on ``device``, under ``precision()``."""

    @torch.no_grad()
    def embed() -> tuple[torch.Tensor, torch.Tensor]:
        was_training = model.training
        model.eval()
        images, locations = [], []
        with precision():
            for start in range(0, len(cache), chunk):
                idx = np.arange(start, min(start + chunk, len(cache)))
                rows = torch.from_numpy(cache.read(idx, np.zeros_like(idx)).astype(np.float32)).to(device)
                images.append(model.encode_images(rows).float())
                coords = torch.from_numpy(cache.coords[idx]).float().to(device)
                locations.append(model.encode_locations(coords).float())
        model.train(was_training)
        return torch.cat(images), torch.cat(locations)

    return embed
