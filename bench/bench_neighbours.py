"""Neighbour lists and batches for Sample4Geo-style hard negatives (``geoloc.parts.neighbours``).

(a) GPS lists: ``nearest(coords, coords, 128, exclude_self=True)`` for 1M training coordinates
    (the published 100K MP-16 gallery repeated ten times, each copy moved by 1 km GPS noise, so
    no two coordinates are equal). Side by side on a subset of queries against the same 1M pool:
    ours (a k-d tree on unit vectors, with every thread and with one) and scikit-learn's
    ``BallTree`` with the haversine metric (one thread), each building its tree and querying
    129 neighbours. Agreement: the same lists; the 1M run's lists equal the subset's without
    the query itself.
(b) Similarity lists: exact chunked ``similarity_lists`` of random unit 512-d embeddings on the
    CPU, k=128. All pairs of 1M is ~1e15 FLOP, hours on 2 cores, so smaller sizes are measured
    and 1M is extrapolated (quadratic in n, and labelled so). At the smallest size it runs beside
    one whole n x n product and top-k (the same result, unbounded memory). Agreement: the lists
    of a random subset of rows equal a float64 brute-force ranking.
(c) Batches: one epoch of ``neighbour_batches`` (range 128, 32 neighbours, 32 drawn, batch 512)
    at 100K and 1M images, on the lists of (a). Agreement: every image in exactly one batch of
    every epoch. Also how near the hardest negative is: the median distance from an image to the
    nearest other image of its batch, against random batches of the same size.

Agreement allows near-ties: two lists may differ only where the true (float64) distances or
scores of the entries that differ are equal within rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from geoloc.data.synthetic import geoclip_gallery_coords
from geoloc.geo import gps_noise, haversine_km
from geoloc.parts.neighbours import nearest, neighbour_batches, similarity_lists

from .common import Result, interleave, log, median, paired_speedup, spread, table, timed, timed_cpu

K = 128
NEIGHBOURS, DRAW, BATCH = 32, 32, 512  # Sample4Geo's 32 nearest + 32 of ranks 33-128 (our batch size)
EMBED_DIM = 512
FULL = {"coords": 1_000_000, "subset": 5_000, "similarity": (20_000, 50_000), "batches": (100_000, 1_000_000)}
QUICK = {"coords": 20_000, "subset": 1_000, "similarity": (2_000, 5_000), "batches": (10_000, 20_000)}
TARGET_1M = 1_000_000
OURS, BALL_TREE = "ours: cKDTree on unit vectors, all threads", "scikit-learn BallTree(haversine), 1 thread"
CHUNKED = "chunked similarity_lists (4096 rows)"
PAIR_BATCHES = 200  # batches whose distances are summarised in (c)


def training_coords(n: int, seed: int = 0) -> np.ndarray:
    """``n`` coordinates: the published gallery, repeated as often as needed (a random subset of it
    below 100K), each point moved by 1 km of GPS noise."""
    gallery = geoclip_gallery_coords()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(np.arange(n) % len(gallery)) if n >= len(gallery) else rng.choice(len(gallery), n, False)
    gen = torch.Generator().manual_seed(seed)
    return gps_noise(torch.from_numpy(gallery[rows]), 1.0, gen).numpy()


def same_up_to_ties(a: np.ndarray, b: np.ndarray, value, tol: float) -> tuple[int, bool]:
    """Rows of ``a`` and ``b`` that are equal, and whether every other row differs only where
    ``value(row, entries)`` (the true distance or score) of the differing entries agree within ``tol``."""
    equal = np.all(a == b, axis=1)
    ties_only = all(np.allclose(value(i, a[i]), value(i, b[i]), rtol=0, atol=tol) for i in np.flatnonzero(~equal))
    return int(equal.sum()), ties_only


def gps_lists(n: int, subset: int, repeats: int) -> tuple[str, bool, dict, tuple[np.ndarray, np.ndarray]]:
    """(a): the 1M run, then the side-by-side comparison on ``subset`` queries; also returns (coords, lists)."""
    from sklearn.neighbors import BallTree

    coords = training_coords(n)
    log(f"neighbours: GPS lists of {n:,} coordinates, k={K}")
    wall, cpu, lists = timed_cpu(lambda: nearest(coords, coords, K, exclude_self=True))

    rows = np.sort(np.random.default_rng(1).choice(n, subset, replace=False))
    queries = coords[rows]

    def ball_tree():
        tree = BallTree(np.radians(coords), metric="haversine")
        return tree.query(np.radians(queries), k=K + 1)[1]

    ways = {
        OURS: lambda: nearest(queries, coords, K + 1),
        "ours, 1 thread": lambda: nearest(queries, coords, K + 1, workers=1),
        BALL_TREE: ball_tree,
    }
    log(f"neighbours: {subset:,} queries against {n:,}: {len(ways)} ways x {repeats} repeats")
    times, outputs = interleave(ways, repeats)
    ours, theirs = outputs[OURS], outputs[BALL_TREE]

    def km(i, entries):
        return haversine_km(queries[i], coords[entries])

    equal, ties_only = same_up_to_ties(ours, theirs, km, 1e-6)
    one_thread_same = np.array_equal(ours, outputs["ours, 1 thread"])
    # The 1M run's rows are the subset's lists without the query itself (first: no duplicates at 0 km).
    full_consistent = np.array_equal(ours[:, 0], rows) and np.array_equal(lists[rows], ours[:, 1:])
    agreed = bool(ties_only and one_thread_same and full_consistent)

    base = times[BALL_TREE]
    side = [
        [name, spread(t), f"{subset / median(t):,.0f}", f"{paired_speedup(base, t):.1f}x"] for name, t in times.items()
    ]
    body = f"""
### (a) GPS neighbour lists

`nearest(coords, coords, {K}, exclude_self=True)` for {n:,} coordinates (the published gallery
repeated, 1 km GPS noise): **{wall:.1f} s** wall, {cpu:.1f} s CPU (all threads), {n / wall:,.0f}
queries/s; lists {lists.nbytes / 2**20:,.0f} MiB (int32). Target for 1M on 2 cores: under 60 s.

{subset:,} random queries against the same {n:,} pool, {K + 1} neighbours, each way building its
tree and querying; {repeats} interleaved repeats after a warm-up round; speed: the median of the
per-round ratios to BallTree. With few queries, building the tree over the whole pool (one thread
in both libraries) is much of the time, so more threads gain little here:

{table(["way", "build + query", "queries/s", "speed vs BallTree"], side)}

Same lists as BallTree: {equal:,} of {subset:,} rows identical; the others differ only among
distances equal within 1e-6 km: {"yes" if ties_only else "**NO**"}. Ours with 1 thread = with all:
{"yes" if one_thread_same else "**NO**"}. The {n:,}-row run's lists for these rows = the subset's
without the query itself: {"yes" if full_consistent else "**NO**"}.
"""
    figures = {
        "n": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "subset": subset,
        "speed_vs_balltree": {name: paired_speedup(base, t) for name, t in times.items()},
        "rows_identical": equal,
        "agreed": agreed,
    }
    return body, agreed, figures, (coords, lists)


def similarity(sizes: tuple[int, ...], check_rows: int = 200, seed: int = 0) -> tuple[str, bool, dict]:
    """(b): chunked exact top-k at ``sizes``, the whole-matrix way beside it at the smallest, extrapolated to 1M."""
    gen = torch.Generator().manual_seed(seed)
    rows, agreed, figures = [], True, {}
    for n in sizes:
        embeddings = torch.nn.functional.normalize(torch.randn(n, EMBED_DIM, generator=gen), dim=1)
        ways = {CHUNKED: lambda e=embeddings: similarity_lists(e, e, K)}
        if n == sizes[0]:
            ways["whole matrix at once"] = lambda e=embeddings: _whole_matrix(e)
        log(f"neighbours: similarity lists of {n:,} x {EMBED_DIM}-d, k={K}: {len(ways)} way(s)")
        times, outputs = interleave(ways, repeats=1 if n > sizes[0] else 2, warmup=0)
        lists = outputs[CHUNKED].numpy()
        whole_same = "whole matrix at once" not in outputs or torch.equal(
            outputs["whole matrix at once"], outputs[CHUNKED]
        )
        check = np.sort(np.random.default_rng(seed).choice(n, min(check_rows, n), replace=False))
        scores = embeddings[check].double().numpy() @ embeddings.double().numpy().T
        scores[np.arange(len(check)), check] = -np.inf
        brute = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        equal, ties_only = same_up_to_ties(lists[check], brute, lambda i, e, s=scores: s[i, e], 1e-6)
        agreed &= bool(ties_only and whole_same)
        for name, t in times.items():
            seconds, flop = median(t), 2 * n * n * EMBED_DIM
            rows.append(
                [
                    f"{n:,}",
                    name,
                    spread(t),
                    f"{flop / seconds / 1e9:.0f}",
                    f"{n * n / seconds / 1e6:.0f}",
                    f"{seconds * (TARGET_1M / n) ** 2 / 3600:.1f} h (extrapolated)",
                    f"{equal} of {len(check)}" if name == CHUNKED else "",
                ]
            )
        figures[n] = {
            "seconds": median(times[CHUNKED]),
            "brute_rows_identical": f"{equal} of {len(check)}",
            "whole_matrix_same": whole_same,
        }
        figures[n]["extrapolated_1m_h"] = figures[n]["seconds"] * (TARGET_1M / n) ** 2 / 3600
    largest = sizes[-1]
    body = f"""
### (b) Similarity lists (Dynamic Similarity Sampling), CPU

Exact top-{K} by dot product of random unit {EMBED_DIM}-d embeddings against themselves (diagonal
excluded), fp32, {torch.get_num_threads()} torch threads. GFLOP/s counts the matrix product only
(2 n^2 d); top-k comes on top. The last column is **extrapolated, not measured**: the time at that
size x (1M / n)^2.

{
        table(
            [
                "n",
                "way",
                "time",
                "GFLOP/s",
                "Mpairs/s",
                "1M x 1M at this rate (extrapolated)",
                "rows identical to float64 brute force",
            ],
            rows,
        )
    }

From the largest measured size ({largest:,}), 1M x 1M would take about
**{figures[largest]["extrapolated_1m_h"]:.1f} h on this CPU (extrapolated)**: a GPU's job (the same
function runs on the embeddings' device). Lists equal to the float64 brute force up to near-ties
(1e-6) and the whole-matrix way identical to the chunked one: {"yes" if agreed else "**NO**"}.
"""
    return body, agreed, figures


def _whole_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """All n x n scores at once, then top-k: what the chunks avoid (n^2 x 4 bytes of memory)."""
    scores = embeddings @ embeddings.T
    scores.fill_diagonal_(-torch.inf)
    return torch.topk(scores, K, dim=1).indices


def batches(sizes: tuple[int, ...], gps: tuple[np.ndarray, np.ndarray], epochs: int = 3) -> tuple[str, bool, dict]:
    """(c): epoch times of ``neighbour_batches``; (a)'s (coords, lists) serve its size, other sizes get their own."""
    rows, agreed, figures = [], True, {}
    for n in sizes:
        if n == len(gps[0]):
            coords, lists = gps
        else:
            coords = training_coords(n, seed=2)
            lists = nearest(coords, coords, K, exclude_self=True)
        log(f"neighbours: {epochs} epochs of batches for {n:,} images")
        times, once = [], True
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(epoch)
            seconds, out = timed(lambda g=generator, lists=lists: neighbour_batches(lists, BATCH, NEIGHBOURS, DRAW, g))
            times.append(seconds)
            sizes_ok = all(len(b) == BATCH for b in out[:-1]) and 0 < len(out[-1]) <= BATCH
            once &= sizes_ok and np.array_equal(np.sort(np.concatenate(out)), np.arange(n))
        agreed &= once
        shuffled = np.array_split(np.random.default_rng(0).permutation(n), len(out))
        ours_km, random_km = _nearest_in_batch_km(coords, out), _nearest_in_batch_km(coords, shuffled)
        near = f"{ours_km:.3g} km vs {random_km:.3g} km"
        rows.append([f"{n:,}", spread(times), len(out), "yes" if once else "**NO**", near])
        figures[n] = {"epoch_s": median(times), "nearest_in_batch_km": ours_km, "random_nearest_in_batch_km": random_km}
    body = f"""
### (c) Batches: one epoch of `neighbour_batches`

Range {K}, {NEIGHBOURS} nearest + {DRAW} drawn from ranks {NEIGHBOURS + 1}-{K}, batch {BATCH}; {epochs} epochs
(generator seeds 0..{epochs - 1}), lists from `nearest` as in (a).

{
        table(
            [
                "images",
                "epoch time",
                "batches",
                "every image exactly once",
                f"median distance to the nearest other image of the batch (first {PAIR_BATCHES} batches): "
                "neighbour vs random batches",
            ],
            rows,
        )
    }
"""
    return body, agreed, figures


def _nearest_in_batch_km(coords: np.ndarray, groups: list[np.ndarray]) -> float:
    """Median over images of the first ``PAIR_BATCHES`` groups of the distance to the nearest other
    image of the same group: how close the hardest negative of a batch is."""
    nearest_km = []
    for g in groups[:PAIR_BATCHES]:
        km = haversine_km(coords[g][:, None], coords[g][None])
        np.fill_diagonal(km, np.inf)
        nearest_km.append(km.min(axis=1))
    return float(np.median(np.concatenate(nearest_km)))


def run(sizes: dict, repeats: int) -> Result:
    body_a, agreed_a, fig_a, gps = gps_lists(sizes["coords"], sizes["subset"], repeats)
    body_b, agreed_b, fig_b = similarity(sizes["similarity"])
    body_c, agreed_c, fig_c = batches(sizes["batches"], gps)
    figures = {"gps": fig_a, "similarity": fig_b, "batches": fig_c}
    agreed = agreed_a and agreed_b and agreed_c
    return Result("Neighbour lists and batches (Sample4Geo hard negatives)", body_a + body_b + body_c, agreed, figures)


def main(quick: bool = False) -> Result:
    return run(QUICK, repeats=2) if quick else run(FULL, repeats=3)


if __name__ == "__main__":
    print(main().markdown())
