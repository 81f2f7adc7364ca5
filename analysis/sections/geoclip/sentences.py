"""GeoCLIP's sentences in the report's summary: what trades the finest accuracy against coarse
accuracy, the loss-accuracy correlations, the crossover distances, the divergence epochs, the
Pareto fronts and the gallery ceiling; and its clause of the strength of evidence. They follow
the generic effects (``analysis/summary.py``), in that order, under the same rule: an effect is
stated only where the comparison finds one.
"""

from __future__ import annotations

import pandas as pd

from analysis.budget import Budget, epoch_label
from analysis.findings import Findings
from analysis.load import Study
from analysis.summary import difference, interval, pct, signed, stated
from analysis.tables import MIN_RUNS

from .crossover import interval_text, is_stated
from .tradeoff import LOSSES


def lines(study: Study, budget: Budget, numbers, found: Findings) -> list[str]:
    """The section's summary lines (``numbers``: the section's `Numbers`), in the report's order."""
    used = budget.trials
    fine, coarse = numbers.fine, study.accuracies[1:]
    out = []
    if fine and coarse:
        out.append(_tradeoff_line(budget, found.comparison, fine, coarse))
        for loss in LOSSES:
            sentence = _correlation_sentence(numbers.corr, numbers.quoted_epoch, budget, loss, fine, coarse[-1])
            if sentence:
                out.append(sentence)
    if len(numbers.crossovers):
        out.append(_crossover_line(study, budget, numbers.crossovers, found.comparison))
    for loss in LOSSES:
        sentence = _divergence_sentence(numbers.divergence, loss, fine)
        if sentence:
            out.append(sentence)
    for name, group in numbers.fronts.groupby("front", sort=False):
        members = ", ".join(f"#{n}" for n in group["number"])
        out.append(f"**Pareto front {name} at {budget.label}:** {len(group)} of {len(used)} trials ({members}).")
    if fine and len(numbers.ceiling):
        out += _ceiling_line(budget, numbers.ceiling, fine)
    return out


def evidence(numbers) -> str:
    """How many loss-accuracy correlations at the quoted epoch have an interval excluding 0."""
    corr = numbers.corr[numbers.corr["epoch"] == numbers.quoted_epoch] if len(numbers.corr) else numbers.corr
    defined = corr.dropna(subset=["ci_low"]) if len(corr) else corr
    if not len(defined):
        return ""
    excl = int(defined["excludes_zero"].sum())
    text = (
        f" {excl} of {len(defined)} loss–accuracy correlations at {epoch_label(numbers.quoted_epoch)} have a "
        f"95 % interval that excludes 0"
    )
    return text + (f"; the other {len(defined) - excl} are inconclusive." if excl < len(defined) else ".")


def _tradeoff_line(budget: Budget, comparison: pd.DataFrame, fine: str, coarse: list[str]) -> str:
    """Arms better on the finest accuracy and worse on a coarser one, or the reverse, both stated effects."""
    trades = []
    for (param, arm), group in comparison.groupby(["param", "arm"], sort=False, observed=True):
        effects = {r.metric: r for r in group.itertuples() if stated(r)}
        if fine not in effects:
            continue
        f = effects[fine]
        for metric in coarse:
            c = effects.get(metric)
            if c is not None and {f.effect, c.effect} == {"better", "worse"}:
                trades.append(
                    f"{param} = {arm} vs {f.baseline}: {f.effect} for {fine} "
                    f"({difference(f.diff, True)}) but {c.effect} for {metric} ({difference(c.diff, True)})"
                )
                break
    text = (
        "; ".join(trades)
        if trades
        else f"no evidence at this budget: no arm is significantly better on {fine} and worse on a coarser "
        f"accuracy, or the reverse"
    )
    return f"**What trades {fine} against coarse accuracy at {budget.label}:** {text}."


def _crossover_line(study: Study, budget: Budget, crossovers: pd.DataFrame, comparison: pd.DataFrame) -> str:
    """Each arm's crossover, stated only where its interval is finite and the arm differs significantly
    on a side of it (``crossover.is_stated``); otherwise "none stated" and why."""
    thresholds = {m.key: m.threshold_km for m in study.registry if m.kind == "accuracy" and m.primary}
    parts = []
    for param, group in crossovers.groupby("param", sort=False):
        arms = []
        for _, r in group.iterrows():
            ok, why = is_stated(r, comparison, thresholds)
            if ok:
                found = f"{r['note']} (95 % interval {interval_text(r)})"
            else:  # "none" where the mean curves do not cross, "none stated" where they cross but the rule says no
                found = f"none ({why})" if pd.isna(r["crossover_km"]) else f"none stated ({why})"
            arms.append(f"{r['arm']}: {found}")
        parts.append(f"{param} against {group['baseline'].iloc[0]}: " + ", ".join(arms))
    return (
        f"**Crossover distance** (mean error curves on {study.primary_set} at {budget.label}; below it the arm is "
        f"worse than the baseline, above it better; stated only where its bootstrap interval over seeds is finite "
        f"and an accuracy differs significantly on a side of it): " + "; ".join(parts) + "."
    )


def _correlation_sentence(corr: pd.DataFrame, epoch, budget: Budget, loss: str, fine: str, coarse: str) -> str | None:
    """The cross-trial correlation of ``loss`` with the finest and coarsest accuracy at ``epoch``."""
    rows = {r["metric"]: r for _, r in corr[(corr["loss"] == loss) & (corr["epoch"] == epoch)].iterrows()}
    if fine not in rows or pd.isna(rows[fine]["rho"]):
        return None

    def clause(metric):
        r = rows[metric]
        if pd.isna(r["rho"]):
            return f"{metric}: undefined"
        way = "lower" if r["rho"] > 0 else "higher"
        verdict = "interval excludes 0" if r["excludes_zero"] else "interval crosses 0: inconclusive"
        return (
            f"{way} {metric} (Spearman ρ = {signed(r['rho'])}, {r['strength']}, 95 % CI {interval(r)}, "
            f"n = {r['n']}; {verdict})"
        )

    where = epoch_label(epoch)
    if epoch != budget.epoch:
        where += f" (the highest ASHA rung with at least {MIN_RUNS} trials; correlations are made at fixed epochs only)"
    tail = f", and with {clause(coarse)}" if coarse in rows else ""
    return f"**Across trials at {where}**, a lower {loss} goes with {clause(fine)}{tail}."


def _divergence_sentence(div_summary: pd.DataFrame, loss: str, fine: str | None) -> str | None:
    part = div_summary[div_summary["loss"] == loss]
    overall = part[part["param"] == "(all)"]
    if not len(overall) or overall.iloc[0]["n"] == 0:
        return None
    o = overall.iloc[0]
    first = f", from epoch {o['first_epoch_min']} at the earliest" if o["n_diverging"] else ""
    text = f"**Within trials**, {loss} fell while {fine} fell too in {o['n_diverging']} of {o['n']} trials{first}"
    first_param = next((p for p in part["param"] if p != "(all)"), None)
    if first_param is not None:
        cells = [
            f"{r['value']}: {r['n_diverging']}/{r['n']}"
            + (f" (from epoch {r['first_epoch_min']})" if r["n_diverging"] else "")
            for _, r in part[part["param"] == first_param].iterrows()
        ]
        text += f"; by {first_param}: " + ", ".join(cells)
    return text + "."


def _ceiling_line(budget: Budget, ceiling: pd.DataFrame, fine: str) -> list[str]:
    """How close the best trial comes to what the gallery allows at the finest threshold (none without a ceiling)."""
    row = ceiling[ceiling["metric"] == fine].iloc[0]
    if pd.isna(row["ceiling"]):
        return []
    share = row["best_share_of_ceiling"]
    note = (
        " - close to the ceiling: a flat accuracy here is the gallery's limit, not the model's"
        if share >= 0.9
        else " - well below the ceiling: the model, not the gallery, limits it"
    )
    return [
        f"**Gallery ceiling:** {fine} can reach at most {pct(row['ceiling'])}; the best trial reaches "
        f"{pct(row['best_acc'])} at {budget.label} ({100 * share:.0f} % of the ceiling){note}."
    ]
