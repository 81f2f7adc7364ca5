"""Crossover distance: where an arm's error curve crosses its baseline's.

The fine error curve of a run (``curves.jsonl``: accuracy within each of ~48 distances from 0.1 to
20,000 km) says *where* an arm differs from its baseline. A claim such as "noise lowers 1 km
accuracy and raises 2500 km accuracy" is a statement about distance: the *crossover* is the
distance below which the arm is worse than the baseline and above which it is better.

Input, built by ``analysis/arms.py``: ``curves``, the units of ``analysis/compare.py`` as
accuracy-against-distance curves, long: columns ``arm``, ``pair``, ``km``, ``acc`` (a fraction),
one row per unit and distance. Each distance is compared by ``analysis/stats.py``'s pairing rule.

A crossover located on mean curves is a point estimate: `crossover_interval` bootstraps it over
the units (seeds: the pairs, resampled together; unpaired, each arm on its own), and a resample
whose mean curve has no crossing in the same direction counts as "no crossover" (+inf), so the
interval is finite only where at least 97.5 % of the resamples cross the same way. The summary
states a crossover only where that interval is finite *and* the arm differs significantly (the
comparison table's rule) on at least one side of it in the crossover's direction:
worse at a threshold below it, or better at one above it (`is_stated`).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd

from analysis import names, stats
from analysis.canvas import Chart, figure
from analysis.compare import arm_order, check_units
from analysis.formats import km_text
from analysis.summary import stated as effect_stated

# An accuracy difference of at most 0.1 percentage point counts as a tie when locating a
# crossover: the mean of a few seeds is not resolved more finely than that, and a crossing
# located on such a wiggle would be noise.
TIE_TOL = 1e-3
N_RESAMPLES = 2000  # bootstrap resamples of a crossover (each a find_crossing on ~48 points: ~0.1 s per arm)
SEED = 0  # fixed: the same curves give the same crossover interval every time
COLUMNS = [
    "arm",
    "baseline",
    "crossover_km",
    "ci_low_km",
    "ci_high_km",
    "direction",
    "crossings",
    "note",
    "paired",
]


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


def _wide(curves: pd.DataFrame, baseline) -> pd.DataFrame:
    """Curves as units: one row per (arm, pair), one column per km (ascending)."""
    check_units(curves, ["km", "acc"], baseline, ["arm", "pair", "km"])
    wide = curves.pivot(index=["arm", "pair"], columns="km", values="acc").sort_index(axis=1)
    return wide.reset_index()


def _kms(wide: pd.DataFrame) -> list[float]:
    return [c for c in wide.columns if c not in ("arm", "pair")]


def curve_band(curves: pd.DataFrame, arm) -> pd.DataFrame:
    """One arm's accuracy per distance: km, n (units), mean, lo, hi (``stats.t_interval`` over units)."""
    part = curves[curves["arm"] == arm]
    rows = []
    for km, group in part.groupby("km", sort=True):
        values = pd.to_numeric(group["acc"], errors="coerce").dropna().to_numpy(float)
        lo, hi = stats.t_interval(values)
        rows.append({"km": km, "n": len(values), "mean": values.mean() if len(values) else np.nan, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["km", "n", "mean", "lo", "hi"])


def difference_curve(curves: pd.DataFrame, arm, baseline) -> pd.DataFrame:
    """arm - baseline accuracy per distance, paired per distance by the pairing rule.

    Columns: km (ascending), paired, n_pairs, diff (as the comparison table's diff), lo, hi (the
    t-interval of the difference matching the t-test: paired t or Welch).
    """
    wide = _wide(curves, baseline)
    rows = []
    for km in _kms(wide):
        s = stats.sides(wide, arm, baseline, km)
        lo, hi = stats.difference_interval(s)
        rows.append(
            {"km": km, "paired": s.paired, "n_pairs": s.n_pairs, "diff": stats.mean_difference(s), "lo": lo, "hi": hi}
        )
    return pd.DataFrame(rows, columns=["km", "paired", "n_pairs", "diff", "lo", "hi"])


def crossover_interval(
    curves: pd.DataFrame, arm, baseline, direction: str, tol: float = TIE_TOL, n_resamples: int = N_RESAMPLES, seed=SEED
) -> tuple[float, float]:
    """The bootstrap 95 % interval (stats.LEVEL) of an arm's crossover distance (module docstring).

    Units whose curve lacks a distance are left out; the arm is paired with the baseline when they
    share ``stats.MIN_PAIRS`` pair keys (the pairs resampled together), else each arm is resampled
    on its own. Each resample's mean difference curve gets `find_crossing`; one without a crossing
    in ``direction`` counts as +inf. The interval is the resamples' 2.5 and 97.5 % quantiles (of the
    sorted values, no interpolation, so +inf stays +inf). NaN, NaN without a direction or with fewer
    than 2 units on a side."""
    if not direction:
        return np.nan, np.nan
    wide = _wide(curves, baseline).dropna()
    km = np.asarray(_kms(wide), dtype=float)
    a = wide[wide["arm"] == arm].set_index("pair")[list(km)]
    b = wide[wide["arm"] == baseline].set_index("pair")[list(km)]
    shared = a.index.intersection(b.index, sort=False)
    rng = np.random.default_rng(seed)
    if len(shared) >= stats.MIN_PAIRS:
        d = a.loc[shared].to_numpy(float) - b.loc[shared].to_numpy(float)
        means = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(axis=1)
    elif min(len(a), len(b)) >= 2:
        x, y = a.to_numpy(float), b.to_numpy(float)
        means = x[rng.integers(0, len(x), (n_resamples, len(x)))].mean(axis=1)
        means = means - y[rng.integers(0, len(y), (n_resamples, len(y)))].mean(axis=1)
    else:
        return np.nan, np.nan
    found = [find_crossing(km, curve, tol) for curve in means]
    values = np.array([c.km if c.direction == direction else np.inf for c in found])
    tail = (1 - stats.LEVEL) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def crossovers(curves: pd.DataFrame, baseline, tol: float = TIE_TOL) -> pd.DataFrame:
    """Per arm other than the baseline, the crossover of its mean difference curve (`find_crossing`)
    and its bootstrap interval (`crossover_interval`).

    Columns (COLUMNS): arm, baseline, crossover_km (NaN when there is no crossing), ci_low_km,
    ci_high_km (+inf when too many resamples do not cross; NaN without a crossing), direction,
    crossings, note, paired (True when the difference at every distance was paired).
    """
    rows = []
    for arm in arm_order(curves):
        if arm == baseline:
            continue
        curve = difference_curve(curves, arm, baseline)
        crossing = find_crossing(curve["km"], curve["diff"], tol)
        lo, hi = crossover_interval(curves, arm, baseline, crossing.direction, tol)
        rows.append(
            {
                "arm": arm,
                "baseline": baseline,
                "crossover_km": crossing.km,
                "ci_low_km": lo,
                "ci_high_km": hi,
                "direction": crossing.direction,
                "crossings": crossing.crossings,
                "note": crossing.note,
                "paired": bool(curve["paired"].all()),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def is_stated(row, comparison: pd.DataFrame, thresholds: dict[str, float]) -> tuple[bool, str]:
    """Whether the summary states a crossover (module docstring), and why not when it does not.

    row: a row of `crossovers` (with ``param``); comparison: the comparison table (param, arm,
    metric, effect, significant, ci_low, ci_high); thresholds: accuracy key -> its threshold in km.
    """
    if pd.isna(row["crossover_km"]):
        return False, str(row["note"])
    if not (np.isfinite(row["ci_low_km"]) and np.isfinite(row["ci_high_km"])):
        return False, f"its 95 % interval, {_span(row)}, is not finite"
    below, above = ("worse", "better") if row["direction"] == "worse-to-better" else ("better", "worse")
    mine = comparison[(comparison["param"] == row["param"]) & (comparison["arm"].astype(str) == str(row["arm"]))]
    for r in mine.itertuples():
        km = thresholds.get(r.metric)
        if km is not None and effect_stated(r) and r.effect == (below if km < row["crossover_km"] else above):
            return True, ""
    return False, f"no accuracy differs significantly on either side of {km_text(row['crossover_km'])}"


def _span(row) -> str:
    lo, hi = row["ci_low_km"], row["ci_high_km"]
    return " to ".join("∞" if np.isinf(v) else km_text(v) for v in (lo, hi))


def interval_text(row) -> str:
    """A crossover's interval for tables and sentences: "4.1 km to 52 km", "3 km to ∞", "–"."""
    return "–" if pd.isna(row["ci_low_km"]) else _span(row)


def plot_error_curves(curves: pd.DataFrame, baseline, param: str, tol: float = TIE_TOL) -> Chart:
    """Accuracy against distance per arm of ``param`` (upper panel) and each arm's difference to the
    baseline (lower panel), both with 95 % t-bands, and a dashed vertical line at each arm's crossover
    (dotted for a reverse one). Log km on x, percent on y."""
    check_units(curves, ["km", "acc"], baseline, ["arm", "pair", "km"])
    arms = arm_order(curves)
    tab10 = matplotlib.colormaps["tab10"]
    others = [a for a in arms if a != baseline]
    colours = {baseline: "k", **{arm: tab10(i % 10) for i, arm in enumerate(others)}}
    fig, axes = figure(2, 1, (7.5, 7.5))
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
    name = names.error_curve(param)
    return Chart(name, fig, names.alt(name))
