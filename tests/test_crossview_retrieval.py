"""Cross-view retrieval metrics (geoloc/tasks/cross_view/retrieval.py) against brute-force loops on
planted embeddings with ties, and the symmetric InfoNCE (geoloc/parts/losses.py) against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geoloc.geo import EARTH_RADIUS_KM
from geoloc.parts.losses import symmetric_infonce
from geoloc.tasks.cross_view.retrieval import metrics_from_ranks, rank_and_top1, retrieval_metrics, top1pct_k


def planted(
    n: int, m: int, seed: int, dim: int = 3, top: int = 1
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Embeddings of integers in -top..top (exact dot products, ties), positives with shared references,
    and 3 semi-positives per query (-1 padded)."""
    rng = np.random.default_rng(seed)
    queries = torch.from_numpy(rng.integers(-top, top + 1, (n, dim)).astype(np.float32))
    references = torch.from_numpy(rng.integers(-top, top + 1, (m, dim)).astype(np.float32))
    positive = rng.integers(0, m, n)
    semi = rng.integers(0, m, (n, 3))
    semi[rng.random((n, 3)) < 0.3] = -1
    return queries, references, positive, semi


def brute(queries, references, positive):
    """Rank (references strictly more similar than the positive) and top-1 (lowest index of the maximum), by loops."""
    q, r = queries.numpy().astype(np.float64), references.numpy().astype(np.float64)
    rank, top1 = [], []
    for i in range(len(q)):
        scores = [sum(q[i, d] * r[j, d] for d in range(q.shape[1])) for j in range(len(r))]
        rank.append(sum(s > scores[positive[i]] for s in scores))
        best = max(scores)
        top1.append(next(j for j, s in enumerate(scores) if s == best))
    return np.array(rank), np.array(top1)


def test_rank_and_top1_equal_brute_force_with_ties_and_chunks():
    queries, references, positive, _ = planted(31, 40, 0)
    want_rank, want_top1 = brute(queries, references, positive)
    for chunk in (None, 1, 7):
        rank, top1 = rank_and_top1(queries, references, positive, chunk=chunk)
        assert rank.dtype == top1.dtype == np.int64
        assert np.array_equal(rank, want_rank) and np.array_equal(top1, want_top1)
    scores = queries @ references.T
    # The planted set has what the definitions are about: ties at the top, ties with the positive.
    assert ((scores == scores.max(dim=1, keepdim=True).values).sum(dim=1) > 1).any()
    own = scores[torch.arange(31), torch.from_numpy(positive)]
    assert ((scores == own[:, None]).sum(dim=1) > 1).any()


def test_recall_top1pct_and_hit_rate_against_loops():
    queries, references, positive, semi = planted(50, 250, 1, dim=4, top=2)
    queries[:30] = 2 * references[positive[:30]]  # these near their positive: recall between 0 and 1
    rank, top1 = brute(queries, references, positive)
    coords_q, coords_r = np.zeros((50, 2)), np.zeros((250, 2))
    got = retrieval_metrics(queries, references, positive, semi, coords_q, coords_r, [1, 5, 10], [1.0], chunk=16)
    for k in (1, 5, 10):
        assert got[f"recall_{k}"] == sum(r < k for r in rank) / 50
    assert top1pct_k(250) == 2 and got["recall_top1pct"] == sum(r < 2 for r in rank) / 50
    hits = sum(top1[i] == positive[i] or top1[i] in [s for s in semi[i] if s >= 0] for i in range(50))
    assert got["hit_rate"] == hits / 50
    assert 0 < got["recall_1"] < got["recall_10"] < 1 and 0 < got["hit_rate"] < 1
    # No semi-positives (CVUSA, CVACT): no hit rate; under 100 references top 1 % is the top 1.
    small = retrieval_metrics(queries, references[:40], positive % 40, np.zeros((50, 0), np.int64),
                              coords_q, coords_r[:40], [1], [1.0])  # fmt: skip
    assert "hit_rate" not in small and top1pct_k(40) == 1 and small["recall_top1pct"] == small["recall_1"]


def test_hit_rate_by_hand():
    """Query 0's top-1 is its positive, query 1's a semi-positive, query 2's neither (its semi-positive is second)."""
    references = torch.eye(4)
    queries = torch.tensor([[1.0, 0.5, 0, 0], [0.2, 1.0, 0, 0], [0, 0, 1.0, 0.5]])
    positive, semi = np.array([0, 0, 3]), np.array([[1, -1], [1, 2], [3, -1]])
    rank, top1 = rank_and_top1(queries, references, positive)
    assert rank.tolist() == [0, 1, 1] and top1.tolist() == [0, 1, 2]
    got = metrics_from_ranks(rank, top1, positive, semi, np.zeros((3, 2)), np.zeros((4, 2)), [1, 2], [])
    assert got["hit_rate"] == 2 / 3 and got["recall_1"] == 1 / 3 and got["recall_2"] == 1.0


def test_distances_by_hand():
    """Points on the equator one degree apart are 2 pi R / 360 = 111.195 km apart."""
    one_degree = 2 * math.pi * EARTH_RADIUS_KM / 360
    assert one_degree == pytest.approx(111.1951, abs=1e-4)
    reference_coords = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    query_coords = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    top1 = np.array([0, 1, 2, 0])  # errors: 0, 1, 3 and 2 degrees
    got = metrics_from_ranks(np.zeros(4, np.int64), top1, np.zeros(4, np.int64), np.zeros((4, 0), np.int64),
                             query_coords, reference_coords, [1], [1, 112, 250])  # fmt: skip
    assert got["median_km"] == pytest.approx(1.5 * one_degree, rel=1e-12)
    assert got["mean_km"] == pytest.approx(1.5 * one_degree, rel=1e-12)
    assert (got["acc_1km"], got["acc_112km"], got["acc_250km"]) == (0.25, 0.5, 0.75)
    assert set(got) == {"recall_1", "recall_top1pct", "median_km", "mean_km", "acc_1km", "acc_112km", "acc_250km"}


def test_bad_indices_are_refused():
    queries, references, positive, _ = planted(4, 5, 2)
    with pytest.raises(ValueError, match="positive"):
        rank_and_top1(queries, references, np.array([0, 1, 2, 5]))


def hand_cross_entropies(q: np.ndarray, r: np.ndarray, scale: float, smoothing: float) -> list[float]:
    """Query-to-reference and reference-to-query cross-entropy with label smoothing, the log-softmax written out."""
    q = q / np.sqrt((q**2).sum(axis=1, keepdims=True))
    r = r / np.sqrt((r**2).sum(axis=1, keepdims=True))
    logits = scale * q @ r.T
    out = []
    for matrix in (logits, logits.T):
        n, total = len(matrix), 0.0
        for i in range(n):
            log_p = [matrix[i, j] - math.log(sum(math.exp(matrix[i, c]) for c in range(n))) for j in range(n)]
            total += -(1 - smoothing) * log_p[i] - smoothing / n * sum(log_p)
        out.append(total / n)
    return out


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_symmetric_infonce_by_hand(smoothing):
    """A 3x3 batch, unnormalised on purpose (the loss normalises) and asymmetric (the two directions differ)."""
    q = np.array([[1.0, 0.0, 2.0], [0.5, 1.5, 0.0], [-1.0, 0.3, 0.7]])
    r = np.array([[2.0, 0.1, 3.0], [0.0, 1.0, 0.2], [1.0, 1.0, 1.0]])
    forward, backward = hand_cross_entropies(q, r, 14.0, smoothing)
    assert abs(forward - backward) > 0.01
    got = symmetric_infonce(torch.tensor(q), torch.tensor(r), torch.tensor(14.0), smoothing)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx((forward + backward) / 2, rel=1e-6)
