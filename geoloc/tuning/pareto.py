"""Pareto helpers for a study with several objectives: non-dominated ranks, crowding, promotion, hypervolume.

A study that searches for the Pareto set itself (issue 15) needs to say which of a set of trials are
best when no single number orders them: MOASHA (``geoloc.tuning.moasha``) promotes the trials of a rung by
these helpers, and the analysis plots the hypervolume against the epochs spent. Every function takes
an ``(n, m)`` array of objective values, one row per trial, and ``maximise``, one flag per column.

moocore does the two hard parts, non-dominated sorting (``moocore.pareto_rank``) and the hypervolume
(``moocore.hypervolume``); crowding distance, which moocore lacks, is NSGA-II's, written here.

Conventions, where the mathematics leaves a choice:

- Dominance is Pareto's: at least as good in every objective and better in one. Duplicate rows
  dominate nothing and share a rank (moocore's behaviour).
- A row with a NaN (a trial whose evaluation failed) is incomplete: it ranks behind every complete
  row (on one last front of its own), has crowding distance 0, is never on the Pareto front and adds
  no hypervolume. moocore itself gives NaN rows arbitrary ranks, so they never reach it.
- Promotion keeps ``1 + floor((n - 1) / reduction_factor)`` rows, the share Ray's ASHA keeps: Ray
  continues a trial whose score is >= ``np.nanpercentile(scores, 100 * (1 - 1/eta))`` of its rung
  (``_Bracket.cutoff``), and with linear interpolation that is exactly the top ``1 + floor((n-1)/eta)``
  of ``n`` distinct scores, which is ``ceil(n / eta)`` for an integer ``eta``. (Ray can keep one fewer
  where float rounding of ``1 - 1/eta`` puts the interpolation a hair past a row, e.g. eta 3, n 10.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import moocore
import numpy as np
from numpy.typing import ArrayLike


def _checked(points: ArrayLike, maximise: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """``points`` as a float (n, m) array and ``maximise`` as m booleans; ValueError when they disagree."""
    flags = np.asarray(maximise, dtype=bool)
    if flags.ndim != 1 or flags.size == 0:
        raise ValueError(f"maximise must be one flag per objective, got {maximise!r}")
    values = np.asarray(points, dtype=float)
    if values.size == 0:  # [] or an empty array of any shape: no rows
        values = values.reshape(0, flags.size)
    if values.ndim != 2:
        raise ValueError(f"points must be an (n, m) array, one row per point; got shape {values.shape}")
    if values.shape[1] != flags.size:
        raise ValueError(f"points have {values.shape[1]} objectives but maximise has {flags.size} flags")
    return values, flags


def _complete(values: np.ndarray) -> np.ndarray:
    return ~np.isnan(values).any(axis=1)


def nondominated_ranks(points: ArrayLike, maximise: Sequence[bool]) -> np.ndarray:
    """The non-dominated rank of each row: 0 for the Pareto front, 1 for the front once it is removed, ...

    Duplicates share a rank; rows with a NaN come last, on a front of their own.
    """
    values, flags = _checked(points, maximise)
    complete = _complete(values)
    ranks = np.zeros(len(values), dtype=int)
    ranks[complete] = moocore.pareto_rank(values[complete], maximise=flags)
    ranks[~complete] = ranks[complete].max() + 1 if complete.any() else 0
    return ranks


def pareto_mask(points: ArrayLike, maximise: Sequence[bool]) -> np.ndarray:
    """True for the rows on the Pareto front (rank 0) among the complete rows."""
    values, flags = _checked(points, maximise)
    return (nondominated_ranks(values, flags) == 0) & _complete(values)


def crowding_distance(points: ArrayLike, maximise: Sequence[bool]) -> np.ndarray:
    """NSGA-II's crowding distance of each row within this set (Deb et al. 2002), written here as moocore lacks it.

    Per objective, the rows are sorted; the two extremes get infinity and every other row the gap
    between its neighbours divided by the objective's range; the distances are summed over the
    objectives. Choices: a set of 1 or 2 rows is all infinity; an objective whose values are all equal
    separates nothing and adds 0 (no extremes); a duplicate row adds no diversity, so only its first
    occurrence gets a distance, computed as if the others were absent, and the rest get 0; rows with
    a NaN get 0. Equal values within one objective are ordered by the rows' lexicographic order, so
    the answer is deterministic. The distance does not depend on the directions; ``maximise`` is only
    checked against the shape.
    """
    values, _ = _checked(points, maximise)
    distance = np.zeros(len(values))
    complete_rows = np.flatnonzero(_complete(values))
    _, first = np.unique(values[complete_rows], axis=0, return_index=True)
    rows = complete_rows[first]  # one row per distinct point
    if len(rows) <= 2:
        distance[rows] = np.inf
        return distance
    distinct = values[rows]
    total = np.zeros(len(rows))
    for column in distinct.T:
        order = np.argsort(column, kind="stable")
        span = column[order[-1]] - column[order[0]]
        if span == 0:
            continue
        total[order[[0, -1]]] = np.inf
        total[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / span
    distance[rows] = total
    return distance


def promotion_order(points: ArrayLike, maximise: Sequence[bool]) -> np.ndarray:
    """Row indices, best first: by non-dominated rank, then by crowding distance within the row's own
    front (larger first: the front's spread is kept), then by index (earlier first)."""
    values, flags = _checked(points, maximise)
    ranks = nondominated_ranks(values, flags)
    crowding = np.zeros(len(values))
    for rank in np.unique(ranks):
        front = ranks == rank
        crowding[front] = crowding_distance(values[front], flags)
    return np.lexsort((np.arange(len(values)), -crowding, ranks))  # the last key sorts first


def promoted(points: ArrayLike, maximise: Sequence[bool], reduction_factor: float) -> np.ndarray:
    """True for the rows ASHA's rule keeps: the first ``1 + floor((n - 1) / reduction_factor)`` of
    ``promotion_order`` (``ceil(n / reduction_factor)`` for an integer factor; see the module's note)."""
    if not reduction_factor > 1:
        raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
    values, flags = _checked(points, maximise)
    keep = np.zeros(len(values), dtype=bool)
    if len(values):
        keep[promotion_order(values, flags)[: 1 + math.floor((len(values) - 1) / reduction_factor)]] = True
    return keep


def hypervolume(points: ArrayLike, maximise: Sequence[bool], reference: ArrayLike) -> float:
    """The volume dominated by the rows and bounded by ``reference``, the worst corner that still counts.

    A row that is not strictly better than the reference in every objective adds nothing (moocore
    skips it), nor does a row with a NaN; no rows give 0.0.
    """
    values, flags = _checked(points, maximise)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (flags.size,) or np.isnan(ref).any():
        raise ValueError(f"reference must be {flags.size} numbers, one per objective; got {reference!r}")
    values = values[_complete(values)]
    if not len(values):
        return 0.0
    return float(moocore.hypervolume(values, ref=ref, maximise=flags))


def hypervolume_history(points: ArrayLike, maximise: Sequence[bool], reference: ArrayLike) -> np.ndarray:
    """The hypervolume of the first k rows for k = 1..n: with rows in the order they were spent (trials
    by end, or epochs), the study's progress against its cost. Non-decreasing; the last is the whole set's."""
    values, flags = _checked(points, maximise)
    return np.array([hypervolume(values[:k], flags, reference) for k in range(1, len(values) + 1)])
