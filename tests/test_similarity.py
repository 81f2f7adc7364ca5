"""Similarity lists that scale (``geoloc.parts.similarity``): faiss exact, the torch path and a numpy brute force
give the same lists on a small set with distinct scores; the approximate index's reported recall equals a
brute-force recomputation; exclude-self and largest-first hold on every path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoloc.parts.neighbours import similarity_lists
from geoloc.parts.similarity import faiss_lists, ranked_lists, recall, rescored_lists


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(queries: np.ndarray, keys: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """float64 scores, sorted descending (stable), own key at -inf where ``exclude_self``."""
    scores = queries.astype(np.float64) @ keys.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def distinct_scores(queries, keys, k) -> bool:
    """No two of a row's first k + 2 scores within 1e-6 (float32 errors of 8-d products are ~1e-7)."""
    scores = np.sort(queries.astype(np.float64) @ keys.astype(np.float64).T, axis=1)[:, ::-1][:, : k + 2]
    return bool(np.all(-np.diff(scores, axis=1) > 1e-6))


def test_faiss_exact_torch_and_brute_force_lists_are_equal():
    queries, keys = unit_rows(80, 8, 0), unit_rows(60, 8, 1)
    assert distinct_scores(queries, keys, 9) and distinct_scores(queries, queries, 9)
    expected = brute(queries, keys, 9, False)
    assert np.array_equal(faiss_lists(queries, keys, 9, exclude_self=False), expected)
    torch_lists = similarity_lists(torch.from_numpy(queries), torch.from_numpy(keys), 9, exclude_self=False, chunk=64)
    assert np.array_equal(torch_lists.numpy(), expected)
    own = brute(queries, queries, 9, True)
    got = faiss_lists(queries, queries, 9, exclude_self=True)
    assert np.array_equal(got, own) and not np.any(got == np.arange(80)[:, None])
    assert np.array_equal(ranked_lists(torch.from_numpy(queries), torch.from_numpy(queries), 9).lists, own)


@pytest.mark.parametrize("d", [16, 10])  # fast-scan product codes (d divisible by 4), flat lists (not)
def test_approximate_lists_report_the_recall_a_brute_force_recomputes(d):
    queries = unit_rows(3000, d, 2)
    q = torch.from_numpy(queries)
    result = ranked_lists(q, q, 20, approximate_above=0, seed=3)
    assert result.method == "faiss_ivf" and result.lists.shape == (3000, 20) and result.lists.dtype == np.int64
    assert not np.any(result.lists == np.arange(3000)[:, None])  # never itself
    assert all(len(set(row)) == 20 for row in result.lists)
    rows = result.recall_rows
    assert len(rows) == 1000 and len(set(rows.tolist())) == 1000
    exact = brute(queries, queries, 20, True)[rows]
    hits = [len(set(a) & set(e)) / 20 for a, e in zip(result.lists[rows], exact, strict=True)]
    assert result.recall == np.mean(hits) and 0.3 < result.recall  # measured, not assumed
    # Product codes miss some; flat lists, 64 of 93 probed at this size, may find every entry.
    assert result.recall < 1.0 or d == 10
    # Largest first: each row's scores of what it lists never rise.
    scores = np.take_along_axis(queries @ queries.T, result.lists, axis=1)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert np.array_equal(ranked_lists(q, q, 20, approximate_above=0, seed=3).lists, result.lists)  # seeded


def test_recall_is_the_shared_share():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approximate = np.array([[4, 1, 9, 10], [5, 6, 7, 8]])
    assert recall(approximate, exact) == (0.5 + 1.0) / 2


def test_rescored_lists_equal_the_exact_ones_where_their_fast_product_alone_errs():
    """The GPU's way above 200K keys, run on the CPU with bf16 as the erring fast product (TF32 does
    nothing on a CPU): bf16's top k alone misorders rows; re-scored, every row equals the brute force."""
    queries, keys = unit_rows(400, 32, 4), unit_rows(3000, 32, 5)
    q, x = torch.from_numpy(queries), torch.from_numpy(keys)
    assert distinct_scores(queries, keys, 10)
    expected = brute(queries, keys, 10, False)
    bf16_alone = torch.topk(q.bfloat16() @ x.bfloat16().T, 10, dim=1).indices.numpy()
    assert not np.array_equal(bf16_alone, expected)  # the fast product does err here
    assert np.array_equal(rescored_lists(q, x, 10, exclude_self=False, chunk=64, fast="bf16"), expected)
    assert np.array_equal(rescored_lists(q, x, 10, exclude_self=False, chunk=64, fast="tf32"), expected)
    own = unit_rows(500, 32, 6)
    assert distinct_scores(own, own, 10)
    got = rescored_lists(torch.from_numpy(own), torch.from_numpy(own), 10, chunk=128, fast="bf16")
    assert np.array_equal(got, brute(own, own, 10, True)) and not np.any(got == np.arange(500)[:, None])
