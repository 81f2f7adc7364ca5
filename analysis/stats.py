"""Two-sample statistics of an arm against its baseline: the values compared, tests, intervals, Holm.

An arm and its baseline are compared on one metric (or at one distance of an error curve) through
`Sides`: the values of each. Pairing rule, used everywhere: the arm is compared *paired* with the
baseline when they share at least ``MIN_PAIRS`` pair keys with a value; only those matched pairs
are then used. Otherwise it is compared *unpaired*, over all units of both arms.

*No variance*: every paired difference is the same (paired), or every value of each arm is the
same (unpaired, two or more values on each side). No test can weigh such data: their intervals
are the single value, and the tables say "no variance" instead of p-values (``compare.py``).
scipy warns of "precision loss" on them, and whenever one sample of a Welch test is constant
(though the other's variance makes that test well-defined): those warnings are silenced where
the tests run (`_quiet`).

*Intervals at small n* (`interval`): below ``SMALL_N`` units (pairs, or the smaller arm unpaired)
the interval of the mean difference is Student's t (paired t, or Welch): exact for normal
differences at any n, and the interval of the very t-test that decides significance. A bootstrap
cannot do better there: with 3 seeds the paired differences have 10 distinct resamples, and a
percentile interval of a mean is too narrow by the factor sqrt((n-1)/n) and a normal rather than t
quantile: its coverage of normal paired differences, simulated (2,000 sets of 2,000 resamples
each), is 75 % at n = 3, 84 % at n = 5, 90 % at n = 10 and 93 % at n = 20 and 30. From ``SMALL_N``
on, that shortfall is within about 2 points of 95 % and the bootstrap's freedom from the normal
assumption is worth having: the interval is scipy's BCa bootstrap.
``tests/test_small_samples.py`` checks the t interval's coverage by simulation at n = 3, 5 and 10.

*Too few pairs for a rank test* (`rank_test_reachable`): an exact rank test has a smallest
possible p-value, 2 / 2^n for Wilcoxon signed-rank on n non-zero differences and
2 / C(n1 + n2, n1) for Mann-Whitney U; when it is not below ``ALPHA`` (Wilcoxon with fewer than 6
pairs; Mann-Whitney with 3 against 3) the test could not find anything whatever the data, so its
p-value is NaN (out of the Holm family) and the tables say "too few pairs" (`RANK_TOO_FEW`), not
p = 0.25 or 1.00.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # significance level (compare.py's rule; also what a rank test must be able to reach)
SMALL_N = 30  # below this many units, t intervals; from it on, BCa bootstrap (module docstring)
RANK_TOO_FEW = {True: "too few pairs", False: "too few units"}  # paired, unpaired
N_RESAMPLES = 10_000
SEED = 0  # fixed: the same units give the same bootstrap intervals every time
MIN_PAIRS = 2  # fewer shared seeds than this cannot carry a paired test


@dataclass
class Sides:
    """One comparison's values, of the arm and of the baseline.

    n_arm, n_baseline: units of each arm with a value; n_pairs: pair keys the two share (with a
    value on both sides). When paired, ``arm`` and ``base`` hold only those matched pairs, in the
    same order (``arm[i]`` and ``base[i]`` are one pair); otherwise all units of each arm.
    """

    arm: np.ndarray
    base: np.ndarray
    paired: bool
    n_arm: int
    n_baseline: int
    n_pairs: int


def sides(units: pd.DataFrame, arm, baseline, column) -> Sides:
    """The values of ``column`` of two arms of ``units`` (columns arm, pair, column), paired by the rule."""
    values = pd.to_numeric(units[column], errors="coerce").set_axis(units["pair"].to_numpy())
    x = values[(units["arm"] == arm).to_numpy()].dropna()
    y = values[(units["arm"] == baseline).to_numpy()].dropna()
    shared = x.index.intersection(y.index, sort=False)
    paired = len(shared) >= MIN_PAIRS
    used_x, used_y = (x[shared], y[shared]) if paired else (x, y)
    return Sides(used_x.to_numpy(float), used_y.to_numpy(float), paired, len(x), len(y), len(shared))


def no_variance(s: Sides) -> bool:
    """True when the data have no variance (module docstring)."""
    if s.paired:
        return bool(np.ptp(s.arm - s.base) == 0)
    return min(len(s.arm), len(s.base)) >= 2 and np.ptp(s.arm) == 0 and np.ptp(s.base) == 0


@contextmanager
def _quiet() -> Iterator[None]:
    """scipy's precision-loss warnings on constant samples (module docstring), once per arm and
    metric, would bury the report's own messages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _identical(s: Sides) -> bool:
    """True when the data cannot show any difference: every paired difference is 0, or (unpaired)
    every unit of both arms has the same value."""
    if s.paired:
        return bool(np.all(s.arm == s.base))
    both = np.concatenate([s.arm, s.base])
    return len(s.arm) > 0 and len(s.base) > 0 and bool(np.all(both == both[0]))


def p_values(s: Sides) -> tuple[float, float]:
    """(t-test p, rank-test p) with scipy's defaults, so each equals a direct scipy call:

    paired: ``stats.ttest_rel(arm, base)`` and ``stats.wilcoxon(arm - base)``;
    unpaired: ``stats.ttest_ind(arm, base, equal_var=False)`` and ``stats.mannwhitneyu(arm, base)``.

    NaN where a test cannot run (paired: fewer than MIN_PAIRS pairs, which the pairing rule
    excludes; Welch: fewer than 2 units in an arm; Mann-Whitney: an empty arm). When the data
    cannot show any difference (`_identical`, e.g. acc_1km = 0 for every seed of both arms) both
    p-values are 1: the comparison still counts in the Holm family (scipy would give NaN for the
    t-test, and 1 with a warning for Wilcoxon). With no variance and a difference (`no_variance`),
    scipy's t-test gives the limit, p = 0 (an infinite t).
    """
    if _identical(s):
        return 1.0, (1.0 if rank_test_reachable(s) else math.nan)
    n = min(len(s.arm), len(s.base))
    with _quiet():
        if s.paired:
            p_t = stats.ttest_rel(s.arm, s.base).pvalue
            p_rank = stats.wilcoxon(s.arm - s.base).pvalue if rank_test_reachable(s) else math.nan
            return float(p_t), float(p_rank)
        p_t = stats.ttest_ind(s.arm, s.base, equal_var=False).pvalue if n >= 2 else math.nan
        p_rank = stats.mannwhitneyu(s.arm, s.base).pvalue if n >= 1 and rank_test_reachable(s) else math.nan
        return float(p_t), float(p_rank)


def smallest_rank_p(s: Sides) -> float:
    """The smallest two-sided p-value the exact rank test can give on data of this size (module
    docstring): 2 / 2^n for Wilcoxon on the n non-zero paired differences (scipy drops zeros),
    2 / C(n1 + n2, n1) for Mann-Whitney U; capped at 1."""
    if s.paired:
        nonzero = int(np.count_nonzero(s.arm - s.base))
        return min(1.0, 2.0 / 2.0**nonzero)
    if not len(s.arm) or not len(s.base):
        return 1.0
    return min(1.0, 2.0 / math.comb(len(s.arm) + len(s.base), len(s.arm)))


def rank_test_reachable(s: Sides, alpha: float = ALPHA) -> bool:
    """True when the rank test could reach p < ``alpha`` at this number of pairs or units."""
    return smallest_rank_p(s) < alpha


def mean_difference(s: Sides) -> float:
    """Mean of arm - base: of the per-pair differences when paired, of the two means otherwise."""
    if s.paired:
        return float(np.mean(s.arm - s.base))
    return float(np.mean(s.arm) - np.mean(s.base)) if len(s.arm) and len(s.base) else math.nan


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def bootstrap_interval(
    s: Sides, n_resamples: int = N_RESAMPLES, seed: int = SEED, method: str = "percentile"
) -> tuple[float, float]:
    """Bootstrap interval (LEVEL; scipy's ``method``: percentile or BCa) of the mean difference arm - base.

    Paired: resamples the per-pair differences; unpaired: resamples each arm on its own. A fresh
    generator seeded with ``seed`` per call, so the same data always give the same interval.
    NaN when a side has fewer than 2 values (a resample of one value says nothing about spread);
    the single value itself when there is no variance (`no_variance`), where scipy's percentiles
    would only add rounding noise: so ``ci_low == ci_high`` marks exactly those comparisons.
    """
    data = (s.arm - s.base,) if s.paired else (s.arm, s.base)
    if min(len(d) for d in data) < 2:
        return math.nan, math.nan
    if no_variance(s):
        value = mean_difference(s)
        return value, value
    statistic = np.mean if s.paired else _mean_difference
    result = stats.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        confidence_level=LEVEL,
        method=method,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order.

    With the m non-NaN p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of
    p_(i) is max over j <= i of min(1, (m - j + 1) * p_(j)): monotone in p and capped at 1.
    NaN p-values are not part of the family (they do not count in m) and stay NaN.
    e.g. [0.01, 0.04, 0.03, 0.2] -> [0.04, 0.09, 0.09, 0.2].
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if not m:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def effect(diff: float, direction: str | None) -> str:
    """The sign of ``diff`` in words: better/worse for a metric with a direction ("max" or
    "min"), else higher/lower; "equal" for 0 and "" for NaN."""
    if pd.isna(diff):
        return ""
    if diff == 0:
        return "equal"
    if direction is None:
        return "higher" if diff > 0 else "lower"
    return "better" if (diff > 0) == (direction == "max") else "worse"


def t_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean: NaN for fewer than 2 values, the mean itself when they are equal."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    if sem == 0:
        return mean, mean
    lo, hi = stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def t_intervals(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Student-t intervals of the mean along the last axis, vectorised (one per row): the same
    numbers as `t_interval` row by row, for the coverage simulation and the curves."""
    values = np.asarray(values, dtype=float)
    n = values.shape[-1]
    mean = values.mean(axis=-1)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(axis=-1, ddof=1) / math.sqrt(n)
    return mean - half, mean + half


def interval(s: Sides, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float, str]:
    """The interval of the mean difference arm - base and how it was made (module docstring):
    (low, high, "t") below ``SMALL_N`` units (`difference_interval`), (low, high, "BCa bootstrap")
    from it on (`bootstrap_interval`, method BCa); the single value where there is no variance."""
    n = len(s.arm) if s.paired else min(len(s.arm), len(s.base))
    if n < SMALL_N:
        return (*difference_interval(s), "t")
    return (*bootstrap_interval(s, n_resamples, seed, method="BCa"), "BCa bootstrap")


def difference_interval(s: Sides) -> tuple[float, float]:
    """The t-interval matching `p_values`' t-test: of the per-pair differences, or Welch's."""
    if s.paired:
        return t_interval(s.arm - s.base)
    if min(len(s.arm), len(s.base)) < 2:
        return math.nan, math.nan
    if no_variance(s):
        value = mean_difference(s)
        return value, value
    with _quiet():  # one constant arm (acc = 1 at 20,000 km): well-defined, but scipy warns
        ci = stats.ttest_ind(s.arm, s.base, equal_var=False).confidence_interval(LEVEL)
    return float(ci.low), float(ci.high)
