"""Neighbour lists and batch assembly for Sample4Geo-style hard negatives.

Sample4Geo (Deuser et al., ICCV 2023) fills each batch with places that are hard to tell
apart, so that the contrastive loss's negatives are informative: first geographic neighbours
(``nearest`` on the training coordinates), later the most similar embeddings
(``similarity_lists``); ``neighbour_batches`` assembles an epoch's batches from either kind of
list. The lists are the expensive part (all pairs); batches are cheap and change every epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from geoloc.geo import check_coordinates, chord_of_km, unit_vectors
from geoloc.parts.precision import exact_fp32

# Entries (rows x neighbours) of one k-d tree query: 2^22 distances and indices, 64 MiB, whatever the sizes.
QUERY_BUDGET = 1 << 22
# Chords shorter than this (6 micrometres on the earth) are one place for ``beyond_km``.
SAME_PLACE = 1e-12
# Anchors whose far-neighbour draws are made at once in ``neighbour_batches`` (one random block each).
DRAW_BLOCK = 1024


def nearest(
    queries: np.ndarray,
    pool: np.ndarray,
    k: int,
    *,
    beyond_km: float | None = None,
    exclude_self: bool = False,
    workers: int | None = None,
) -> np.ndarray:
    """(n, k) int32 indices into ``pool`` of each query's k nearest pool points by great-circle distance, nearest first.

    ``queries`` (n, 2) and ``pool`` (m, 2) are (lat, lon) degrees. A k-d tree (scipy's
    ``cKDTree``, ``workers`` threads, default: this process's CPU share) searches the points as
    unit vectors: the chord between two of them grows monotonically with their great-circle
    distance, so the chord's nearest are the sphere's nearest, and the tree needs no spherical
    metric. Queries run in row chunks of at most ``QUERY_BUDGET`` entries, so memory stays
    bounded (1M queries x 129 neighbours: 64 MiB at a time, not 2 GiB).

    ``exclude_self``: ``queries`` is ``pool`` (e.g. the training coordinates); row i never lists
    pool index i. Other rows at exactly i's coordinates stay in its list (at 0 km): they are
    other images of the same place, legitimate neighbours.

    ``beyond_km``: only pool points strictly farther than ``beyond_km`` qualify (0 drops exact
    duplicates of the query's location, itself included). Many points may lie inside the radius
    (2000 km in Europe), so no fixed margin is safe: the points within it are counted first
    (``query_ball_point(return_length=True)``) and each row asks for k more than its count, rows
    grouped by that need within the budget; the cost grows with the count. The radius is compared
    as a chord, so a point within ~1e-9 km of the boundary may fall either side of it (and points
    within 6 micrometres of the query, ``SAME_PLACE``, never qualify). Raises
    ValueError naming the first query row with fewer than k qualifying points.

    Equal distances (ties, e.g. duplicate coordinates) come in the tree's order, which is not
    specified: either may come first.
    """
    from scipy.spatial import cKDTree  # here: importing it costs a trainer 0.25 s it needs only for lists

    queries, pool = np.asarray(queries, np.float64), np.asarray(pool, np.float64)
    for name, array in (("queries", queries), ("pool", pool)):
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(f"nearest: {name} must be (rows, 2) (lat, lon), got shape {array.shape}")
        check_coordinates(array, f"nearest: {name}")
    n, m = len(queries), len(pool)
    if exclude_self and not np.array_equal(queries, pool):
        raise ValueError(f"nearest: exclude_self needs queries to be the pool, got {n} queries, {m} other pool points")
    if k < 1:
        raise ValueError(f"nearest: k must be at least 1, got {k}")
    if beyond_km is not None and not beyond_km >= 0:
        raise ValueError(f"nearest: beyond_km must be >= 0, got {beyond_km}")
    if beyond_km is None and k > m - exclude_self:
        raise ValueError(f"nearest: k={k} but the pool has only {m - exclude_self} points to list")
    if workers is None:
        from geoloc.common.devices import cpu_share  # lazily: the trainer's module imports the model and data stack

        workers = cpu_share()

    tree = cKDTree(unit_vectors(pool))
    vectors = tree.data if exclude_self else unit_vectors(queries)
    # Queries in the order of a tree's leaves: neighbouring queries visit the same nodes, which stay
    # in the cache (3x faster than a random order at 1M points).
    order = tree.indices if exclude_self else cKDTree(vectors).indices
    radius, inside = None, None
    if beyond_km is not None:
        radius = _chord(beyond_km)
        inside = np.empty(n, np.int64)  # pool points within the radius (itself included)
        inside[order] = tree.query_ball_point(vectors[order], radius, return_length=True, workers=workers)
        short = np.flatnonzero(m - inside < k)
        if len(short):
            raise ValueError(
                f"nearest: query row {short[0]} has {m - inside[short[0]]} pool points beyond {beyond_km} km, "
                f"needs k={k}"
            )
    out = np.empty((n, k), np.int32)
    chunk = max(1, QUERY_BUDGET // (k + 1))
    for start in range(0, n, chunk):
        rows = order[start : start + chunk]
        points = vectors[rows]
        if radius is None:
            _fill(tree, points, rows, k, k + exclude_self, None, exclude_self, workers, out)
            continue
        # Rows by need, in groups of similar need within the budget (need is sorted, so the cost is increasing).
        by_need = np.argsort(inside[rows], kind="stable")
        need = np.minimum(inside[rows][by_need] + k, m)
        begin = 0
        while begin < len(rows):
            cost = np.arange(1, len(rows) - begin + 1) * need[begin:]
            end = begin + max(1, int(np.searchsorted(cost, QUERY_BUDGET, side="right")))
            group = by_need[begin:end]
            _fill(tree, points[group], rows[group], k, int(need[end - 1]), radius, exclude_self, workers, out)
            begin = end
    return out


def _chord(km: float) -> float:
    """The chord of the unit sphere that spans ``km`` of great circle (2, the diameter, from half the circumference).

    At least ``SAME_PLACE``, so that two rows of the same coordinates count as one place even if
    their unit vectors were rounded differently (a last-bit difference is a chord of ~1e-16).
    """
    return max(chord_of_km(km), SAME_PLACE)


def _fill(tree, points, rows, k, depth, radius, exclude_self, workers, out) -> None:
    """``out[rows]``: the first k of each row's ``depth`` nearest that qualify; rows that came up
    short (a chord count rounded differently from the query's) ask again, deeper."""
    m = tree.n
    depth = min(depth, m)
    dist, idx = tree.query(points, k=depth, workers=workers)
    dist, idx = dist.reshape(len(rows), depth), idx.reshape(len(rows), depth)
    cols = np.arange(k)
    if radius is not None:
        # Sorted by distance, so the points within the radius (itself among them) are a prefix of each row.
        skip = np.count_nonzero(dist <= radius, axis=1)
        take = skip[:, None] + cols
        ok = skip + k <= depth
    elif exclude_self:
        is_self = idx == rows[:, None]
        at = np.where(is_self.any(axis=1), is_self.argmax(axis=1), depth - 1)  # absent: drop the last
        take = cols + (cols >= at[:, None])
        ok = np.ones(len(rows), bool)
    else:
        take, ok = np.broadcast_to(cols, (len(rows), k)), np.ones(len(rows), bool)
    out[rows[ok]] = np.take_along_axis(idx[ok], take[ok], axis=1)
    if ok.all():
        return
    short = np.flatnonzero(~ok)
    if depth == m:
        first = short[np.argmin(rows[short])]
        raise ValueError(
            f"nearest: query row {rows[first]} has {m - skip[first]} pool points beyond the radius, needs k={k}"
        )
    # Those whose count ended inside the returned depth need exactly that count + k; the others twice the depth.
    deeper = int(np.max(np.where(skip[short] < depth, skip[short] + k, 2 * depth)))
    _fill(tree, points[short], rows[short], k, deeper, radius, exclude_self, workers, out)


def similarity_lists(
    queries: torch.Tensor, keys: torch.Tensor, k: int, *, exclude_self: bool = True, chunk: int = 4096
) -> torch.Tensor:
    """(n, k) int64 CPU tensor: for each query row, the k key rows of largest dot product, largest first.

    Sample4Geo's Dynamic Similarity Sampling lists (visually confusable places). Exact: each chunk
    of ``chunk`` query rows is multiplied with all keys and ``torch.topk`` picks from the full
    scores, on the tensors' device (a GPU where the trainer has one), in fp32 with autocast and
    TF32 off (``exact_fp32``: bf16 rounds scores to ~0.003 and would reorder close neighbours).
    A chunk's scores take ``chunk`` x m x 4 bytes (4096 x 1M keys: 16 GiB), so pass a smaller
    chunk for large key sets.

    ``exclude_self``: ``keys`` are the queries' own rows (n == m); row i never lists key i (its
    score is set to -inf). Equal scores (ties) come in ``topk``'s order, which is not specified.
    """
    n = check_list_request("similarity_lists", queries, keys, k, exclude_self)
    out = torch.empty((n, k), dtype=torch.int64)
    with torch.no_grad(), exact_fp32(queries.device):
        keys_t = keys.float().T
        for start in range(0, n, chunk):
            scores = queries[start : start + chunk].float() @ keys_t
            if exclude_self:
                scores.diagonal(start).fill_(-torch.inf)  # element (j, start + j): query start + j's own key
            out[start : start + len(scores)] = torch.topk(scores, k, dim=1).indices.cpu()
    return out


def check_list_request(name: str, queries: torch.Tensor, keys: torch.Tensor, k: int, exclude_self: bool) -> int:
    """The number of queries, or ValueError (prefixed with ``name``) for a request no list can answer."""
    n, m = len(queries), len(keys)
    if exclude_self and n != m:
        raise ValueError(f"{name}: exclude_self needs one key per query, got {n} queries and {m} keys")
    if not 1 <= k <= m - exclude_self:
        raise ValueError(f"{name}: k={k} but there are {m - exclude_self} keys to list")
    if queries.device != keys.device:
        raise ValueError(f"{name}: queries on {queries.device}, keys on {keys.device}")
    return n


def neighbour_batches(
    lists: np.ndarray, batch_size: int, neighbours: int, draw: int, generator: torch.Generator
) -> list[np.ndarray]:
    """One epoch of Sample4Geo's neighbour batches: int64 index arrays, each sorted, of ``batch_size``
    images (the last may be smaller); every image appears in exactly one.

    ``lists`` (n, range): row i holds image i's neighbours, nearest (or most similar) first, i
    itself excluded (``nearest(..., exclude_self=True)`` or ``similarity_lists``); entries of a
    row must be distinct.

    Algorithm: visit the images in a random order (``torch.randperm(n, generator)``). An image
    not yet used this epoch is an anchor and starts a group: itself, then its candidates, which
    are its first ``neighbours`` list entries followed by ``draw`` entries drawn without
    replacement from list ranks ``neighbours + 1 .. range`` (in the drawn order), less those
    already used this epoch. The group joins the current batch until that is full: a group that
    does not fit is cut, and its remaining candidates stay unused, to be placed later as anchors
    or in other groups. A full batch is closed and the next begun. So every image is used exactly
    once per epoch; Sample4Geo's code instead drops the leftovers that no longer fit.

    Random draws come only from ``generator``, in this order: the visiting order
    (``randperm(n)``), then, as anchors are reached, one ``torch.rand((DRAW_BLOCK, range -
    neighbours), dtype=float64)`` block per ``DRAW_BLOCK`` anchors; an anchor's draws are the
    first ``draw`` columns of its block row's stable argsort (none are drawn when ``draw`` is 0).
    The same generator state gives the same batches.

    Speed (2-core machine, range 128, neighbours 32, draw 32, batch 512; ``bench/bench_neighbours.py``):
    100K images 0.22 s an epoch, 1M images 3.1 s (a Python loop over the anchors, vectorised within a group).
    """
    lists = np.asarray(lists)
    if lists.ndim != 2 or not np.issubdtype(lists.dtype, np.integer):
        raise ValueError(f"neighbour_batches: lists must be a 2-d integer array, got {lists.dtype} {lists.shape}")
    n, span = lists.shape
    if min(neighbours, draw) < 0 or neighbours + draw > span:
        raise ValueError(f"neighbour_batches: need 0 <= neighbours + draw <= range, got {neighbours} + {draw} > {span}")
    if 1 + neighbours + draw > batch_size:
        raise ValueError(f"neighbour_batches: a group of 1 + {neighbours} + {draw} exceeds a batch of {batch_size}")
    if n and (lists.min() < 0 or lists.max() >= n):
        raise ValueError(f"neighbour_batches: list entries must index the {n} images")

    order = torch.randperm(n, generator=generator).numpy()
    near, far = lists[:, :neighbours], lists[:, neighbours:]
    used = np.zeros(n, bool)
    batches, parts, room = [], [], batch_size
    drawn, row = None, DRAW_BLOCK
    for anchor in order.tolist():
        if used[anchor]:
            continue
        used[anchor] = True
        candidates = near[anchor]
        if draw:
            if row == DRAW_BLOCK:
                keys = torch.rand((DRAW_BLOCK, span - neighbours), generator=generator, dtype=torch.float64)
                drawn, row = torch.argsort(keys, dim=1, stable=True)[:, :draw].numpy(), 0
            candidates = np.concatenate((candidates, far[anchor, drawn[row]]))
            row += 1
        candidates = candidates[~used[candidates]][: room - 1]
        used[candidates] = True
        parts += [[anchor], candidates]
        room -= 1 + len(candidates)
        if room == 0:
            batches.append(np.sort(np.concatenate(parts)).astype(np.int64))
            parts, room = [], batch_size
    if parts:
        batches.append(np.sort(np.concatenate(parts)).astype(np.int64))
    if sum(map(len, batches)) != n:  # only a row repeating an entry can place an image twice
        raise ValueError("neighbour_batches: a row of lists repeats an entry; each must list distinct images")
    return batches
