"""Cross-view pair batches (geoloc/tasks/cross_view/batches.py) on a planted VIGOR-like split (tiles shared by
two queries, tiles of no query): every pair once per epoch, no reference twice in a batch, lists against
brute-force loops, seeded and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc.common.validation import ConfigError
from geoloc.data.crossview import CrossViewSet
from geoloc.geo import haversine_km
from geoloc.parts.config import BatchesConfig
from geoloc.tasks.cross_view.batches import PairSampler, unique_reference_batches

TILES = 40  # tiles 0-19 the positive of two queries each, 20-34 of one, 35-39 of none
POSITIVE = np.concatenate([np.repeat(np.arange(20), 2), np.arange(20, 35)])
N = len(POSITIVE)  # 55 queries
DIM = 6


def vigor_like(seed: int = 0) -> CrossViewSet:
    """Tiles scattered over a city, each query a few tens of metres from its tile's centre (distinct distances)."""
    rng = np.random.default_rng(seed)
    tiles = np.stack([41.8 + rng.uniform(0, 0.1, TILES), -87.7 + rng.uniform(0, 0.1, TILES)], axis=1)
    queries = tiles[POSITIVE] + rng.uniform(-3e-4, 3e-4, (N, 2))
    return CrossViewSet(
        name="vigor-same/train",
        queries=tuple(Path(f"q{i}.jpg") for i in range(N)),
        references=tuple(Path(f"t{j}.png") for j in range(TILES)),
        query_coords=queries,
        reference_coords=tiles,
        positive=POSITIVE.copy(),
        semi_positives=rng.integers(0, TILES, (N, 3)),
    )


SPLIT = vigor_like()
GEN = torch.Generator().manual_seed(7)
EMBEDDINGS = (torch.randn((N, DIM), generator=GEN), torch.randn((TILES, DIM), generator=GEN))


def embed() -> tuple[torch.Tensor, torch.Tensor]:
    return EMBEDDINGS


def config(kind: str) -> BatchesConfig:
    return BatchesConfig(type=kind, neighbours=2, draw=2, range=6, similarity_from_epoch=2, similarity_every=2)


def check_epoch(batches: list[np.ndarray], batch_size: int) -> None:
    """Each query exactly once; no reference twice in a batch; sorted batches within the size; full but the last few."""
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(N))
    for batch in batches:
        assert batch.dtype == np.int64 and np.all(np.diff(batch) > 0) and 1 <= len(batch) <= batch_size
        assert len(np.unique(POSITIVE[batch])) == len(batch), f"a reference twice in {batch}"
    sizes = [len(b) for b in batches]
    assert sizes[: N // batch_size - 1] == [batch_size] * (N // batch_size - 1)


def test_repair_by_hand():
    """Queries 0 and 1 share tile 0, 2 and 3 tile 1: query 1 waits for the second batch, where it comes first."""
    got = unique_reference_batches(np.arange(5), np.array([0, 0, 1, 1, 2]), 2)
    assert [b.tolist() for b in got] == [[0, 2], [1, 3], [4]]
    # The stream's end: queries of one tile wait for a batch each.
    got = unique_reference_batches(np.array([3, 0, 1, 2]), np.array([5, 5, 5, 6]), 3)
    assert [b.tolist() for b in got] == [[0, 3], [1], [2]]
    # No shared reference: plain chunks.
    assert [b.tolist() for b in unique_reference_batches(np.array([4, 2, 0, 1, 3]), np.arange(5), 2)] == [
        [2, 4], [0, 1], [3]
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["random", "gps_neighbours", "similarity"])
def test_each_pair_once_and_each_reference_once_per_batch(kind):
    sampler = PairSampler(config(kind), 8, SPLIT, torch.Generator().manual_seed(1))
    for epoch in range(1, 5):
        check_epoch(sampler.epoch(epoch, embed), 8)


def test_gps_lists_equal_brute_force():
    sampler = PairSampler(config("gps_neighbours"), 8, SPLIT, torch.Generator())
    coords = SPLIT.query_coords
    for i in range(N):
        km = [np.inf if j == i else float(haversine_km(coords[i], coords[j])) for j in range(N)]
        assert sampler.gps_lists[i].tolist() == sorted(range(N), key=lambda j: km[j])[:6]
    # The planted split forces the repair: a query's nearest is the other query of its tile.
    assert POSITIVE[sampler.gps_lists[0, 0]] == POSITIVE[0]


def test_similarity_lists_equal_brute_force():
    """Query i's 6 most similar references with a query, its own positive left out, as their first query."""
    sampler = PairSampler(config("similarity"), 8, SPLIT, torch.Generator().manual_seed(2))
    sampler.epoch(1, lambda: pytest.fail("epoch 1 uses the GPS lists"))
    sampler.epoch(2, embed)
    q, r = (e.numpy().astype(np.float64) for e in EMBEDDINGS)
    for i in range(N):
        candidates = [t for t in range(TILES) if t != POSITIVE[i] and t in POSITIVE]  # tiles 35-39 have no query
        scores = {t: sum(q[i, d] * r[t, d] for d in range(DIM)) for t in candidates}
        tiles = sorted(candidates, key=lambda t: -scores[t])[:6]
        assert sampler.similarity[i].tolist() == [int(np.flatnonzero(POSITIVE == t)[0]) for t in tiles]
    assert sampler.similarity_epoch == 2


def test_same_seed_same_batches_and_resume():
    def run(epochs: range, sampler: PairSampler) -> list[list[list[int]]]:
        return [[b.tolist() for b in sampler.epoch(e, embed)] for e in epochs]

    for kind in ("random", "gps_neighbours", "similarity"):
        a = PairSampler(config(kind), 8, SPLIT, torch.Generator().manual_seed(3))
        b = PairSampler(config(kind), 8, SPLIT, torch.Generator().manual_seed(3))
        assert run(range(1, 4), a) == run(range(1, 4), b)
        # Resume after epoch 3: epoch 4 reuses epoch 3's similarity lists (rebuilt every 2 epochs from 2).
        generator = torch.Generator()
        generator.set_state(a.generator.get_state())
        resumed = PairSampler(config(kind), 8, SPLIT, generator)
        resumed.load_state_dict(a.state_dict())
        assert resumed.similarity_epoch == (2 if kind == "similarity" else 0)
        assert run(range(4, 5), resumed) == run(range(4, 5), a)
    other = PairSampler(config("random"), 8, SPLIT, torch.Generator().manual_seed(4))
    assert run(range(1, 2), other) != run(range(1, 2), PairSampler(config("random"), 8, SPLIT, torch.Generator()))


def test_lists_longer_than_the_split_are_refused():
    cfg = BatchesConfig(type="similarity", neighbours=2, draw=2, range=35)  # 35 distinct positives: 34 to list
    with pytest.raises(ConfigError, match="train.batches.range"):
        PairSampler(cfg, 8, SPLIT, torch.Generator())
    other = vigor_like(1)
    with pytest.raises(ValueError, match="not this training set"):
        PairSampler(config("gps_neighbours"), 8, other, torch.Generator()).load_state_dict(
            PairSampler(config("gps_neighbours"), 8, SPLIT, torch.Generator()).state_dict()
        )
