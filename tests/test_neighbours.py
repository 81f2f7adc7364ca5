"""geoloc.parts.neighbours against brute force (all-pairs haversine, all-pairs dot products) and its batch
specification."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from geoloc.geo import displace, haversine_km, unit_vectors
from geoloc.parts import neighbours
from geoloc.parts.neighbours import nearest, neighbour_batches, similarity_lists


def sphere_points(n: int, seed: int) -> np.ndarray:
    """``n`` (lat, lon) points uniform on the sphere: distinct distances, so no ties."""
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return np.stack([lat, rng.uniform(-180, 180, n)], axis=1)


def brute_nearest(queries, pool, k, beyond_km=None, exclude_self=False) -> np.ndarray:
    km = haversine_km(queries[:, None], pool[None])
    if exclude_self:
        np.fill_diagonal(km, np.inf)
    if beyond_km is not None:
        km[km <= beyond_km] = np.inf
    return np.argsort(km, axis=1, kind="stable")[:, :k]


def clustered(centres: int, per: int, spread_km: float, seed: int) -> np.ndarray:
    """``centres`` x ``per`` points, each cluster within a few ``spread_km`` of a random centre."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.from_numpy(np.repeat(sphere_points(centres, seed), per, axis=0))
    north, east = torch.randn((2, len(centre)), generator=gen, dtype=torch.float64) * spread_km
    return displace(centre, north, east).numpy()


QUERIES, POOL = sphere_points(200, 1), sphere_points(300, 2)


def test_nearest_equals_brute_force():
    assert np.array_equal(nearest(QUERIES, POOL, 10), brute_nearest(QUERIES, POOL, 10))
    got = nearest(POOL, POOL, 10, exclude_self=True)
    assert got.dtype == np.int32 and got.shape == (300, 10)
    assert np.array_equal(got, brute_nearest(POOL, POOL, 10, exclude_self=True))


@pytest.mark.parametrize("exclude_self", [False, True])
def test_nearest_beyond_a_radius(exclude_self):
    queries = POOL if exclude_self else QUERIES
    got = nearest(queries, POOL, 8, beyond_km=3000, exclude_self=exclude_self)
    assert np.all(haversine_km(queries[:, None], POOL[got]) > 3000)
    assert np.array_equal(got, brute_nearest(queries, POOL, 8, beyond_km=3000))


def test_nearest_in_small_chunks_and_groups(monkeypatch):
    """A budget of 40 entries: many row chunks and, beyond the radius, one group per few rows."""
    monkeypatch.setattr(neighbours, "QUERY_BUDGET", 40)
    assert np.array_equal(nearest(POOL, POOL, 5, exclude_self=True), brute_nearest(POOL, POOL, 5, exclude_self=True))
    got = nearest(QUERIES, POOL, 5, beyond_km=1500)
    assert np.array_equal(got, brute_nearest(QUERIES, POOL, 5, beyond_km=1500))


def test_rows_that_came_up_short_ask_again_deeper():
    """A depth far below the count within the radius (as when a count rounds differently): same answer."""
    tree, out = cKDTree(unit_vectors(POOL)), np.full((len(QUERIES), 5), -1, np.int32)
    neighbours._fill(tree, unit_vectors(QUERIES), np.arange(len(QUERIES)), 5, 6, neighbours._chord(4000), False, 1, out)
    assert np.array_equal(out, brute_nearest(QUERIES, POOL, 5, beyond_km=4000))


def test_too_few_beyond_the_radius_names_the_row():
    near_origin = np.stack([np.zeros(20), np.linspace(0, 0.5, 20)], axis=1)  # within 56 km of (0, 0)
    pool = np.concatenate([near_origin, [[40.0, 0.0], [-40.0, 0.0], [0.0, 40.0]]])
    queries = np.array([[0.0, 90.0], [0.0, 0.2], [0.0, 0.1]])  # row 0 sees all 23 beyond 500 km, rows 1, 2 only 3
    assert nearest(queries[:1], pool, 5, beyond_km=500).shape == (1, 5)
    with pytest.raises(ValueError, match=r"query row 1 has 3 pool points beyond 500 km, needs k=5"):
        nearest(queries, pool, 5, beyond_km=500)


def test_duplicates_are_neighbours_but_never_oneself():
    coords = sphere_points(50, 4)
    coords[[10, 20]] = coords[0]
    got = nearest(coords, coords, 3, exclude_self=True)
    assert not np.any(got == np.arange(50)[:, None])
    for i, others in ((0, {10, 20}), (10, {0, 20}), (20, {0, 10})):
        assert set(got[i, :2]) == others  # at 0 km, in either order
    # beyond_km=0 drops the whole place: itself and its duplicates
    place = [0, 10, 20]
    beyond = nearest(coords, coords, 3, beyond_km=0)[place]
    assert not set(beyond.ravel()) & set(place)
    assert np.array_equal(beyond, brute_nearest(coords[place], coords, 3, beyond_km=0))


def test_nearest_refuses_what_it_cannot_list():
    with pytest.raises(ValueError, match="exclude_self needs queries to be the pool"):
        nearest(QUERIES, POOL[:200], 3, exclude_self=True)
    with pytest.raises(ValueError, match="k=300 but the pool has only 299"):
        nearest(POOL, POOL, 300, exclude_self=True)
    with pytest.raises(ValueError, match="nearest: queries: row 1: invalid coordinate"):
        nearest(np.array([[0.0, 0.0], [91.0, 0.0]]), POOL, 3)


def test_similarity_lists_equal_brute_force_top_k():
    gen = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(300, 16, generator=gen), torch.randn(250, 16, generator=gen)

    def brute(q, k, n, exclude_self):
        scores = q.double() @ k.double().T
        if exclude_self:
            scores.fill_diagonal_(-torch.inf)
        return torch.argsort(scores, dim=1, descending=True, stable=True)[:, :n]

    got = similarity_lists(queries, queries, 7, chunk=64)  # 300 = 4 x 64 + 44
    assert got.dtype == torch.int64 and got.device.type == "cpu" and got.shape == (300, 7)
    assert torch.equal(got, brute(queries, queries, 7, True))
    assert not torch.any(got == torch.arange(300)[:, None])
    assert torch.equal(
        similarity_lists(queries, keys, 9, exclude_self=False, chunk=128), brute(queries, keys, 9, False)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a trainer's autocast does not reach it
        assert torch.equal(similarity_lists(queries, queries, 7, chunk=64), got)


def spec_walk(lists: np.ndarray, batch_size: int, neighbours_: int, order: np.ndarray) -> list[set]:
    """The batches of ``neighbour_batches`` with draw=0, as its docstring specifies them, one image at a time."""
    used, batches, current = set(), [], []
    for anchor in order:
        if anchor in used:
            continue
        for image in [anchor, *(j for j in lists[anchor, :neighbours_] if j not in used)]:
            if len(current) == batch_size:
                break
            used.add(image)
            current.append(image)
        if len(current) == batch_size:
            batches.append(set(current))
            current = []
    return batches + [set(current)] * bool(current)


def test_every_image_once_in_batches_of_the_size():
    lists = nearest(POOL, POOL, 32, exclude_self=True)
    batches = neighbour_batches(lists, 64, 8, 8, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [64] * 4 + [300 - 4 * 64]
    assert all(b.dtype == np.int64 and np.all(np.diff(b) > 0) for b in batches)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(300))


def test_same_seed_same_batches_other_seed_other_batches():
    lists = nearest(POOL, POOL, 32, exclude_self=True)

    def epoch(seed):
        return neighbour_batches(lists, 50, 8, 16, torch.Generator().manual_seed(seed))

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_batches_hold_nearby_images():
    """Batches of one group's size (1 + 8 + 8), so that a full group is a batch: with larger batches,
    groups of different places share one and their cross pairs would set the median."""
    coords = clustered(40, 50, 30, seed=5)  # 2000 images at 40 places
    lists = nearest(coords, coords, 32, exclude_self=True)
    batches = neighbour_batches(lists, 17, 8, 8, torch.Generator().manual_seed(0))
    shuffled = torch.randperm(len(coords), generator=torch.Generator().manual_seed(0)).numpy()

    def median_km(groups):
        pairs = [haversine_km(coords[g][:, None], coords[g][None])[np.triu_indices(len(g), 1)] for g in groups]
        return np.median(np.concatenate(pairs))

    assert median_km(batches) < median_km(np.array_split(shuffled, len(batches))) / 5


def test_without_draws_each_group_is_its_anchors_nearest_unused():
    lists = nearest(POOL, POOL, 16, exclude_self=True)
    gen = torch.Generator().manual_seed(7)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(7)).numpy()
    batches = neighbour_batches(lists, 9, 4, 0, gen)
    assert [set(b.tolist()) for b in batches] == spec_walk(lists, 9, 4, order)


def test_a_first_group_is_its_nearest_and_random_draws_from_the_rest():
    """The epoch's first group fills the first batch (1 + 4 + 4): the anchor, its 4 nearest, and 4
    drawn from list ranks 5-32, which vary with the seed."""
    lists = nearest(POOL, POOL, 32, exclude_self=True)
    drawn_ranks = set()
    for seed in range(20):
        anchor = int(torch.randperm(300, generator=torch.Generator().manual_seed(seed))[0])
        first = set(neighbour_batches(lists, 9, 4, 4, torch.Generator().manual_seed(seed))[0].tolist())
        assert {anchor, *lists[anchor, :4]} <= first
        ranks = [int(np.flatnonzero(lists[anchor] == j)[0]) for j in first - {anchor, *lists[anchor, :4]}]
        assert len(ranks) == 4 and min(ranks) >= 4
        drawn_ranks |= set(ranks)
    assert len(drawn_ranks) > 16  # of the 28 ranks; always the same 4 would be no draw


def test_clusters_of_a_group_size_become_the_batches():
    """Four places of four images each, lists nearest first: whatever the order, each batch is one place."""
    coords = clustered(4, 4, 1, seed=6)
    lists = nearest(coords, coords, 8, exclude_self=True)
    for seed in range(3):
        batches = neighbour_batches(lists, 4, 3, 0, torch.Generator().manual_seed(seed))
        assert sorted(b.tolist() for b in batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]


def test_bad_batch_arguments_are_refused():
    lists = nearest(POOL, POOL, 16, exclude_self=True)
    gen = torch.Generator()
    with pytest.raises(ValueError, match="neighbours \\+ draw <= range"):
        neighbour_batches(lists, 64, 10, 7, gen)
    with pytest.raises(ValueError, match="exceeds a batch of 16"):
        neighbour_batches(lists, 16, 8, 8, gen)
    repeated = lists.copy()
    repeated[:, 1] = repeated[:, 0]
    with pytest.raises(ValueError, match="repeats an entry"):
        neighbour_batches(repeated, 17, 8, 8, gen)
