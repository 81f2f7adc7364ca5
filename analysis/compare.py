"""Arms against a baseline: one table of differences with intervals and Holm-corrected tests.

A study varies one hyperparameter (e.g. ``train.noise.batch_sigma`` in 0, 1, 5, 25 km); each value
is an *arm* and is trained with several seeds. A claim such as "noise raises 25-2500 km accuracy
and lowers 1 km accuracy" is a set of differences arm - baseline, each with an interval and a
test, corrected for the many comparisons made at once. The statistics are ``stats.py``'s.

Input, built by the caller (``arms.py``): ``units``, one row per unit (one trial's seed, at one
fixed epoch) with columns ``arm`` (the parameter's value, a label), ``pair`` (a pairing key:
units of different arms with the same key share the seed and every other setting), and one
numeric column per metric. Pairing follows ``stats.py``'s rule.
"""

from __future__ import annotations

import pandas as pd

from . import stats
from .stats import ALPHA, LEVEL, MIN_PAIRS, N_RESAMPLES, SEED, SMALL_N, Sides

# ALPHA (stats.py): significance level of the Holm-corrected t-test (the one significance rule)
NO_VARIANCE = "no variance"  # what the tables show for a statistic of data without variance

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
    "ci_method",
    "t_test",
    "p_t",
    "rank_test",
    "p_rank",
    "rank_note",
    "p_t_holm",
    "p_rank_holm",
    "significant",
    "effect",
]


# --- input -----------------------------------------------------------------------------------


def arm_order(frame: pd.DataFrame) -> list:
    """The arm labels in display order: a categorical's category order, else first appearance."""
    arm = frame["arm"]
    present = set(arm.dropna())
    if isinstance(arm.dtype, pd.CategoricalDtype):
        return [a for a in arm.cat.categories if a in present]
    return list(dict.fromkeys(arm.dropna()))


def check_units(frame: pd.DataFrame, columns: list, baseline, key: list[str]) -> None:
    """Fail early, by name, on input that would otherwise give silently wrong pairs."""
    missing = [c for c in ["arm", "pair", *columns] if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(map(str, missing))}")
    if baseline not in set(frame["arm"]):
        raise ValueError(f"baseline arm {baseline!r} has no units; arms: {arm_order(frame)}")
    repeated = frame[frame.duplicated(key, keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        where = ", ".join(f"{k}={first[k]!r}" for k in key)
        raise ValueError(f"{len(repeated)} rows share their {'/'.join(key)} (e.g. {where}): pairs would be ambiguous")


# --- the table -------------------------------------------------------------------------------


def _row(s: Sides, n_resamples: int, seed: int) -> dict:
    lo, hi, method = stats.interval(s, n_resamples, seed)
    p_t, p_rank = stats.p_values(s)
    t_test, rank_test = PAIRED_TESTS if s.paired else UNPAIRED_TESTS
    return {
        "paired": s.paired,
        "n_arm": s.n_arm,
        "n_baseline": s.n_baseline,
        "n_pairs": s.n_pairs,
        "mean_arm": float(s.arm.mean()) if len(s.arm) else float("nan"),
        "mean_baseline": float(s.base.mean()) if len(s.base) else float("nan"),
        "diff": stats.mean_difference(s),
        "ci_low": lo,
        "ci_high": hi,
        "ci_method": method,
        "t_test": t_test,
        "p_t": p_t,
        "rank_test": rank_test,
        "p_rank": p_rank,
        "rank_note": "" if stats.rank_test_reachable(s) else stats.RANK_TOO_FEW[s.paired],
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

    Columns (COLUMNS): arm, baseline, metric; paired (the pairing rule); n_arm, n_baseline
    (units with a value), n_pairs (pair keys shared; the pairs used when paired); mean_arm,
    mean_baseline (over the units used: the matched pairs when paired, all units otherwise);
    diff (mean of arm - baseline; paired: the mean per-pair difference, equal to mean_arm -
    mean_baseline up to rounding); ci_low, ci_high, ci_method (``stats.interval``: the t interval
    below ``SMALL_N`` units, else BCa bootstrap; equal exactly when there is no variance); t_test,
    p_t, rank_test, p_rank (``stats.p_values``: NaN when the rank test cannot reach ALPHA at this
    number of pairs), rank_note ("too few pairs" / "too few units" then, else ""); p_t_holm,
    p_rank_holm (``stats.holm`` over all rows of this table, separately for each test);
    significant; effect (``stats.effect``).

    Significance rule: ``p_t_holm < ALPHA``. The interval is descriptive and not part of the rule:
    it is not corrected for the table's many comparisons (below ``SMALL_N`` units it is the
    uncorrected t-test's own interval).

    Rows follow the arm order (`arm_order`), then ``metrics``' order.
    """
    check_units(units, list(metrics), baseline, ["arm", "pair"])
    directions = directions or {}
    rows = []
    for arm in arm_order(units):
        if arm == baseline:
            continue
        for metric in metrics:
            row = {"arm": arm, "baseline": baseline, "metric": metric}
            row.update(_row(stats.sides(units, arm, baseline, metric), n_resamples, seed))
            row["effect"] = stats.effect(row["diff"], directions.get(metric))
            rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["p_t_holm"] = stats.holm(table["p_t"])
    table["p_rank_holm"] = stats.holm(table["p_rank"])
    table["significant"] = (table["p_t_holm"] < ALPHA).astype(bool)
    return table


def no_variance(row) -> bool:
    """A row of `compare`'s table whose data have no variance (``stats.no_variance``): the one
    case where its interval is a single value."""
    return not pd.isna(row["ci_low"]) and row["ci_low"] == row["ci_high"]


# --- rendering -------------------------------------------------------------------------------


def _number(value: float, fraction: bool, signed: bool = False) -> str:
    """Same convention as the ablation tables: a fraction in % with 2 decimals, anything else with 1."""
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
    p (t), p (t, Holm), p (rank), p (rank, Holm), sig ("*" when significant), effect, note. A row
    without variance (`no_variance`) shows NO_VARIANCE for its interval and p-values; a rank test
    that cannot reach ALPHA at its number of pairs shows its ``rank_note`` ("too few pairs").
    """
    rows = []
    for _, r in table.iterrows():
        fraction = r["metric"] in fractions
        unit = " pp" if fraction else ""
        interval = f"[{_number(r['ci_low'], fraction, True)}, {_number(r['ci_high'], fraction, True)}]"
        shown = {
            "arm": str(r["arm"]),
            "metric": str(r["metric"]),
            "diff": _number(r["diff"], fraction, signed=True) + (unit if not pd.isna(r["diff"]) else ""),
            "95% CI": interval if not pd.isna(r["ci_low"]) else "–",
            "p (t)": p_text(r["p_t"]),
            "p (t, Holm)": p_text(r["p_t_holm"]),
            "p (rank)": p_text(r["p_rank"]),
            "p (rank, Holm)": p_text(r["p_rank_holm"]),
        }
        if r.get("rank_note"):
            shown.update(dict.fromkeys(["p (rank)", "p (rank, Holm)"], r["rank_note"]))
        if no_variance(r):
            shown.update(dict.fromkeys(["95% CI", "p (t)", "p (t, Holm)", "p (rank)", "p (rank, Holm)"], NO_VARIANCE))
        shown.update({"sig": "*" if r["significant"] else "", "effect": r["effect"], "note": note(r)})
        rows.append(shown)
    columns = ["arm", "metric", "diff", "95% CI", "p (t)", "p (t, Holm)", "p (rank)", "p (rank, Holm)"]
    return pd.DataFrame(rows, columns=columns + ["sig", "effect", "note"])


def caption(table: pd.DataFrame) -> str:
    """The rule behind the table's numbers and stars, for its caption."""
    base = ", ".join(dict.fromkeys(map(str, table["baseline"]))) or "the baseline"
    text = (
        f"Differences arm − {base} (pp for accuracies), with {LEVEL:.0%} intervals (not corrected for "
        f"multiplicity): the t-test's (paired t or Welch) below {SMALL_N} pairs, BCa bootstrap from "
        f"{SMALL_N} on. p-values: paired t and Wilcoxon "
        f"signed-rank when arm and baseline share at least {MIN_PAIRS} seeds, else Welch t and "
        f"Mann-Whitney U; Holm-corrected over the {len(table)} comparisons of this table. "
        f"* = Holm-corrected t p < {ALPHA}."
    )
    notes = sorted({str(n) for n in table["rank_note"].dropna() if n}) if "rank_note" in table else []
    if notes:
        text += (
            f" {' / '.join(notes)}: an exact rank test cannot give p < {ALPHA} on so few (Wilcoxon: fewer than 6 "
            "non-zero differences), so its p-value is not reported and not in Holm's family."
        )
    if any(no_variance(r) for _, r in table.iterrows()):
        text += (
            f" {NO_VARIANCE}: every paired difference (or every value of each arm) is the same, so no test can "
            "weigh it; its t-test p, which Holm's correction and the * use, is taken as 1 when that difference "
            "is 0 and as 0 otherwise (an infinite t)."
        )
    return text
