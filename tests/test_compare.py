"""analysis.compare and analysis.stats: known answers for the arm-versus-baseline tests, Holm and
intervals; GeoCLIP's section (analysis/sections/geoclip/crossover.py): crossovers.

The planted study: baseline arm "0" and arms "5" and "25", five seeds each (pairs s0..s4). Arm
"5" beats the baseline at acc_25km by a planted per-seed difference that is positive for every
seed, so the exact Wilcoxon p would be 2 / 2^5 = 0.0625: it cannot reach 0.05 with five pairs,
so the table says "too few pairs" instead (analysis/stats.py); rows are shuffled so that pairs can only be
matched by key, never by position.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.compare import COLUMNS, compare, render
from analysis.sections.geoclip.crossover import (
    crossover_km,
    crossovers,
    curve_band,
    difference_curve,
    find_crossing,
    plot_error_curves,
)
from analysis.stats import holm

SEEDS = [f"s{i}" for i in range(5)]
BASE_25 = np.array([0.40, 0.42, 0.45, 0.41, 0.43])
GAIN_25 = np.array([0.010, 0.030, 0.020, 0.045, 0.005])  # arm "5" - baseline, every seed positive
BASE_1 = np.array([0.020, 0.025, 0.018, 0.022, 0.030])
LOSS_1 = np.array([-0.004, 0.001, -0.006, -0.002, -0.003])
KM = [1, 25, 200, 750, 2500]


def planted_units() -> pd.DataFrame:
    rows = []
    for i, seed in enumerate(SEEDS):
        rows.append({"arm": "0", "pair": seed, "acc_1km": BASE_1[i], "acc_25km": BASE_25[i], "median_km": 900.0 + i})
        rows.append(
            {
                "arm": "5",
                "pair": seed,
                "acc_1km": BASE_1[i] + LOSS_1[i],
                "acc_25km": BASE_25[i] + GAIN_25[i],
                "median_km": 880.0 + 2 * i,
            }
        )
        rows.append({"arm": "25", "pair": seed, "acc_1km": 0.0, "acc_25km": BASE_25[i] + 0.2, "median_km": 700.0})
    units = pd.DataFrame(rows)
    return units.sample(frac=1.0, random_state=3).reset_index(drop=True)


def row(table: pd.DataFrame, arm: str, metric: str) -> pd.Series:
    hit = table[(table["arm"] == arm) & (table["metric"] == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return compare(
        planted_units(),
        "0",
        ["acc_1km", "acc_25km", "median_km"],
        directions={"acc_1km": "max", "acc_25km": "max", "median_km": "min"},
    )


def test_table_shape_and_order(table):
    assert list(table.columns) == COLUMNS
    assert list(zip(table["arm"], table["metric"], strict=True)) == [
        (arm, m) for arm in ("5", "25") for m in ("acc_1km", "acc_25km", "median_km")
    ]  # arms in order of first appearance after the shuffle
    assert (table["baseline"] == "0").all()


def test_paired_p_values_equal_direct_scipy_calls(table):
    r = row(table, "5", "acc_25km")
    arm = BASE_25 + GAIN_25
    assert r["paired"] and r["n_pairs"] == 5 and r["n_arm"] == 5 and r["n_baseline"] == 5
    assert (r["t_test"], r["rank_test"]) == ("paired t", "Wilcoxon signed-rank")
    assert r["p_t"] == stats.ttest_rel(arm, BASE_25).pvalue
    assert stats.wilcoxon(arm - BASE_25).pvalue == pytest.approx(2 / 2**5)  # its smallest p: all five positive
    assert math.isnan(r["p_rank"]) and r["rank_note"] == "too few pairs"  # so it is not reported
    assert r["diff"] == pytest.approx(GAIN_25.mean(), abs=1e-15)
    assert r["mean_arm"] - r["mean_baseline"] == pytest.approx(r["diff"], abs=1e-15)
    # Mixed-sign differences: again exactly scipy's numbers.
    r1 = row(table, "5", "acc_1km")
    assert r1["p_t"] == stats.ttest_rel(BASE_1 + LOSS_1, BASE_1).pvalue
    assert math.isnan(r1["p_rank"]) and r1["rank_note"] == "too few pairs"
    assert r1["effect"] == "worse" and r["effect"] == "better"
    assert row(table, "5", "median_km")["effect"] == "better"  # lower median error


def test_holm_hand_computation():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.2]), [0.04, 0.09, 0.09, 0.2])
    out = holm([0.01, math.nan, 0.04])  # NaN is not in the family: m = 2
    np.testing.assert_allclose(out, [0.02, math.nan, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped
    assert holm([]).shape == (0,)


def test_holm_across_the_whole_table_and_significance(table):
    np.testing.assert_allclose(table["p_t_holm"], holm(table["p_t"].to_numpy()))
    np.testing.assert_allclose(table["p_rank_holm"], holm(table["p_rank"].to_numpy()))
    assert (table["p_t_holm"] >= table["p_t"]).all()
    assert table["significant"].tolist() == (table["p_t_holm"] < 0.05).tolist()
    # arm "25": +0.2 at acc_25km for every seed (constant difference): significant; acc_1km 0.
    assert row(table, "25", "acc_25km")["significant"]
    assert not row(table, "5", "acc_1km")["significant"]


def test_interval_of_five_pairs_is_the_paired_t_tests_own(table):
    again = compare(planted_units(), "0", ["acc_1km", "acc_25km", "median_km"])
    pd.testing.assert_series_equal(table["ci_low"], again["ci_low"])
    pd.testing.assert_series_equal(table["ci_high"], again["ci_high"])
    r = row(table, "5", "acc_25km")
    expected = stats.ttest_rel(BASE_25 + GAIN_25, BASE_25).confidence_interval(0.95)
    assert r["ci_method"] == "t"
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_degenerate_inputs_give_fixed_answers_without_warnings():
    units = pd.DataFrame(
        {
            "arm": ["0", "0", "0", "a", "a", "a", "b", "b", "b"],
            "pair": ["s0", "s1", "s2"] * 3,
            "acc_1km": [0.0] * 6 + [0.01, 0.02, 0.05],  # a = baseline exactly
            # a = baseline + 0.125 for every seed, exactly (binary fractions): constant differences
            "acc_25km": [0.25, 0.5, 0.75, 0.375, 0.625, 0.875, 0, 0, 0],
        }
    )
    units.loc[(units["arm"] == "b"), "acc_25km"] = [math.nan, math.nan, 0.5]  # one value: no interval
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = compare(units, "0", ["acc_1km", "acc_25km"])
    same = row(table, "a", "acc_1km")
    assert (same["diff"], same["ci_low"], same["ci_high"], same["p_t"]) == (0, 0, 0, 1)
    assert math.isnan(same["p_rank"])  # three pairs: too few for Wilcoxon
    constant = row(table, "a", "acc_25km")
    assert constant["ci_low"] == constant["ci_high"] == 0.125
    lone = row(table, "b", "acc_25km")
    assert not lone["paired"] and lone["n_arm"] == 1 and lone["n_pairs"] == 1
    assert math.isnan(lone["ci_low"]) and math.isnan(lone["p_t"])  # Welch needs 2 units per arm
    assert math.isnan(lone["p_rank"]) and lone["rank_note"] == "too few units"  # 1 vs 3: p >= 2 / 4


def test_unpaired_when_no_pair_keys_are_shared():
    base = [0.30, 0.34, 0.31, 0.36]
    arm = [0.40, 0.38, 0.45]
    units = pd.DataFrame({"arm": ["0"] * 4 + ["x"] * 3, "pair": ["a", "b", "c", "d", "e", "f", "g"], "acc": base + arm})
    r = row(compare(units, "0", ["acc"]), "x", "acc")
    assert not r["paired"] and r["n_pairs"] == 0 and (r["n_arm"], r["n_baseline"]) == (3, 4)
    assert (r["t_test"], r["rank_test"]) == ("Welch t", "Mann-Whitney U")
    assert r["p_t"] == stats.ttest_ind(arm, base, equal_var=False).pvalue
    assert stats.mannwhitneyu(arm, base).pvalue == pytest.approx(2 / 35)  # its smallest p: C(7, 3) = 35
    assert math.isnan(r["p_rank"]) and r["rank_note"] == "too few units"
    assert r["diff"] == pytest.approx(np.mean(arm) - np.mean(base))
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    shown = render(pd.DataFrame([r]), fractions=["acc"]).iloc[0]
    assert shown["note"] == "unpaired: no shared seeds (Welch, n=3 vs 4)"


def test_bad_input_is_refused():
    units = planted_units()
    with pytest.raises(ValueError, match="baseline"):
        compare(units, "99", ["acc_1km"])
    with pytest.raises(ValueError, match="missing"):
        compare(units, "0", ["acc_9km"])
    with pytest.raises(ValueError, match="ambiguous"):
        compare(pd.concat([units, units.iloc[:1]]), "0", ["acc_1km"])


def test_render_strings(table):
    shown = render(table, fractions=["acc_1km", "acc_25km"])
    r = shown[(shown["arm"] == "5") & (shown["metric"] == "acc_25km")].iloc[0]
    assert r["diff"] == "+2.20 pp"
    assert r["p (rank)"] == r["p (rank, Holm)"] == "too few pairs"
    assert r["note"] == "paired (n=5)"
    assert r["95% CI"].startswith("[+") and r["95% CI"].endswith("]")
    assert r["sig"] == ("*" if row(table, "5", "acc_25km")["significant"] else "")
    big = shown[(shown["arm"] == "25") & (shown["metric"] == "acc_25km")].iloc[0]
    assert big["sig"] == "*" and big["diff"] == "+20.00 pp"
    median = shown[(shown["arm"] == "25") & (shown["metric"] == "median_km")].iloc[0]
    assert median["diff"].startswith("-") and "pp" not in median["diff"]


# --- crossover -------------------------------------------------------------------------------


def test_crossover_on_a_planted_curve():
    diff = 0.01 * np.log10(np.array(KM) / 7)  # linear in log km: the interpolation is exact
    km, note = crossover_km(KM, diff)
    assert km == pytest.approx(7.0, rel=1e-9)
    assert note == "worse below, better above 7 km"
    crossing = find_crossing(KM, -diff)
    assert crossing.km == pytest.approx(7.0, rel=1e-9)
    assert crossing.direction == "better-to-worse" and crossing.note.startswith("reverse")


def test_no_crossover():
    assert crossover_km(KM, [0.01, 0.02, 0.0, 0.03, 0.01]) == (None, "better everywhere")
    assert crossover_km(KM, [-0.01] * 5) == (None, "worse everywhere")
    assert crossover_km(KM, [0.0005, -0.0005, 0.0, math.nan, 0.0]) == (None, "no difference")


def test_ties_are_skipped_and_multiple_crossings_counted():
    # The tie at 25 km is skipped: the crossing lies between 1 and 200 km, where d = -0.01 and
    # +0.01 meet halfway in log km, at sqrt(1 * 200) km.
    km, _ = crossover_km(KM, [-0.01, 0.0002, 0.01, 0.02, 0.03])
    assert km == pytest.approx(math.sqrt(200))
    crossing = find_crossing(KM, [-0.01, 0.01, -0.01, 0.01, 0.01])
    assert crossing.crossings == 3 and crossing.direction == "worse-to-better"
    assert crossing.km == pytest.approx(5.0) and crossing.note.endswith("(first of 3 crossings)")


def planted_curves() -> pd.DataFrame:
    """Baseline "0", arm "5" = baseline + 0.01 log10(km / 7) for every seed, arm "1" = baseline + 0.02."""
    rows = []
    for i, seed in enumerate(SEEDS[:3]):
        for km in KM:
            base = 0.05 + 0.15 * math.log10(km) + 0.01 * i
            rows.append({"arm": "0", "pair": seed, "km": km, "acc": base})
            rows.append({"arm": "5", "pair": seed, "km": km, "acc": base + 0.01 * math.log10(km / 7)})
            rows.append({"arm": "1", "pair": seed, "km": km, "acc": base + 0.02})
    return pd.DataFrame(rows)


def test_crossovers_per_arm():
    out = crossovers(planted_curves(), "0")
    assert list(out["arm"]) == ["5", "1"]
    five = out.iloc[0]
    assert five["crossover_km"] == pytest.approx(7.0, rel=1e-6)
    assert (five["direction"], five["crossings"], five["paired"]) == ("worse-to-better", 1, True)
    one = out.iloc[1]
    assert math.isnan(one["crossover_km"]) and one["note"] == "better everywhere"
    assert (one["direction"], one["crossings"]) == ("", 0)


def test_curve_band_and_difference_curve():
    curves = planted_curves()
    band = curve_band(curves, "0")
    first = curves[(curves["arm"] == "0") & (curves["km"] == 1)]["acc"].to_numpy()
    lo, hi = stats.t.interval(0.95, 2, loc=first.mean(), scale=stats.sem(first))
    assert band.iloc[0][["n", "mean"]].tolist() == pytest.approx([3, first.mean()])
    assert (band.iloc[0]["lo"], band.iloc[0]["hi"]) == pytest.approx((lo, hi))
    diff = difference_curve(curves, "1", "0")
    assert diff["diff"].to_numpy() == pytest.approx([0.02] * 5)
    assert diff["lo"].to_numpy() == pytest.approx(diff["hi"].to_numpy())  # identical differences


def test_plot_writes_a_png(tmp_path):
    path = plot_error_curves(planted_curves(), "0", "train.noise.batch_sigma").save(tmp_path)
    assert path == tmp_path / "error_curve_train_noise_batch_sigma.png"
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
