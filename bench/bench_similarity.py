"""Similarity lists that scale (``geoloc.parts.similarity``, issue 26 item 2), on the CPU.

n x 512-d unit embeddings against themselves (own row excluded), lists of 128, three ways side by
side in one run: the old exact path (``similarity_lists``, torch chunks; what the CPU ran before,
and still runs up to ``APPROXIMATE_ABOVE`` keys), faiss's exact flat index (``IndexFlatIP``) and
the approximate index the CPU now uses above that size (``ranked_lists``: faiss IVF, its recall
measured on 1,000 rows, included in its time). The exact ways are timed on a subset of the query
rows against all n keys and scaled to n rows (rows are independent: the cost is linear in them);
the approximate way runs on all n.

Two kinds of embeddings: random unit vectors (no structure, the worst case for any approximate
index) and clustered ones (2,000 random centres, each point a centre plus Gaussian noise of 0.6
times its norm, normalised; 50 a centre at 100K), nearer to trained embeddings. Recall depends on
which: both are reported. The exact ways are timed on the clustered set (their cost does not depend
on the values).

1M is **extrapolated, not measured**: the exact ways x (1M / n)^2 (quadratic). The IVF way in three
timed parts: its training (k-means and the product codes on a sample of a fixed number of points
per list, 4 sqrt(n) lists: x 1M / n), filling it (each of n keys against 4 sqrt(n) centroids:
x (1M / n)^1.5) and the rest, the search and the recall's exact rows (n queries each scanning
4 sqrt(n) centroids and a fixed number of lists of sqrt(n) / 4 codes: x (1M / n)^1.5; the recall's
1,000 exact rows grow only linearly, so this part is over-counted). The training and filling are
timed again on their own, after the timed run.

Agreement: the two exact ways give the same lists on the timed rows up to near-ties (entries
whose float64 scores agree within 1e-6), and the reported recall equals a recomputation from the
lists against a float64 brute force of the sampled rows, up to one entry for each row whose k-th
and (k + 1)-th float64 scores are such a near-tie (the float32 exact lists may hold either).
"""

from __future__ import annotations

import numpy as np
import torch

from geoloc.parts.neighbours import similarity_lists
from geoloc.parts.similarity import APPROXIMATE_ABOVE, faiss_lists, ranked_lists, recall, trained_ivf

from .common import Result, log, table, timed

K = 128
DIM = 512
CENTRES = 2000
NOISE = 0.6
ONE_M = 1_000_000
TODAY_1M_H = 3.0  # bench_neighbours (b): the exact torch path at 1M, extrapolated (issue 26)
FULL = {"n": 100_000, "torch_rows": 5_000, "faiss_rows": 1_000}
QUICK = {"n": 5_000, "torch_rows": 1_000, "faiss_rows": 500}
EXACT_TORCH, EXACT_FAISS, IVF = "old exact path (torch chunks)", "faiss exact (IndexFlatIP)", "faiss IVF (ranked_lists)"


def embeddings(n: int, clustered: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if clustered:
        centres = rng.standard_normal((CENTRES, DIM))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        x = centres[rng.integers(CENTRES, size=n)] + NOISE * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    else:
        x = rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_rows(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores of ``rows`` against every row (own at -inf) and their top K, largest first."""
    scores = x[rows].astype(np.float64) @ x.astype(np.float64).T
    scores[np.arange(len(rows)), rows] = -np.inf
    return scores, np.argsort(-scores, axis=1, kind="stable")[:, :K]


def main(quick: bool = False) -> Result:
    sizes = QUICK if quick else FULL
    n = sizes["n"]
    rng = np.random.default_rng(1)
    x = embeddings(n, clustered=True)
    xt = torch.from_numpy(x)
    figures, rows_out, agreed = {"n": n}, [], True
    scale = ONE_M / n  # for the extrapolation

    # The exact ways on query subsets against all n keys (own key excluded: k + 1, then dropped).
    torch_rows = np.sort(rng.choice(n, sizes["torch_rows"], replace=False))
    faiss_rows = torch_rows[: sizes["faiss_rows"]]
    log(f"similarity: {EXACT_TORCH}, {len(torch_rows):,} of {n:,} rows")
    t_torch, ranked = timed(lambda: similarity_lists(xt[torch.from_numpy(torch_rows)], xt, K + 1, exclude_self=False))
    torch_lists = _drop(ranked.numpy(), torch_rows)
    log(f"similarity: {EXACT_FAISS}, {len(faiss_rows):,} of {n:,} rows")
    t_faiss, found = timed(lambda: faiss_lists(x[faiss_rows], x, K + 1, exclude_self=False))
    faiss_exact = _drop(found, faiss_rows)
    scores, _ = brute_rows(x, faiss_rows)
    same = np.all(torch_lists[: len(faiss_rows)] == faiss_exact, axis=1)
    ties_only = all(
        np.allclose(scores[i, torch_lists[i]], scores[i, faiss_exact[i]], rtol=0, atol=1e-6)
        for i in np.flatnonzero(~same)
    )
    agreed &= ties_only
    for name, seconds, timed_rows in ((EXACT_TORCH, t_torch, torch_rows), (EXACT_FAISS, t_faiss, faiss_rows)):
        full = seconds * n / len(timed_rows)
        figures[name] = {"n_s": full, "1m_h": full * scale**2 / 3600}
        rows_out.append(
            [
                name,
                "clustered",
                f"{seconds:.1f} s on {len(timed_rows):,} rows",
                f"{full:.0f} s",
                "1 (exact)",
                f"{full * scale**2 / 3600:.2f} h",
            ]
        )

    for clustered in (True, False):
        kind = "clustered" if clustered else "random"
        data = x if clustered else embeddings(n, clustered=False)
        d = torch.from_numpy(data)
        log(f"similarity: {IVF}, {n:,} {kind} rows")
        seconds, result = timed(lambda d=d: ranked_lists(d, d, K, approximate_above=0))
        scores, exact = brute_rows(data, result.recall_rows)
        recomputed = recall(result.lists[result.recall_rows], exact)
        edge = -np.sort(-np.partition(scores, -(K + 1), axis=1)[:, -(K + 1) :], axis=1)[:, K - 1 :]
        boundary_ties = int(np.sum(edge[:, 0] - edge[:, 1] < 1e-6))
        agreed &= bool(abs(recomputed - result.recall) <= boundary_ties / (len(exact) * K) + 1e-12)
        train_s, index = timed(lambda data=data: trained_ivf(data))
        add_s, _ = timed(lambda data=data, index=index: index.add(data))
        rest_s = max(seconds - train_s - add_s, 0.0)
        one_m = (train_s * scale + (add_s + rest_s) * scale**1.5) / 3600
        figures[f"{IVF} {kind}"] = {"n_s": seconds, "recall": result.recall, "recomputed": recomputed, "1m_h": one_m}
        rows_out.append(
            [
                IVF,
                kind,
                f"{seconds:.1f} s (training {train_s:.1f} s, filling {add_s:.1f} s)",
                f"{seconds:.0f} s",
                f"{result.recall:.3f} (recomputed {recomputed:.3f})",
                f"{one_m:.2f} h",
            ]
        )

    best = figures[f"{IVF} clustered"]["1m_h"]
    old_1m = figures[EXACT_TORCH]["1m_h"]  # the old path at 1M in this run, under this run's load
    figures["speedup_1m"] = {kind: old_1m / figures[f"{IVF} {kind}"]["1m_h"] for kind in ("clustered", "random")}
    body = f"""
{n:,} x {DIM}-d unit embeddings, lists of {K}, own row excluded; the CPU's threads
(torch and faiss: this process's CPU share). The CPU's switch to the approximate index is at
{APPROXIMATE_ABOVE:,} keys (``APPROXIMATE_ABOVE``). Exact ways timed on a subset of rows and scaled
to {n:,} rows; the last column is **extrapolated, not measured** (see the module's docstring).

{
        table(
            ["way", "embeddings", "measured", f"{n:,} rows", "recall of the lists of 128", "1M x 1M (extrapolated)"],
            rows_out,
        )
    }

At 1M (extrapolated), against the old exact path extrapolated from this same run (the valid
comparison on a shared machine: both saw its load): the approximate index is
**{figures["speedup_1m"]["clustered"]:.1f}x** faster on clustered embeddings and
{figures["speedup_1m"]["random"]:.1f}x on random ones ({old_1m:.2f} h against {best:.2f} h and
{figures[f"{IVF} random"]["1m_h"]:.2f} h); today's figure from `bench_neighbours` (b), on a quieter
machine, was {TODAY_1M_H} h (target >= 10x). The two exact ways: {int(same.sum())} of {
        len(same)
    } rows identical, the others
differing only at near-ties, and reported recalls equal to their recomputation (up to near-ties at the k-th entry): {
        "yes" if agreed else "**NO**"
    }. GPU: not measured
(the trial's GPU runs the exact torch path).
"""
    return Result("Similarity lists: torch exact vs faiss exact vs faiss IVF (CPU)", body, agreed, figures)


def _drop(ranked: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each row's K entries other than its own index (rows hold K + 1)."""
    is_own = ranked == own[:, None]
    at = np.where(is_own.any(axis=1), is_own.argmax(axis=1), K)
    cols = np.arange(K)
    return np.take_along_axis(ranked, cols + (cols >= at[:, None]), axis=1)


if __name__ == "__main__":
    print(main().markdown())
