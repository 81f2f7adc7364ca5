"""The summary that opens report.md, written from the numbers of the generic analysis.

The summary compares trials at one epoch (the budget, ``budget.py``) and states an effect of a
hyperparameter only where the comparison of its arm against the baseline (``compare.py``) finds
one: significant after Holm's correction (the tables' marker) and with an interval that excludes
0; elsewhere it says "no evidence at this budget" with the n it rests on. Each sentence carries
its n and interval, so that a sentence copied into a thesis carries its own caveat. It leads with
the task's headline metric (``roles.headline``); a task's section adds its own sentences after
the effects (``analysis/sections/``), and a clause to the closing strength of evidence.
"""

from __future__ import annotations

import pandas as pd

from geoloc.common.metrics import MetricRegistry
from geoloc.study.folders import Status

from . import roles
from .budget import WHOLE, Budget
from .compare import NO_VARIANCE, no_variance
from .findings import Findings
from .load import Study
from .tables import MIN_RUNS, START_LABEL, before_training, fmt_value

# How the summary names each status, in the order it lists them.
STATUS_WORDS = {
    Status.FINISHED: "finished",
    Status.STOPPED: "stopped early",  # by the study's scheduler: Study.stopped_words
    Status.ERRORED: "errored",
    Status.RUNNING: "running",
}


def pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.2f} %"


def signed(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:+.2f}"


def interval(row) -> str:
    return "–" if pd.isna(row["ci_low"]) else f"[{signed(row['ci_low'])}, {signed(row['ci_high'])}]"


def value_text(registry: MetricRegistry, key: str, value: float) -> str:
    """A metric's value in a sentence: a fraction in %, anything else with 4 significant digits."""
    return pct(value) if registry.fraction(key) else ("–" if pd.isna(value) else f"{value:.4g}")


def summary(study: Study, budget: Budget, found: Findings, section_lines=(), evidence: str = "") -> list[str]:
    """The summary's lines: the generic ones, a task section's ``section_lines`` after the effects,
    and the strength of evidence with the section's ``evidence`` clause."""
    counts = study.trials["status"].value_counts()
    words = {**STATUS_WORDS, Status.STOPPED: study.stopped_words}
    parts = [f"{counts.get(s.value, 0)} {word}" for s, word in words.items() if counts.get(s.value, 0)]
    lines = [f"**Trials:** {len(study.trials)} in all: {', '.join(parts)}."]
    used = budget.trials
    if budget.epoch is None:
        lines.append("No trial has finished or been stopped yet: nothing to compare. Run the analysis again later.")
        return lines
    lines.append(_budget_line(budget))
    if found.front is not None:
        lines.append(_front_line(found.front))
    registry, shown = study.registry, roles.shown(study)

    if "score" in study.metrics and used["score"].notna().any():
        best = used.loc[used["score"].astype(float).idxmax()]
        values = [f"{m} {value_text(registry, m, best[m])}" for m in shown if m != "score"]
        params = ", ".join(f"{p} = {fmt_value(best[p])}" for p in study.varied) or "no varied hyperparameters"
        lines.append(
            f"**Best trial by score at {budget.label}:** #{best['number']} (`{best['trial_id']}`, "
            f"{best['status_detail']}): "
            + "; ".join(
                [
                    f"score {value_text(registry, 'score', best['score'])}",
                    *([", ".join(values)] if values else []),
                    params,
                ]
            )
            + "."
        )
    start = before_training(study, shown)
    if start is not None:
        values = ", ".join(f"{m} {value_text(registry, m, start[f'{m}_mean'])}" for m in shown)
        lines.append(
            f"**{START_LABEL[0].upper()}{START_LABEL[1:]}:** {values} (mean over the {start['n']} finished or "
            f"stopped {budget.unit_word} evaluated before the first epoch; with a warm start, the published "
            "model; the first row of each ablation table)."
        )
    head = roles.headline(study)
    if head:
        lines.append(_effects_line(study, budget, found, head))
    for mechanism in roles.diagnostics(study, mechanism=True):  # set beside the headline
        if mechanism in set(found.comparison["metric"]):
            lines.append(_effects_line(study, budget, found, mechanism))
    lines += list(section_lines)
    lines.append(_evidence(budget, found, evidence))
    return lines


def _front_line(front) -> str:
    """The Pareto study's result: the front found, its hypervolume and the epochs it cost."""
    head = f"**Pareto objective ({front.objective.describe()}):** "
    spent = f"{front.epochs_spent} epochs spent by {len(front.history)} trials"
    if front.reference is None:
        return head + f"no trial ran the full {front.epochs} epochs yet, so no front; {spent}."
    members = ", ".join(f"#{n}" for n in front.pareto_set()["number"])
    corner = ", ".join(f"{v:g}" for v in front.reference)
    return head + (
        f"{len(front.pareto_set())} of the {len(front.trials)} trials that ran the full {front.epochs} epochs are "
        f"on the front ({members}); hypervolume {front.hypervolume:.4g} (reference point {corner}) after {spent}."
    )


def _budget_line(budget: Budget) -> str:
    """Which epoch is compared, why, and on how many trials; who is left out and where to see them."""
    n = len(budget.trials)
    if budget.epoch in WHOLE:
        text = f"**Budget:** each trial's {budget.label} values ({budget.reason()}), {n} finished or stopped trials"
        if budget.mixed:
            lo, hi = budget.final_epochs
            text += f" that ran {lo} to {hi} epochs: this mixes budgets (see the warnings)"
    else:
        text = (
            f"**Budget:** trials are compared at {budget.label}, each with its values there: {budget.reason()}. "
            f"{n} of the {budget.counted} finished or stopped trials reached it"
        )
        if budget.left_out:
            text += (
                f"; {budget.left_out} stopped earlier and are left out of every table and statistic below "
                "(their curves are in the learning curves)"
            )
    if budget.per_seed:
        text += f". Ablations and comparisons count runs (trial × seed): {len(budget.units)}"
    return text + "."


def stated(row) -> bool:
    """An effect the summary states: significant (compare.py's rule, the tables' marker) and with an
    interval that excludes 0, so that the sentence contradicts neither."""
    return bool(row.significant) and (row.ci_low > 0 or row.ci_high < 0)


def difference(value: float, fraction: bool, unit: str = "") -> str:
    """A difference in a sentence: a fraction's in percentage points, anything else with 1 decimal."""
    return "–" if pd.isna(value) else (f"{100 * value:+.2f} pp" if fraction else f"{value:+.1f}{unit}")


def _effect_clause(row, registry: MetricRegistry) -> str:
    metric = registry.get(row.metric)
    fraction = registry.fraction(row.metric)
    unit = " km" if metric is not None and metric.kind == "distance" else ""
    n = f"n = {row.n_pairs} pairs" if row.paired else f"unpaired, n = {row.n_arm} vs {row.n_baseline}"
    if no_variance(row._asdict()):  # no test weighed it: no interval or p to quote
        return f"{row.arm} vs {row.baseline}: {difference(row.diff, fraction, unit)} ({NO_VARIANCE}, {n})"
    return (
        f"{row.arm} vs {row.baseline}: {difference(row.diff, fraction, unit)} "
        f"[{difference(row.ci_low, fraction, unit)}, {difference(row.ci_high, fraction, unit)}] "
        f"({row.t_test} p = {row.p_t_holm:.3g} after Holm, {n})"
    )


def _units(rows: pd.DataFrame) -> int:
    """The units one parameter's comparisons rest on: every arm's, the baseline's once."""
    return int(rows["n_arm"].sum() + rows["n_baseline"].iloc[0]) if len(rows) else 0


def _effects_line(study: Study, budget: Budget, found: Findings, key: str) -> str:
    rows = found.comparison[found.comparison["metric"] == key]
    parts = []
    for param, group in rows.groupby("param", sort=False):
        clauses = [_effect_clause(r, study.registry) for r in group.itertuples() if stated(r)]
        if clauses:
            parts.append(f"{param}: " + "; ".join(clauses))
        else:
            parts.append(f"{param}: no evidence at this budget (n = {_units(group)} {budget.unit_word})")
    text = " | ".join(parts) if parts else "no varied hyperparameter (seeds aside) to compare"
    top = found.importance.table[found.importance.table["target"] == key].head(3)
    ranked = ", ".join(f"{r.param} {r.importance:.2f}" for r in top.itertuples())
    ranking = f" {found.importance.evaluator} importance for {key}: {ranked}." if ranked else ""
    return (
        f"**Effects on {key} at {budget.label}** (arm − baseline, 95 % interval; stated only where significant "
        f"after Holm's correction with an interval excluding 0; every arm in the paired comparisons below): "
        f"{text}.{ranking}"
    )


def _evidence(budget: Budget, found: Findings, section: str) -> str:
    runs = f" ({len(budget.units)} runs)" if budget.per_seed else ""
    left = f"; {budget.left_out} left out because they stopped earlier" if budget.left_out else ""
    text = f"**Strength of evidence:** {len(budget.trials)} trials{runs} at {budget.label}{left}." + section
    if len(found.comparison):
        shown = sum(stated(r) for r in found.comparison.itertuples())
        text += f" {shown} of {len(found.comparison)} arm-against-baseline comparisons show an effect."
    sizes = [int(n) for ab in found.ablations for n in ab.cells["n"]]
    if sizes:
        text += f" Ablation cells hold {min(sizes)}–{max(sizes)} {budget.unit_word}"
        thin = sum(n < MIN_RUNS for n in sizes)
        text += f"; {thin} cell(s) have fewer than {MIN_RUNS} (see the warnings)." if thin else "."
    if len(budget.trials) < 10:
        text += " With so few trials, treat every effect as a hypothesis for the next study, not a result."
    return text
