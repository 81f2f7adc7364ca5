"""Arms against a baseline: paired differences with intervals and Holm-corrected tests, and crossovers.

A study varies one hyperparameter (e.g. ``train.noise.batch_sigma`` in 0, 1, 5, 25 km); each value
is an *arm* and is trained with several seeds. A claim such as "noise raises 25-2500 km accuracy
and lowers 1 km accuracy" is a set of differences arm - baseline, each with an interval and a
test, corrected for the many comparisons made at once. It is also a statement about distance: the
*crossover* is the distance below which the arm is worse than the baseline and above which it is
better.

Inputs, built by the caller:

- ``units``: one row per unit (one trial's seed, at one fixed epoch) with columns ``arm`` (the
  parameter's value, a label), ``pair`` (a pairing key: units of different arms with the same key
  share the seed and every other setting), and one numeric column per metric.
- ``curves``: the same units as accuracy-against-distance curves, long: columns ``arm``, ``pair``,
  ``km``, ``acc`` (a fraction), one row per unit and distance.

Pairing rule, used everywhere: an arm is compared *paired* with the baseline on a metric (or at a
distance) when they share at least ``MIN_PAIRS`` pair keys with a value there; only those matched
pairs are then used. Otherwise it is compared *unpaired*, over all units of both arms.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from scipy import stats

from .plots import _figure, _save
from .tables import km_text

ALPHA = 0.05  # significance level of the Holm-corrected t-test (the one significance rule)
LEVEL = 0.95  # confidence level of every interval in this module
N_RESAMPLES = 10_000
SEED = 0  # fixed: the same units give the same bootstrap intervals every time
MIN_PAIRS = 2  # fewer shared seeds than this cannot carry a paired test
# An accuracy difference of at most 0.1 percentage point counts as a tie when locating a
# crossover: the mean of a few seeds is not resolved more finely than that, and a crossing
# located on such a wiggle would be noise.
TIE_TOL = 1e-3

PAIRED_TESTS = ("paired t", "Wilcoxon signed-rank")
UNPAIRED_TESTS = ("Welch t", "Mann-Whitney U")

COLUMNS = [
    "arm",
    "baseline",
    "metric",
    "paired",
    "n_arm",
    "n_baseline",
    "n_pairs",
    "mean_arm",
    "mean_baseline",
    "diff",
    "ci_low",
    "ci_high",
    "t_test",
    "p_t",
    "rank_test",
    "p_rank",
    "p_t_holm",
    "p_rank_holm",
    "significant",
    "effect",
]


# --- input -----------------------------------------------------------------------------------


def _arms(frame: pd.DataFrame) -> list:
    """The arm labels in display order: a categorical's category order, else first appearance."""
    arm = frame["arm"]
    present = set(arm.dropna())
    if isinstance(arm.dtype, pd.CategoricalDtype):
        return [a for a in arm.cat.categories if a in present]
    return list(dict.fromkeys(arm.dropna()))


def _check(frame: pd.DataFrame, columns: list, baseline, key: list[str]) -> None:
    """Fail early, by name, on input that would otherwise give silently wrong pairs."""
    missing = [c for c in ["arm", "pair", *columns] if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(map(str, missing))}")
    if baseline not in set(frame["arm"]):
        raise ValueError(f"baseline arm {baseline!r} has no units; arms: {_arms(frame)}")
    repeated = frame[frame.duplicated(key, keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        where = ", ".join(f"{k}={first[k]!r}" for k in key)
        raise ValueError(f"{len(repeated)} rows share their {'/'.join(key)} (e.g. {where}): pairs would be ambiguous")


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


def _sides(units: pd.DataFrame, arm, baseline, column) -> Sides:
    values = pd.to_numeric(units[column], errors="coerce").set_axis(units["pair"].to_numpy())
    x = values[(units["arm"] == arm).to_numpy()].dropna()
    y = values[(units["arm"] == baseline).to_numpy()].dropna()
    shared = x.index.intersection(y.index, sort=False)
    paired = len(shared) >= MIN_PAIRS
    used_x, used_y = (x[shared], y[shared]) if paired else (x, y)
    return Sides(used_x.to_numpy(float), used_y.to_numpy(float), paired, len(x), len(y), len(shared))


def _no_variation(s: Sides) -> bool:
    """True when the data cannot show any difference: every paired difference is 0, or (unpaired)
    every unit of both arms has the same value."""
    if s.paired:
        return bool(np.all(s.arm == s.base))
    both = np.concatenate([s.arm, s.base])
    return len(s.arm) > 0 and len(s.base) > 0 and bool(np.all(both == both[0]))


# --- tests and intervals ---------------------------------------------------------------------


def p_values(s: Sides) -> tuple[float, float]:
    """(t-test p, rank-test p) with scipy's defaults, so each equals a direct scipy call:

    paired: ``stats.ttest_rel(arm, base)`` and ``stats.wilcoxon(arm - base)``;
    unpaired: ``stats.ttest_ind(arm, base, equal_var=False)`` and ``stats.mannwhitneyu(arm, base)``.

    NaN where a test cannot run (paired: fewer than MIN_PAIRS pairs, which the pairing rule
    excludes; Welch: fewer than 2 units in an arm; Mann-Whitney: an empty arm). When there is no
    variation at all (`_no_variation`, e.g. acc_1km = 0 for every seed of both arms) both
    p-values are 1: the data show no difference, and the comparison still counts in the Holm
    family (scipy would give NaN for the t-test, and 1 with a warning for Wilcoxon).
    """
    if _no_variation(s):
        return 1.0, 1.0
    n = min(len(s.arm), len(s.base))
    with warnings.catch_warnings():
        # Nearly constant data (the exactly constant case is handled above) make scipy warn of
        # precision loss once per arm and metric, which would bury the report's own messages.
        warnings.simplefilter("ignore", RuntimeWarning)
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
    the single value itself when the difference cannot vary (constant differences, or both arms
    constant), where scipy's percentiles would only add rounding noise.
    """
    data = (s.arm - s.base,) if s.paired else (s.arm, s.base)
    if min(len(d) for d in data) < 2:
        return math.nan, math.nan
    if all(np.ptp(d) == 0 for d in data):
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


# --- the table -------------------------------------------------------------------------------


def _row(s: Sides, n_resamples: int, seed: int) -> dict:
    mean_arm = float(np.mean(s.arm)) if len(s.arm) else math.nan
    mean_base = float(np.mean(s.base)) if len(s.base) else math.nan
    lo, hi = bootstrap_interval(s, n_resamples, seed)
    p_t, p_rank = p_values(s)
    t_test, rank_test = PAIRED_TESTS if s.paired else UNPAIRED_TESTS
    return {
        "paired": s.paired,
        "n_arm": s.n_arm,
        "n_baseline": s.n_baseline,
        "n_pairs": s.n_pairs,
        "mean_arm": mean_arm,
        "mean_baseline": mean_base,
        "diff": mean_difference(s),
        "ci_low": lo,
        "ci_high": hi,
        "t_test": t_test,
        "p_t": p_t,
        "rank_test": rank_test,
        "p_rank": p_rank,
    }


def compare(
    units: pd.DataFrame,
    baseline,
    metrics: list[str],
    directions: dict[str, str] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> pd.DataFrame:
    """Every arm other than ``baseline`` against it, on every metric: one row per (arm, metric).

    units: one row per unit with columns arm, pair and each of ``metrics`` (see the module
    docstring); NaN metric values are left out of that metric's comparison only.
    directions: metric -> "max"/"min", used only for the ``effect`` words.

    Columns (COLUMNS): arm, baseline, metric; paired (the pairing rule above); n_arm, n_baseline
    (units with a value), n_pairs (pair keys shared; the pairs used when paired); mean_arm,
    mean_baseline (over the units used: the matched pairs when paired, all units otherwise);
    diff (mean of arm - baseline; paired: the mean per-pair difference, equal to mean_arm -
    mean_baseline up to rounding); ci_low, ci_high (`bootstrap_interval`); t_test, p_t,
    rank_test, p_rank (`p_values`); p_t_holm, p_rank_holm (`holm` over all rows of this table,
    separately for each test); significant; effect (`effect`).

    Significance rule: ``p_t_holm < ALPHA``. The bootstrap interval is descriptive and not part
    of the rule: it is not corrected for the table's many comparisons, and with 3 seeds a
    percentile interval is too narrow to be a test of its own.

    Rows follow the arm order (`_arms`), then ``metrics``' order.
    """
    _check(units, list(metrics), baseline, ["arm", "pair"])
    directions = directions or {}
    rows = []
    for arm in _arms(units):
        if arm == baseline:
            continue
        for metric in metrics:
            row = {"arm": arm, "baseline": baseline, "metric": metric}
            row.update(_row(_sides(units, arm, baseline, metric), n_resamples, seed))
            row["effect"] = effect(row["diff"], directions.get(metric))
            rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["p_t_holm"] = holm(table["p_t"])
    table["p_rank_holm"] = holm(table["p_rank"])
    table["significant"] = (table["p_t_holm"] < ALPHA).astype(bool)
    return table


# --- crossover -------------------------------------------------------------------------------


@dataclass
class Crossing:
    """The first crossing of a difference curve (None when there is none) and how many there are.

    direction: "worse-to-better" (the arm is worse below ``km`` and better above it: the
    crossover proper), "better-to-worse" (the reverse), or "" when there is no crossing.
    """

    km: float | None
    direction: str
    crossings: int
    note: str


def find_crossing(km, diff, tol: float = TIE_TOL) -> Crossing:
    """Where the arm - baseline difference curve changes sign, read along ascending ``km``.

    Each point is better (diff > tol), worse (diff < -tol) or a tie (|diff| <= tol, or NaN),
    and ties are skipped. A crossing is a change between two consecutive non-tie points; its
    distance is where the straight line through those two points, in (log km, diff), is 0, so it
    lies strictly between them. The first crossing is reported, with the number of crossings.

    Without a crossing, note says why: "better everywhere", "worse everywhere" (everywhere the
    curves differ by more than tol), or "no difference" (all ties).
    """
    km = np.asarray(km, dtype=float)
    diff = np.asarray(diff, dtype=float)
    if km.shape != diff.shape or np.any(km <= 0) or np.any(np.diff(km) <= 0):
        raise ValueError("km must be positive and strictly ascending, with one diff per km")
    keep = np.abs(diff) > tol  # False for NaN too
    x, d = np.log(km[keep]), diff[keep]
    if not len(d):
        return Crossing(None, "", 0, "no difference")
    changes = np.flatnonzero(np.sign(d[1:]) != np.sign(d[:-1]))
    if not len(changes):
        return Crossing(None, "", 0, "better everywhere" if d[0] > 0 else "worse everywhere")
    i = changes[0]
    at = float(np.exp(x[i] - d[i] * (x[i + 1] - x[i]) / (d[i + 1] - d[i])))
    if d[i] < 0:
        direction, note = "worse-to-better", f"worse below, better above {km_text(at)}"
    else:
        direction, note = "better-to-worse", f"reverse: better below, worse above {km_text(at)}"
    if len(changes) > 1:
        note += f" (first of {len(changes)} crossings)"
    return Crossing(at, direction, len(changes), note)


def crossover_km(km, diff, tol: float = TIE_TOL) -> tuple[float | None, str]:
    """(distance of the first crossing or None, a description): see `find_crossing`."""
    crossing = find_crossing(km, diff, tol)
    return crossing.km, crossing.note


# --- curves ----------------------------------------------------------------------------------


def _wide(curves: pd.DataFrame, baseline) -> pd.DataFrame:
    """Curves as units: one row per (arm, pair), one column per km (ascending)."""
    _check(curves, ["km", "acc"], baseline, ["arm", "pair", "km"])
    wide = curves.pivot(index=["arm", "pair"], columns="km", values="acc").sort_index(axis=1)
    return wide.reset_index()


def _kms(wide: pd.DataFrame) -> list[float]:
    return [c for c in wide.columns if c not in ("arm", "pair")]


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


def _difference_interval(s: Sides) -> tuple[float, float]:
    """The t-interval matching `p_values`' t-test: of the per-pair differences, or Welch's."""
    if s.paired:
        return t_interval(s.arm - s.base)
    if min(len(s.arm), len(s.base)) < 2:
        return math.nan, math.nan
    if np.ptp(s.arm) == 0 and np.ptp(s.base) == 0:
        value = mean_difference(s)
        return value, value
    ci = stats.ttest_ind(s.arm, s.base, equal_var=False).confidence_interval(LEVEL)
    return float(ci.low), float(ci.high)


def curve_band(curves: pd.DataFrame, arm) -> pd.DataFrame:
    """One arm's accuracy per distance: km, n (units), mean, lo, hi (`t_interval` over units)."""
    part = curves[curves["arm"] == arm]
    rows = []
    for km, group in part.groupby("km", sort=True):
        values = pd.to_numeric(group["acc"], errors="coerce").dropna().to_numpy(float)
        lo, hi = t_interval(values)
        rows.append(
            {"km": km, "n": len(values), "mean": values.mean() if len(values) else math.nan, "lo": lo, "hi": hi}
        )
    return pd.DataFrame(rows, columns=["km", "n", "mean", "lo", "hi"])


def difference_curve(curves: pd.DataFrame, arm, baseline) -> pd.DataFrame:
    """arm - baseline accuracy per distance, paired per distance by the pairing rule.

    Columns: km (ascending), paired, n_pairs, diff (as `compare`'s diff), lo, hi (the t-interval
    of the difference matching the t-test: paired t or Welch).
    """
    wide = _wide(curves, baseline)
    rows = []
    for km in _kms(wide):
        s = _sides(wide, arm, baseline, km)
        lo, hi = _difference_interval(s)
        rows.append(
            {"km": km, "paired": s.paired, "n_pairs": s.n_pairs, "diff": mean_difference(s), "lo": lo, "hi": hi}
        )
    return pd.DataFrame(rows, columns=["km", "paired", "n_pairs", "diff", "lo", "hi"])


def crossovers(curves: pd.DataFrame, baseline, tol: float = TIE_TOL) -> pd.DataFrame:
    """Per arm other than the baseline, the crossover of its mean difference curve (`find_crossing`).

    The crossover is located on the mean curve alone; the difference's uncertainty (see
    `difference_curve`) is not carried into it.

    Columns: arm, baseline, crossover_km (NaN when there is no crossing), direction,
    crossings, note, paired (True when the difference at every distance was paired).
    """
    rows = []
    for arm in _arms(curves):
        if arm == baseline:
            continue
        curve = difference_curve(curves, arm, baseline)
        crossing = find_crossing(curve["km"], curve["diff"], tol)
        rows.append(
            {
                "arm": arm,
                "baseline": baseline,
                "crossover_km": crossing.km,
                "direction": crossing.direction,
                "crossings": crossing.crossings,
                "note": crossing.note,
                "paired": bool(curve["paired"].all()),
            }
        )
    return pd.DataFrame(rows, columns=["arm", "baseline", "crossover_km", "direction", "crossings", "note", "paired"])


def plot_error_curves(curves: pd.DataFrame, baseline, out_path: Path, tol: float = TIE_TOL) -> Path:
    """Accuracy against distance per arm (upper panel) and each arm's difference to the baseline
    (lower panel), both with 95 % t-bands, and a dashed vertical line at each arm's crossover
    (dotted for a reverse one). Log km on x, percent on y; writes a PNG to ``out_path``."""
    _check(curves, ["km", "acc"], baseline, ["arm", "pair", "km"])
    arms = _arms(curves)
    tab10 = matplotlib.colormaps["tab10"]
    others = [a for a in arms if a != baseline]
    colours = {baseline: "k", **{arm: tab10(i % 10) for i, arm in enumerate(others)}}
    fig, axes = _figure(2, 1, (7.5, 7.5))
    top, bottom = axes[0, 0], axes[1, 0]
    for arm in arms:
        band = curve_band(curves, arm)
        label = f"{arm} (baseline)" if arm == baseline else str(arm)
        top.plot(band["km"], 100 * band["mean"], "o-", color=colours[arm], ms=3, label=label)
        top.fill_between(band["km"], 100 * band["lo"], 100 * band["hi"], color=colours[arm], alpha=0.15, lw=0)
    for arm in others:
        curve = difference_curve(curves, arm, baseline)
        bottom.plot(curve["km"], 100 * curve["diff"], "o-", color=colours[arm], ms=3, label=str(arm))
        bottom.fill_between(curve["km"], 100 * curve["lo"], 100 * curve["hi"], color=colours[arm], alpha=0.15, lw=0)
        crossing = find_crossing(curve["km"], curve["diff"], tol)
        if crossing.km is not None:
            style = "--" if crossing.direction == "worse-to-better" else ":"
            for ax in (top, bottom):
                ax.axvline(crossing.km, ls=style, color=colours[arm], lw=1)
    bottom.axhline(0, color="k", lw=0.8)
    for ax in (top, bottom):
        ax.set_xscale("log")  # decade ticks: the curve's ~48 distances would crowd the axis
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda k, _: f"{k:g} km"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    top.set_ylabel("accuracy (%)")
    top.set_title("accuracy within distance, mean and 95 % t-band over seeds")
    bottom.set_ylabel(f"difference to {baseline} (pp)")
    bottom.set_title("arm − baseline; crossover dashed (worse below, better above), reverse dotted", fontsize=9)
    bottom.set_xlabel("distance")
    return _save(fig, Path(out_path))


# --- rendering -------------------------------------------------------------------------------


def _number(value: float, fraction: bool, signed: bool = False) -> str:
    """Same convention as tables.cell_text: a fraction in % with 2 decimals, anything else with 1."""
    if pd.isna(value):
        return "–"
    scale, digits = (100.0, 2) if fraction else (1.0, 1)
    return f"{value * scale:{'+' if signed else ''}.{digits}f}"


def p_text(p: float) -> str:
    """A p-value with 3 significant digits: 0.0123, 1.00, 4.56e-05; "–" for NaN."""
    return "–" if pd.isna(p) else f"{p:#.3g}"


def note(row) -> str:
    """How a row was compared: "paired (n=3)" or "unpaired: no shared seeds (Welch, n=3 vs 4)"."""
    if row["paired"]:
        return f"paired (n={row['n_pairs']})"
    shared = "no shared seeds" if row["n_pairs"] == 0 else f"{row['n_pairs']} shared seed"
    return f"unpaired: {shared} (Welch, n={row['n_arm']} vs {row['n_baseline']})"


def render(table: pd.DataFrame, fractions=()) -> pd.DataFrame:
    """`compare`'s table as display strings for Markdown or LaTeX, one row per row.

    fractions: the metrics whose values are fractions, shown in percentage points (pp).
    Columns: arm, metric, diff ("+1.23 pp" or "+12.3"), 95% CI ("[lo, hi]" in the same unit),
    p (t), p (t, Holm), p (rank), p (rank, Holm), sig ("*" when significant), effect, note.
    """
    rows = []
    for _, r in table.iterrows():
        fraction = r["metric"] in fractions
        unit = " pp" if fraction else ""
        interval = f"[{_number(r['ci_low'], fraction, True)}, {_number(r['ci_high'], fraction, True)}]"
        rows.append(
            {
                "arm": str(r["arm"]),
                "metric": str(r["metric"]),
                "diff": _number(r["diff"], fraction, signed=True) + (unit if not pd.isna(r["diff"]) else ""),
                "95% CI": interval if not pd.isna(r["ci_low"]) else "–",
                "p (t)": p_text(r["p_t"]),
                "p (t, Holm)": p_text(r["p_t_holm"]),
                "p (rank)": p_text(r["p_rank"]),
                "p (rank, Holm)": p_text(r["p_rank_holm"]),
                "sig": "*" if r["significant"] else "",
                "effect": r["effect"],
                "note": note(r),
            }
        )
    columns = ["arm", "metric", "diff", "95% CI", "p (t)", "p (t, Holm)", "p (rank)", "p (rank, Holm)"]
    return pd.DataFrame(rows, columns=columns + ["sig", "effect", "note"])


def caption(table: pd.DataFrame) -> str:
    """The rule behind the table's numbers and stars, for its caption."""
    base = ", ".join(dict.fromkeys(map(str, table["baseline"]))) or "the baseline"
    return (
        f"Differences arm − {base} (pp for accuracies), with {LEVEL:.0%} percentile bootstrap intervals "
        f"(not corrected for multiplicity). p-values: paired t and Wilcoxon "
        f"signed-rank when arm and baseline share at least {MIN_PAIRS} seeds, else Welch t and "
        f"Mann-Whitney U; Holm-corrected over the {len(table)} comparisons of this table. "
        f"* = Holm-corrected t p < {ALPHA}."
    )
