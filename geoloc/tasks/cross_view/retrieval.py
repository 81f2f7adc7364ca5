"""Cross-view retrieval metrics: each ground query ranks every aerial reference by embedding similarity.

Definitions (Sample4Geo's evaluation, ``sample4geo/evaluate/cvusa_and_cvact.py`` and ``vigor.py``
of Skyy93/Sample4Geo, except where said):

- **rank** of query i's true reference: the number of references strictly more similar to query i
  than its positive. Ties with the positive count in the query's favour, as in Sample4Geo.
- **recall_<k>**: the share (0..1, not percent) of queries of rank < k, for each k of ``recall_at``.
- **recall_top1pct**: the same with k = max(1, m // 100), m the number of references. Sample4Geo
  uses ``R // 100`` (``int(R * 0.01)`` elsewhere, the same number); below 100 references that is 0
  and its "top 1 %" recall is always 0, which says nothing, so k is at least 1 here (then it equals
  recall_1).
- **top-1**: the most similar reference; among equally similar ones, the lowest index (``argmax``
  returns the first maximum). Deterministic, and neither optimistic nor pessimistic about ties.
- **hit_rate** (only where queries have semi-positives, VIGOR): the share of queries whose top-1
  is the positive or one of its semi-positives: VIGOR's definition (Zhu et al., CVPR 2021) that the
  Sample4Geo paper states. Sample4Geo's code counts a slightly different thing (no reference other
  than the semi-positives strictly more similar than the positive): it misses a query whose top-1
  is a semi-positive followed by a wrong tile before the positive, and counts a tie of a wrong tile
  with the positive as a hit.
- **median_km**, **mean_km**, **acc_<t>km**: the great-circle error between each query's own
  coordinates and its top-1 reference's centre, and the share of errors <= t km (GeoCLIP's keys).

Similarities are dot products of the embeddings as given (pass unit embeddings for cosine), in
exact fp32 (``exact_fp32``: bf16 would round them to about 0.003 and create ties), over chunks of
queries: a chunk's scores are ``chunk`` x m x 4 bytes, never the whole n x m matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from geoloc.common.metrics import accuracy_key
from geoloc.geo import haversine_km
from geoloc.parts.precision import exact_fp32

CHUNK_BYTES = 2**30  # float32 scores of a chunk of queries against every reference (40K references: 6710 rows)


def top1pct_k(references: int) -> int:
    """The k of ``recall_top1pct``: 1 % of the references, at least 1."""
    return max(1, references // 100)


def rank_and_top1(
    query_emb: torch.Tensor, reference_emb: torch.Tensor, positive: np.ndarray, *, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(rank, top1), (n,) int64 numpy each: the rank of each query's true reference and its top-1
    reference (definitions in the module docstring).

    ``query_emb`` (n, D) and ``reference_emb`` (m, D) on one device, where the products run;
    ``positive`` (n,) indexes ``reference_emb``. ``chunk`` query rows are scored at a time
    (default: as many as fit ``CHUNK_BYTES``).
    """
    n, m = len(query_emb), len(reference_emb)
    positive = np.asarray(positive)
    if query_emb.ndim != 2 or reference_emb.ndim != 2 or query_emb.shape[1] != reference_emb.shape[1]:
        raise ValueError(
            f"rank_and_top1: embeddings must be (n, D) and (m, D), got {query_emb.shape}, {reference_emb.shape}"
        )
    if positive.shape != (n,) or n and (positive.min() < 0 or positive.max() >= m):
        raise ValueError(f"rank_and_top1: positive must be ({n},) indices of the {m} references")
    if query_emb.device != reference_emb.device:
        raise ValueError(f"rank_and_top1: queries on {query_emb.device}, references on {reference_emb.device}")
    chunk = chunk or max(1, CHUNK_BYTES // (4 * max(m, 1)))
    device = query_emb.device
    rank, top1 = np.empty(n, np.int64), np.empty(n, np.int64)
    with torch.no_grad(), exact_fp32(device):
        references_t = reference_emb.float().T
        for start in range(0, n, chunk):
            scores = query_emb[start : start + chunk].float() @ references_t
            rows = torch.arange(len(scores), device=device)
            own = scores[rows, torch.tensor(positive[start : start + len(scores)], device=device)]
            rank[start : start + len(scores)] = (scores > own[:, None]).sum(dim=1).cpu().numpy()
            top1[start : start + len(scores)] = scores.argmax(dim=1).cpu().numpy()  # the first of equal maxima
    return rank, top1


def metrics_from_ranks(
    rank: np.ndarray,
    top1: np.ndarray,
    positive: np.ndarray,
    semi_positives: np.ndarray,
    query_coords: np.ndarray,
    reference_coords: np.ndarray,
    recall_at: Sequence[int],
    thresholds_km: Sequence[float],
) -> dict[str, float]:
    """The flat metrics dict from ``rank_and_top1``'s arrays: ``recall_<k>``, ``recall_top1pct``,
    ``hit_rate`` (only if ``semi_positives`` (n, s) has s > 0; -1 pads a row), ``median_km``,
    ``mean_km``, ``acc_<t>km``. Coordinates are (lat, lon) degrees, queries (n, 2), references (m, 2)."""
    n, m = len(rank), len(reference_coords)
    if n == 0:
        raise ValueError("retrieval metrics need at least one query")
    if any(int(k) != k or k < 1 for k in recall_at):
        raise ValueError(f"recall_at must be integers >= 1, got {list(recall_at)}")
    semi_positives = np.asarray(semi_positives)
    if semi_positives.ndim != 2 or len(semi_positives) != n or query_coords.shape != (n, 2):
        raise ValueError(f"semi_positives (n, s) and query_coords (n, 2) need one row per query ({n})")
    metrics = {f"recall_{int(k)}": float(np.mean(rank < k)) for k in recall_at}
    metrics["recall_top1pct"] = float(np.mean(rank < top1pct_k(m)))
    if semi_positives.shape[1]:
        hit = (top1 == positive) | (top1[:, None] == semi_positives).any(axis=1)  # -1 pads never equal an index
        metrics["hit_rate"] = float(np.mean(hit))
    errors_km = haversine_km(np.asarray(query_coords, np.float64), np.asarray(reference_coords, np.float64)[top1])
    metrics["median_km"] = float(np.median(errors_km))
    metrics["mean_km"] = float(np.mean(errors_km))
    metrics.update({accuracy_key(t): float(np.mean(errors_km <= t)) for t in thresholds_km})
    return metrics


def retrieval_metrics(
    query_emb: torch.Tensor,
    reference_emb: torch.Tensor,
    positive: np.ndarray,
    semi_positives: np.ndarray,
    query_coords: np.ndarray,
    reference_coords: np.ndarray,
    recall_at: Sequence[int],
    thresholds_km: Sequence[float],
    *,
    chunk: int | None = None,
) -> dict[str, float]:
    """Every retrieval metric of one evaluation (``rank_and_top1`` then ``metrics_from_ranks``; call
    those two where the per-query rank and top-1 are wanted too)."""
    rank, top1 = rank_and_top1(query_emb, reference_emb, positive, chunk=chunk)
    return metrics_from_ranks(
        rank, top1, positive, semi_positives, query_coords, reference_coords, recall_at, thresholds_km
    )
