"""An epoch's batches of (query, reference) pairs (``train.batches``), each reference at most once per batch.

A cross-view batch is a set of pairs, named by their query index; the symmetric InfoNCE
(``geoloc.parts.losses.symmetric_infonce``) takes reference i of the batch as query i's only
positive, so a batch must not hold one reference twice (VIGOR: one tile is the positive of up to
two panoramas). Semi-positives do not count: Sample4Geo's loss treats them as negatives too.

- **random** (published): a permutation of the queries cut into batches.
- **gps_neighbours**: Sample4Geo's GPS sampling, ``geoloc.parts.neighbours.neighbour_batches``
  on each query's ``range`` nearest other queries by great-circle distance (``nearest`` with
  ``exclude_self``), built once per training set (kept in ``lists_folder`` when one is given).
- **similarity** (Dynamic Similarity Sampling): the same assembly from similarity lists, from
  epoch ``similarity_from_epoch`` and rebuilt every ``similarity_every`` epochs (GPS lists
  before). Query i lists the ``range`` references most similar to its embedding, its own positive
  left out, each written as a query: the first (lowest-index) query whose positive it is.
  References that are no query's positive (VIGOR's tiles without a panorama) cannot be written as
  a query, so they are left out of the search itself: the lists are the top ``range`` among the
  references that are some query's positive, and every row is full. In CVUSA and CVACT (positive
  = arange) the reference index is the query index. A query's list never names a query that
  shares its positive (that reference is left out).

**The repair** (``unique_reference_batches``): the assembly proposes batches; they are read in
order as one stream of queries and refilled into batches of ``batch_size``: a query whose
reference is already in the batch being filled waits, and each new batch first takes the waiting
queries (oldest first) whose references it lacks, then goes on with the stream. After the stream
the waiting queries fill the last batches. So every query is in exactly one batch per epoch, no
batch holds a reference twice, every batch is full except the last few, and where no reference is
shared (CVUSA, CVACT) the proposed batches come out unchanged. A waiting query lands one batch
later than proposed, and the batches after it shift by a place: the neighbour groups stay together
except where a batch boundary now cuts one. GPS lists may name a query that shares the anchor's
tile (it stands at the same place); the repair moves it to the next batch.

Each batch's indices are sorted. Random draws come only from the ``generator`` passed in (the
trainer's): the assembly's, in ``neighbour_batches``' order, or ``randperm`` for random batches;
the repair draws nothing. ``state_dict`` holds what a resumed run needs besides that generator
(which the trainer saves): the GPS lists' identity and the current similarity lists.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from geoloc.common.validation import ConfigError
from geoloc.data.crossview import CrossViewSet
from geoloc.data.derived import cached_array, fingerprint
from geoloc.parts.config import BatchesConfig
from geoloc.parts.neighbours import nearest, neighbour_batches
from geoloc.parts.sampler import ListSchedule
from geoloc.parts.similarity import ranked_lists

SIMILARITY_CHUNK_BYTES = 2**30  # float32 scores of a chunk of queries against every listed reference
Embed = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # -> (query embeddings (n, D), reference embeddings (m, D))


def unique_reference_batches(stream: np.ndarray, positive: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``stream`` (every query once, in the proposed order) in batches of at most ``batch_size``
    queries, no two of one batch sharing a ``positive``: the repair of the module docstring.

    Sorted int64 arrays; a stream whose queries' positives are all distinct comes back cut into
    consecutive chunks of ``batch_size``.
    """
    stream, positive = np.asarray(stream, np.int64), np.asarray(positive)
    if len(np.unique(positive[stream])) == len(stream):  # no shared reference: nothing to repair
        return [np.sort(stream[i : i + batch_size]) for i in range(0, len(stream), batch_size)]
    reference = positive.tolist()  # Python ints: set look-ups of numpy scalars are slow
    batches: list[np.ndarray] = []
    waiting: deque[int] = deque()
    batch: list[int] = []
    taken: set[int] = set()  # the references of ``batch``

    def close() -> None:
        """Close the batch and begin the next with the waiting queries it can take (closed too if they fill it).

        Afterwards every query still waiting shares a reference with the open batch or would overfill it."""
        nonlocal batch, taken
        while True:
            batches.append(np.sort(np.asarray(batch, np.int64)))
            batch, taken = [], set()
            for _ in range(len(waiting)):
                query = waiting.popleft()
                if reference[query] in taken or len(batch) == batch_size:
                    waiting.append(query)  # rotating keeps the oldest first
                else:
                    batch.append(query)
                    taken.add(reference[query])
            if len(batch) < batch_size:
                return

    for query in stream.tolist():
        if reference[query] in taken:
            waiting.append(query)
            continue
        batch.append(query)
        taken.add(reference[query])
        if len(batch) == batch_size:
            close()
    while waiting:
        close()
    if batch:
        batches.append(np.sort(np.asarray(batch, np.int64)))
    return batches


class PairSampler(ListSchedule):
    """The pair batches of each epoch of one run (``epoch``), drawn on the trainer's ``generator``.

    ``split`` is the training split; ``lists_folder`` (optional) keeps its GPS lists
    (``<lists_folder>/derived/gps-neighbours-<key>.npy``), shared by the runs that train on it.
    """

    def __init__(
        self,
        cfg: BatchesConfig,
        batch_size: int,
        split: CrossViewSet,
        generator: torch.Generator,
        lists_folder: str | Path | None = None,
    ):
        self.cfg, self.batch_size, self.generator = cfg, batch_size, generator
        self.positive = np.asarray(split.positive)
        self.references = len(split.references)
        # The references that are some query's positive (sorted), and the first query of each.
        self.listed, self.first_query = np.unique(self.positive, return_index=True)
        self.gps_lists: np.ndarray | None = None
        self.gps_key = ""
        self.similarity: np.ndarray | None = None  # the current similarity lists, in query indices
        self.similarity_epoch = 0  # the epoch they were built for
        if cfg.type == "random":
            return
        listable = min(len(split), len(self.listed))  # other queries; other listed references
        if cfg.range >= listable:
            raise ConfigError(
                f"train.batches.range: lists of {cfg.range} neighbours need more than that; the training split "
                f"{split.name} has {len(split)} queries and {len(self.listed)} distinct positive references"
            )
        coords = np.asarray(split.query_coords)
        self.gps_key = fingerprint(coords, cfg.range)

        def build() -> np.ndarray:
            return nearest(coords, coords, cfg.range, exclude_self=True)

        self.gps_lists = (
            build() if lists_folder is None else cached_array(lists_folder, "gps-neighbours", self.gps_key, build)
        )

    def epoch(self, epoch: int, embed: Embed) -> list[np.ndarray]:
        """The batches of ``epoch`` (1-based): sorted int64 query indices; ``embed`` is called only
        when the similarity lists are rebuilt."""
        n = len(self.positive)
        if self.cfg.type == "random":
            stream = torch.randperm(n, generator=self.generator).numpy()
        else:
            if self.rebuilds(epoch):
                self.similarity = self.similarity_lists(*embed())
                self.similarity_epoch = epoch
            lists = self.similarity if self.uses_similarity(epoch) else self.gps_lists
            proposed = neighbour_batches(lists, self.batch_size, self.cfg.neighbours, self.cfg.draw, self.generator)
            stream = np.concatenate(proposed) if proposed else np.empty(0, np.int64)
        return unique_reference_batches(stream, self.positive, self.batch_size)

    def similarity_lists(self, query_emb: torch.Tensor, reference_emb: torch.Tensor) -> np.ndarray:
        """(n, range) int64 query indices: the Dynamic Similarity Sampling lists of the module docstring,
        by ``geoloc.parts.similarity.ranked_lists`` (exact up to 200K references; above, re-scored on a GPU
        or faiss IVF on the CPU)."""
        n = len(self.positive)
        if len(query_emb) != n or len(reference_emb) != self.references:
            raise ValueError(
                f"embed returned {len(query_emb)} queries and {len(reference_emb)} references, "
                f"expected {n} and {self.references}"
            )
        keys = reference_emb[torch.from_numpy(self.listed).to(reference_emb.device)]
        chunk = max(1, SIMILARITY_CHUNK_BYTES // (4 * len(keys)))
        span = self.cfg.range
        # One more than needed, then each row's own positive taken out (or, where it is not among them, the last).
        ranked = ranked_lists(query_emb, keys, span + 1, exclude_self=False, chunk=chunk).lists
        own = np.searchsorted(self.listed, self.positive)
        is_own = ranked == own[:, None]
        at = np.where(is_own.any(axis=1), is_own.argmax(axis=1), span)
        cols = np.arange(span)
        kept = np.take_along_axis(ranked, cols + (cols >= at[:, None]), axis=1)
        return self.first_query[kept].astype(np.int64)
