"""Similarity lists that scale (issue 26, item 2): exact up to 200K keys, re-scored on a GPU or faiss IVF above.

``ranked_lists`` is what the samplers call (``geoloc.parts.sampler``, ``geoloc.tasks.cross_view.batches``):

- **exact, torch chunks** (``geoloc.parts.neighbours.similarity_lists``) up to ``APPROXIMATE_ABOVE``
  keys, on the trial's device. On the CPU it stays the exact path
  rather than faiss's flat index because it measured faster here (20,000 x 20,000 random unit
  512-d rows, k 128, 2 threads: torch 12.0 s, ``faiss.IndexFlatIP`` 48.1 s) and because it keeps
  the lists, and so the batches and metrics, of every existing CPU study to the last digit: the
  two compute the same scores with different BLAS kernels, so near-ties (scores equal within
  float32 rounding) may come in another order.
- **re-scored, on a GPU** above ``APPROXIMATE_ABOVE`` keys (``rescored_lists``): the exact path's
  fp32 products (TF32 off) run on the GPU's CUDA cores, 4.65M x 4.65M x 512 about 22 PFLOP, some
  minutes at an H100's 67 TFLOP/s; so each chunk's scores come from TF32 tensor cores (fp32
  results), its best k + ``RESCORE_MARGIN`` are re-scored in exact fp32 and the best k of those
  kept. A row differs from the exact list only where a key of its exact k ranked below k +
  ``RESCORE_MARGIN`` in TF32: the recall against exact lists is measured as for the IVF index
  below. A chunk's scores take at most ``DEVICE_SCORES_BYTES`` (and half the GPU's free memory).
- **approximate, faiss IVF** on the CPU above ``APPROXIMATE_ABOVE`` keys: ``IVF_LISTS_PER_SQRT`` x
  sqrt(keys) inverted lists (inner product), k-means of ``IVF_KMEANS_ITERATIONS`` on at most
  ``IVF_TRAIN_PER_LIST`` points a list (seeded); in the lists, 4-bit product codes of d/4 parts
  scanned by faiss's SIMD fast-scan (``PQ{d/4}x4fsr``), and the ``IVF_REFINE_FACTOR`` x k best
  codes re-scored exactly (``RFlat``), so lists are ordered by exact scores; ``IVF_PROBE`` lists
  searched per query. On 100K clustered 512-d rows (k 128, 2 threads) this took 27 s at recall
  0.815 where the flat lists (``IVFFlat``, 64 points a list, 10 iterations, 32 probed) took 54 s at
  0.812 (2026-12-06, 2-core Xeon: ``bench/bench_similarity.py``'s embeddings). A dimension not
  divisible by 4 keeps flat lists. Its recall against the exact lists is measured every time lists
  are built, on ``RECALL_ROWS`` rows drawn with the seed (the exact lists of those rows, by the
  torch path), printed to stderr in one line and returned (``Lists.recall``). Recall depends on the
  embeddings: clustered embeddings (trained ones) do much better than random unit vectors, the
  worst case (``bench/bench_similarity.py``). Rows for which the probed lists held fewer than the
  needed entries are completed exactly.
- ``faiss_lists(..., approximate=False)``: faiss's exact flat index (``IndexFlatIP``), the cross-check
  of the tests and the bench.

``exclude_self`` (keys are the queries' own rows): each row asks for k + 1 and drops its own key, or
the last where its own key is not among them (the same lists as the exact path's -inf diagonal).
Largest first everywhere; equal scores may come in either order.

The lists are not cached on disk: they are built from embeddings that change with every rebuild,
so a key of those embeddings would only match a rebuild of identical weights, which a resumed
trial does not need (the sampler's ``state_dict`` holds its current lists); fingerprinting 1M x
512 floats would cost about a second each time for no hit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from geoloc.parts.neighbours import check_list_request, similarity_lists
from geoloc.parts.precision import exact_fp32, tf32

APPROXIMATE_ABOVE = 200_000  # keys; at 100K the exact CPU path takes minutes, at 1M hours (bench_similarity)
IVF_LISTS_PER_SQRT = 4
IVF_TRAIN_PER_LIST = 32
IVF_PROBE = 64
IVF_KMEANS_ITERATIONS = 6
IVF_REFINE_FACTOR = 4  # codes re-scored exactly per list entry wanted (faiss's k_factor)
RESCORE_MARGIN = 64  # candidates per row beyond k from the GPU's TF32 scores, re-scored exactly
DEVICE_SCORES_BYTES = 8 * 2**30  # a chunk's TF32 scores on a GPU (4.65M keys: 461 rows)
RECALL_ROWS = 1000


@dataclass(frozen=True)
class Lists:
    """(n, k) int64 lists, largest similarity first; how they were made; for lists not made exactly the mean
    share of each sampled row's exact k found in its list (``recall``) and the rows sampled."""

    lists: np.ndarray
    method: str  # "exact" (torch chunks), "rescored" (GPU, TF32 candidates) or "faiss_ivf" (CPU)
    recall: float | None = None
    recall_rows: np.ndarray | None = None


def ranked_lists(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    exclude_self: bool = True,
    chunk: int = 4096,
    approximate_above: int = APPROXIMATE_ABOVE,
    seed: int = 0,
) -> Lists:
    """The k keys of largest dot product for every query (see the module's docstring for which way)."""
    if len(keys) <= approximate_above:
        return Lists(similarity_lists(queries, keys, k, exclude_self=exclude_self, chunk=chunk).numpy(), "exact")
    if queries.device.type != "cpu":
        # The samplers' chunk is sized for a CPU's memory; the GPU's products want larger ones.
        lists = rescored_lists(
            queries, keys, k, exclude_self=exclude_self, chunk=rows_at_once(len(keys), queries.device)
        )
        method, way = "rescored", "TF32 candidates re-scored in fp32"
    else:
        q, x = (np.ascontiguousarray(t.detach().float().numpy()) for t in (queries, keys))
        lists = faiss_lists(q, x, k, exclude_self=exclude_self, approximate=True, seed=seed)
        method, way = "faiss_ivf", "faiss IVF"
    rows = np.sort(np.random.default_rng(seed).choice(len(queries), min(RECALL_ROWS, len(queries)), replace=False))
    exact = _exact_rows(queries, keys, rows, k, exclude_self, chunk)
    share = recall(lists[rows], exact)
    print(
        f"similarity lists: {way} over {len(keys):,} keys, k {k}: recall {share:.4f} against exact lists "
        f"on {len(rows)} rows",
        file=sys.stderr,
        flush=True,
    )
    return Lists(lists, method, share, rows)


def rows_at_once(n_keys: int, device: torch.device) -> int:
    """Query rows of ``rescored_lists`` at once on ``device``: their scores in ``DEVICE_SCORES_BYTES`` and,
    on a GPU, in half its free memory."""
    budget = DEVICE_SCORES_BYTES
    if device.type == "cuda":
        budget = min(budget, torch.cuda.mem_get_info(device)[0] // 2)
    return max(1, budget // (4 * n_keys))


def rescored_lists(
    queries: torch.Tensor, keys: torch.Tensor, k: int, *, exclude_self: bool = True, chunk: int = 4096, fast="tf32"
) -> np.ndarray:
    """(n, k) int64 lists (on the host), largest first, computed on the tensors' device: per chunk of query
    rows, scores by a fast product (``fast``: "tf32", a GPU's tensor cores with fp32 results; "bf16",
    rounded inputs and results, with which the CPU's tests make the fast product err), its best k +
    ``RESCORE_MARGIN`` (own key excluded) re-scored in exact fp32 and the best k of those kept."""
    n = check_list_request("rescored_lists", queries, keys, k, exclude_self)
    want = min(k + RESCORE_MARGIN, len(keys) - exclude_self)
    out = np.empty((n, k), dtype=np.int64)
    with torch.no_grad():
        exact_keys = keys.float()
        fast_keys = exact_keys.bfloat16() if fast == "bf16" else exact_keys
        for start in range(0, n, chunk):
            q = queries[start : start + chunk].float()
            with tf32(fast == "tf32"):
                scores = q.to(fast_keys.dtype) @ fast_keys.T
            if exclude_self:
                scores.diagonal(start).fill_(-torch.inf)  # element (j, start + j): query start + j's own key
            candidates = torch.topk(scores, want, dim=1).indices
            del scores
            with exact_fp32(q.device):
                exact = torch.einsum("rd,rcd->rc", q, exact_keys[candidates])
            best = candidates.gather(1, torch.topk(exact, k, dim=1).indices)
            out[start : start + len(q)] = best.cpu().numpy()
    return out


def recall(approximate: np.ndarray, exact: np.ndarray) -> float:
    """The mean over rows of the share of a row's exact entries that its approximate list holds."""
    hits = [len(np.intersect1d(a, e, assume_unique=True)) for a, e in zip(approximate, exact, strict=True)]
    return float(np.mean(np.asarray(hits) / exact.shape[1]))


def faiss_lists(
    queries: np.ndarray,
    keys: np.ndarray,
    k: int,
    *,
    exclude_self: bool = True,
    approximate: bool = False,
    seed: int = 0,
    probe: int = IVF_PROBE,
    threads: int | None = None,
) -> np.ndarray:
    """(n, k) int64 lists of float32 ``queries`` against ``keys`` by faiss: flat (exact) or IVF (approximate)."""
    import faiss  # here: only the CPU's large-set path needs it

    from geoloc.common.devices import cpu_share  # lazily, as in geoloc.parts.neighbours

    n, m = len(queries), len(keys)
    if exclude_self and n != m:
        raise ValueError(f"faiss_lists: exclude_self needs one key per query, got {n} queries and {m} keys")
    if not 1 <= k <= m - exclude_self:
        raise ValueError(f"faiss_lists: k={k} but there are {m - exclude_self} keys to list")
    faiss.omp_set_num_threads(threads or cpu_share())
    queries, keys = (np.ascontiguousarray(a, dtype=np.float32) for a in (queries, keys))
    d, want = keys.shape[1], k + exclude_self
    if approximate:
        index = ivf_index(keys, seed)
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(probe, ivf.nlist)
    else:
        index = faiss.IndexFlatIP(d)
        index.add(keys)
    found = index.search(queries, want)[1]
    short = np.flatnonzero((found < 0).any(axis=1))  # IVF: the probed lists held fewer than ``want`` keys
    if len(short):
        exact = faiss.IndexFlatIP(d)
        exact.add(keys)
        found[short] = exact.search(queries[short], want)[1]
    found = found.astype(np.int64)
    return _drop_own(found, np.arange(n), k) if exclude_self else found


def ivf_index(keys: np.ndarray, seed: int = 0):
    """A faiss IVF index (inner product) of float32 ``keys``, trained and filled (see the module's docstring):
    ``IVF_LISTS_PER_SQRT`` x sqrt(m) lists (at most one per ``IVF_TRAIN_PER_LIST`` keys), fast-scan
    product codes re-scored exactly, or flat lists where the dimension is not divisible by 4."""
    index = trained_ivf(keys, seed)
    index.add(keys)
    return index


def trained_ivf(keys: np.ndarray, seed: int = 0):
    """``ivf_index``'s index trained on a seeded sample of ``keys`` (its lists and codes), not yet filled."""
    import faiss

    m, d = keys.shape
    n_lists = max(1, min(int(IVF_LISTS_PER_SQRT * np.sqrt(m)), m // IVF_TRAIN_PER_LIST))
    codes = f"PQ{d // 4}x4fsr,RFlat" if d % 4 == 0 else "Flat"
    index = faiss.index_factory(d, f"IVF{n_lists},{codes}", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed, ivf.cp.niter = seed, IVF_KMEANS_ITERATIONS
    ivf.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
    ivf.cp.min_points_per_centroid = 1  # no warning below faiss's default of 39
    sample = np.random.default_rng(seed).choice(m, min(m, n_lists * IVF_TRAIN_PER_LIST), replace=False)
    index.train(keys[np.sort(sample)])
    if codes != "Flat":
        index.k_factor = IVF_REFINE_FACTOR
    return index


def _drop_own(ranked: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k entries other than ``own[row]`` (rows hold k + 1 entries; without it, the first k)."""
    is_own = ranked == own[:, None]
    at = np.where(is_own.any(axis=1), is_own.argmax(axis=1), k)
    cols = np.arange(k)
    return np.take_along_axis(ranked, cols + (cols >= at[:, None]), axis=1)


def _exact_rows(queries, keys, rows: np.ndarray, k: int, exclude_self: bool, chunk: int) -> np.ndarray:
    """The exact lists (torch chunks) of the query ``rows``, their own keys excluded where ``exclude_self``."""
    ranked = similarity_lists(queries[torch.from_numpy(rows)], keys, k + exclude_self, exclude_self=False, chunk=chunk)
    return _drop_own(ranked.numpy(), rows, k) if exclude_self else ranked.numpy()
