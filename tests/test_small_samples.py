"""Intervals and tests at the sample sizes studies have (analysis/stats.py, compare.py, crossover.py):
the t interval's coverage by simulation, "too few pairs" for a rank test that cannot reach 0.05,
and crossovers stated only where their bootstrap interval is finite and a side differs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis import stats
from analysis.compare import caption, compare, render
from analysis.sections.geoclip.crossover import crossovers, is_stated

REPLICATIONS = 20_000  # binomial standard error of a 95 % coverage: 0.15 points, so +-2 points is ~13 SE


@pytest.mark.parametrize("n", [3, 5, 10])
def test_small_sample_interval_has_its_nominal_coverage(n):
    """Paired normal differences (true mean 0.3, sd 2): the interval `stats.interval` uses below
    SMALL_N covers the true mean in 95 % +- 2 points of the simulated studies."""
    assert n < stats.SMALL_N
    rng = np.random.default_rng(n)
    true_mean = 0.3
    differences = rng.normal(true_mean, 2.0, size=(REPLICATIONS, n))
    lo, hi = stats.t_intervals(differences)
    coverage = np.mean((lo <= true_mean) & (true_mean <= hi))
    assert abs(coverage - 0.95) <= 0.02, coverage
    # The interval of one simulated study through the comparison's own path is the same numbers.
    base = rng.normal(0.5, 0.1, n)
    s = stats.Sides(base + differences[0], base, True, n, n, n)
    low, high, method = stats.interval(s)
    assert method == "t" and (low, high) == pytest.approx((lo[0], hi[0]), rel=1e-9)


def test_large_samples_take_the_bca_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.normal(size=stats.SMALL_N)
    s = stats.Sides(base + rng.normal(1.0, 1.0, stats.SMALL_N), base, True, 30, 30, 30)
    low, high, method = stats.interval(s)
    assert method == "BCa bootstrap" and low < stats.mean_difference(s) < high


def paired_units(n: int) -> pd.DataFrame:
    """Baseline "0" and arm "a", n seeds, every arm value above the baseline by a varying amount."""
    rng = np.random.default_rng(n)
    base = rng.uniform(0.3, 0.4, n)
    arm = base + rng.uniform(0.01, 0.03, n)
    pairs = [f"s{i}" for i in range(n)]
    return pd.DataFrame({"arm": ["0"] * n + ["a"] * n, "pair": pairs * 2, "acc_1km": [*base, *arm]})


def test_rank_test_with_three_pairs_reads_too_few_pairs_and_with_eight_a_p_value():
    three = compare(paired_units(3), "0", ["acc_1km"])
    assert math.isnan(three.loc[0, "p_rank"]) and three.loc[0, "rank_note"] == "too few pairs"
    shown = render(three, fractions=["acc_1km"]).iloc[0]
    assert shown["p (rank)"] == shown["p (rank, Holm)"] == "too few pairs"
    assert shown["p (t)"] != "too few pairs"  # the t-test still reports its p
    assert "too few pairs: an exact rank test cannot give p < 0.05" in caption(three)

    eight = compare(paired_units(8), "0", ["acc_1km"])
    units = paired_units(8)
    expected = scipy_stats.wilcoxon(units["acc_1km"][8:].to_numpy() - units["acc_1km"][:8].to_numpy()).pvalue
    assert eight.loc[0, "p_rank"] == expected == pytest.approx(2 / 2**8)  # all eight positive
    assert eight.loc[0, "rank_note"] == "" and render(eight).iloc[0]["p (rank)"] == f"{expected:#.3g}"


def test_smallest_rank_p_by_hand():
    def sides(n_arm, n_base, paired):
        return stats.Sides(np.arange(n_arm) + 1.0, np.zeros(n_base), paired, n_arm, n_base, n_arm if paired else 0)

    assert stats.smallest_rank_p(sides(5, 5, True)) == 2 / 32 and not stats.rank_test_reachable(sides(5, 5, True))
    assert stats.smallest_rank_p(sides(6, 6, True)) == 2 / 64 and stats.rank_test_reachable(sides(6, 6, True))
    assert stats.smallest_rank_p(sides(3, 3, False)) == 2 / 20  # Mann-Whitney: C(6, 3) = 20 orderings
    assert stats.rank_test_reachable(sides(3, 6, False))  # 2 / 84


KM = [1.0, 10.0, 100.0, 1000.0]


def curve_units(arm_differences: list[list[float]]) -> pd.DataFrame:
    rows = []
    for i, diffs in enumerate(arm_differences):
        for km, d in zip(KM, diffs, strict=True):
            rows.append({"arm": "0", "pair": f"s{i}", "km": km, "acc": 0.5})
            rows.append({"arm": "a", "pair": f"s{i}", "km": km, "acc": 0.5 + d})
    return pd.DataFrame(rows)


def comparison_of(effect_below: str, effect_above: str) -> pd.DataFrame:
    """A comparison table in which acc_1km (below a 30 km crossover) and acc_1000km (above) have the given effects."""
    return pd.DataFrame(
        {
            "param": ["p", "p"],
            "arm": ["a", "a"],
            "metric": ["acc_1km", "acc_1000km"],
            "effect": [effect_below, effect_above],
            "significant": [effect_below != "", effect_above != ""],
            "ci_low": [-0.02 if effect_below == "worse" else 0.01, 0.01],
            "ci_high": [-0.01 if effect_below == "worse" else 0.02, 0.02],
        }
    )


THRESHOLDS = {"acc_1km": 1.0, "acc_1000km": 1000.0}


def test_a_crossover_whose_interval_is_infinite_is_not_stated():
    # Two seeds cross between 10 and 100 km; the third is worse everywhere, so the 1 resample in 27 that
    # draws it three times (3.7 % > 2.5 %) does not cross: the interval's upper end is infinite.
    table = crossovers(curve_units([[-0.02, -0.01, 0.01, 0.02]] * 2 + [[-0.02, -0.01, -0.01, -0.005]]), "0")
    row = table.iloc[0].copy()
    assert row["direction"] == "worse-to-better" and 10 < row["crossover_km"] < 100
    assert np.isfinite(row["ci_low_km"]) and np.isinf(row["ci_high_km"])
    row["param"] = "p"
    ok, why = is_stated(row, comparison_of("worse", "better"), THRESHOLDS)
    assert not ok and "not finite" in why


def test_a_crossover_is_stated_only_with_a_finite_interval_and_a_significant_side():
    seeds = [[-0.02 - e, -0.01, 0.01, 0.02 + e] for e in (0.0, 0.002, 0.004, 0.006, 0.008)]
    row = crossovers(curve_units(seeds), "0").iloc[0].copy()
    assert row["ci_low_km"] <= row["crossover_km"] <= row["ci_high_km"] < 100  # every resample crosses in 10..100
    row["param"] = "p"
    assert is_stated(row, comparison_of("worse", ""), THRESHOLDS) == (True, "")  # worse below it
    assert is_stated(row, comparison_of("", "better"), THRESHOLDS) == (True, "")  # better above it
    ok, why = is_stated(row, comparison_of("", ""), THRESHOLDS)  # no test finds a difference
    assert not ok and "no accuracy differs significantly" in why
    assert not is_stated(row, comparison_of("better", ""), THRESHOLDS)[0]  # the wrong way on its side
