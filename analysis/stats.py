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
        return 1.0, 1.0
    n = min(len(s.arm), len(s.base))
    with _quiet():
        if s.paired:
            return float(stats.ttest_rel(s.arm, s.base).pvalue), float(stats.wilcoxon(s.arm - s.base).pvalue)
        p_t = stats.ttest_ind(s.arm, s.base, equal_var=False).pvalue if n >= 2 else math.nan
        p_rank = stats.mannwhitneyu(s.arm, s.base).pvalue if n >= 1 else math.nan
        return float(p_t), float(p_rank)


def mean_difference(s: Sides) -> float:
    """Mean of arm - base: of the per-pair differences when paired, of the two means otherwise."""
    if s.paired:
        return float(np.mean(s.arm - s.base))
    return float(np.mean(s.arm) - np.mean(s.base)) if len(s.arm) and len(s.base) else math.nan


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def bootstrap_interval(s: Sides, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval (LEVEL) of the mean difference arm - base.

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
        method="percentile",
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
