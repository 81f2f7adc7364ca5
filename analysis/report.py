"""report.md: every table and figure on one page, opening with a summary written from the numbers.

The summary compares trials at one epoch (the budget, ``budget.py``) and states an effect of a
hyperparameter only where the comparison of its arm against the baseline (``compare.py``) finds
one: significant after Holm's correction (the tables' marker) and with an interval that excludes
0; elsewhere it says "no evidence at this budget" with the n it rests on. Each sentence carries
its n and interval, so that a sentence copied into a thesis carries its own caveat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from geoloc.common.metrics import MetricRegistry
from geoloc.study.folders import Status
from geoloc.tasks.geoclip.metrics import RESOLUTION

from .budget import WHOLE, Budget, epoch_label
from .importance import Importance
from .load import Study
from .tables import MIN_RUNS, START_LABEL, Ablation, before_training, fmt_value, markdown, slug, to_markdown

if TYPE_CHECKING:  # pareto.py loads moocore, which `import analysis` need not
    from .pareto import Front

# How the summary names each status, in the order it lists them.
STATUS_WORDS = {
    Status.FINISHED: "finished",
    Status.STOPPED: "stopped early by ASHA",
    Status.ERRORED: "errored",
    Status.RUNNING: "running",
}


def pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.2f} %"


def signed(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:+.2f}"


def interval(row) -> str:
    return "–" if pd.isna(row["ci_low"]) else f"[{signed(row['ci_low'])}, {signed(row['ci_high'])}]"


def is_seed(param: str) -> bool:
    """Seeds are replicates: varied on purpose, never an effect worth a sentence."""
    return param.split(".")[-1].endswith("seed")


# --- summary ---------------------------------------------------------------------------------


@dataclass
class Findings:
    """Everything the summary and the page are written from."""

    ablations: list[Ablation]
    corr: pd.DataFrame  # tradeoff.loss_vs_accuracy
    quoted_epoch: object  # the correlations' epoch the summary quotes (tradeoff.quoted_epoch)
    div_summary: pd.DataFrame
    fronts: pd.DataFrame
    ceiling: pd.DataFrame
    importance: Importance
    comparison: pd.DataFrame  # arms.comparison: param, then compare.COLUMNS
    crossovers: pd.DataFrame  # arms.crossovers
    arm_notes: list[str]  # how baselines were chosen, which parameters are compared unpaired
    objective: Front | None = None  # a Pareto study's front found (pareto.front); None for a score study


def summary(study: Study, budget: Budget, found: Findings) -> list[str]:
    counts = study.trials["status"].value_counts()
    parts = [f"{counts.get(s.value, 0)} {word}" for s, word in STATUS_WORDS.items() if counts.get(s.value, 0)]
    lines = [f"**Trials:** {len(study.trials)} in all: {', '.join(parts)}."]
    used = budget.trials
    if budget.epoch is None:
        lines.append("No trial has finished or been stopped yet: nothing to compare. Run the analysis again later.")
        return lines
    lines.append(_budget_line(budget))
    if found.objective is not None:
        lines.append(_front_line(found.objective))
    fine = study.accuracies[0] if study.accuracies else None
    coarse = study.accuracies[1:]

    if "score" in study.metrics and used["score"].notna().any():
        best = used.loc[used["score"].astype(float).idxmax()]
        accs = ", ".join(f"{a} {pct(best[a])}" for a in study.accuracies)
        params = ", ".join(f"{p} = {fmt_value(best[p])}" for p in study.varied) or "no varied hyperparameters"
        lines.append(
            f"**Best trial by score at {budget.label}:** #{best['number']} (`{best['trial_id']}`, "
            f"{best['status_detail']}): score {pct(best['score'])}; {accs}; {params}."
        )
    shown = study.accuracies + (["score"] if "score" in study.metrics else [])
    start = before_training(study, shown)
    if start is not None:
        values = ", ".join(f"{m} {pct(start[f'{m}_mean'])}" for m in shown)
        lines.append(
            f"**{START_LABEL[0].upper()}{START_LABEL[1:]}:** {values} (mean over the {start['n']} finished or "
            f"stopped {budget.unit_word} evaluated before the first epoch; with a warm start, the published "
            "model; the first row of each ablation table)."
        )

    if fine:
        lines.append(_effects_line(study, budget, found, fine))
    if RESOLUTION in set(found.comparison["metric"]):  # the mechanism, set beside the finest accuracy
        lines.append(_effects_line(study, budget, found, RESOLUTION))
    if fine and coarse:
        lines.append(_tradeoff_line(budget, found.comparison, fine, coarse))
        for loss in ("train_loss", "val_loss"):
            sentence = _correlation_sentence(found.corr, found.quoted_epoch, budget, loss, fine, coarse[-1])
            if sentence:
                lines.append(sentence)
    if len(found.crossovers):
        lines.append(_crossover_line(study, budget, found.crossovers))

    for loss in ("train_loss", "val_loss"):
        sentence = _divergence_sentence(found.div_summary, loss, fine)
        if sentence:
            lines.append(sentence)

    for name, group in found.fronts.groupby("front", sort=False):
        members = ", ".join(f"#{n}" for n in group["number"])
        lines.append(f"**Pareto front {name} at {budget.label}:** {len(group)} of {len(used)} trials ({members}).")

    if fine and len(found.ceiling):
        row = found.ceiling[found.ceiling["metric"] == fine].iloc[0]
        if not pd.isna(row["ceiling"]):
            share = row["best_share_of_ceiling"]
            note = (
                " - close to the ceiling: a flat accuracy here is the gallery's limit, not the model's"
                if share >= 0.9
                else " - well below the ceiling: the model, not the gallery, limits it"
            )
            lines.append(
                f"**Gallery ceiling:** {fine} can reach at most {pct(row['ceiling'])}; the best trial reaches "
                f"{pct(row['best_acc'])} at {budget.label} ({100 * share:.0f} % of the ceiling){note}."
            )

    lines.append(_evidence(budget, found))
    return lines


def _front_line(front: Front) -> str:
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


def _difference(value: float, fraction: bool, unit: str = "") -> str:
    return "–" if pd.isna(value) else (f"{100 * value:+.2f} pp" if fraction else f"{value:+.1f}{unit}")


def _effect_clause(row, registry: MetricRegistry) -> str:
    metric = registry.get(row.metric)
    fraction = registry.fraction(row.metric)
    unit = " km" if metric is not None and metric.kind == "distance" else ""
    n = f"n = {row.n_pairs} pairs" if row.paired else f"unpaired, n = {row.n_arm} vs {row.n_baseline}"
    return (
        f"{row.arm} vs {row.baseline}: {_difference(row.diff, fraction, unit)} "
        f"[{_difference(row.ci_low, fraction, unit)}, {_difference(row.ci_high, fraction, unit)}] "
        f"({row.t_test} p = {row.p_t_holm:.3g} after Holm, {n})"
    )


def _units(rows: pd.DataFrame) -> int:
    """The units one parameter's comparisons rest on: every arm's, the baseline's once."""
    return int(rows["n_arm"].sum() + rows["n_baseline"].iloc[0]) if len(rows) else 0


def _effects_line(study: Study, budget: Budget, found: Findings, fine: str) -> str:
    rows = found.comparison[found.comparison["metric"] == fine]
    parts = []
    for param, group in rows.groupby("param", sort=False):
        clauses = [_effect_clause(r, study.registry) for r in group.itertuples() if stated(r)]
        if clauses:
            parts.append(f"{param}: " + "; ".join(clauses))
        else:
            parts.append(f"{param}: no evidence at this budget (n = {_units(group)} {budget.unit_word})")
    text = " | ".join(parts) if parts else "no varied hyperparameter (seeds aside) to compare"
    top = found.importance.table[found.importance.table["target"] == fine].head(3)
    ranked = ", ".join(f"{r.param} {r.importance:.2f}" for r in top.itertuples())
    ranking = f" {found.importance.evaluator} importance for {fine}: {ranked}." if ranked else ""
    return (
        f"**Effects on {fine} at {budget.label}** (arm − baseline, 95 % interval; stated only where significant "
        f"after Holm's correction with an interval excluding 0; every arm in the paired comparisons below): "
        f"{text}.{ranking}"
    )


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
                    f"({_difference(f.diff, True)}) but {c.effect} for {metric} ({_difference(c.diff, True)})"
                )
                break
    text = (
        "; ".join(trades)
        if trades
        else f"no evidence at this budget: no arm is significantly better on {fine} and worse on a coarser "
        f"accuracy, or the reverse"
    )
    return f"**What trades {fine} against coarse accuracy at {budget.label}:** {text}."


def _crossover_line(study: Study, budget: Budget, crossovers: pd.DataFrame) -> str:
    parts = []
    for param, group in crossovers.groupby("param", sort=False):
        arms = [
            f"{r.arm}: none ({r.note})" if pd.isna(r.crossover_km) else f"{r.arm}: {r.note}" for r in group.itertuples()
        ]
        parts.append(f"{param} against {group['baseline'].iloc[0]}: " + ", ".join(arms))
    return (
        f"**Crossover distance** (mean error curves on {study.primary_set} at {budget.label}; below it the arm is "
        f"worse than the baseline, above it better): " + "; ".join(parts) + "."
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
        evidence = "interval excludes 0" if r["excludes_zero"] else "interval crosses 0: inconclusive"
        return (
            f"{way} {metric} (Spearman ρ = {signed(r['rho'])}, {r['strength']}, 95 % CI {interval(r)}, "
            f"n = {r['n']}; {evidence})"
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


def _evidence(budget: Budget, found: Findings) -> str:
    corr = found.corr[found.corr["epoch"] == found.quoted_epoch] if len(found.corr) else found.corr
    defined = corr.dropna(subset=["ci_low"]) if len(corr) else corr
    excl = int(defined["excludes_zero"].sum()) if len(defined) else 0
    runs = f" ({len(budget.units)} runs)" if budget.per_seed else ""
    left = f"; {budget.left_out} left out because they stopped earlier" if budget.left_out else ""
    text = f"**Strength of evidence:** {len(budget.trials)} trials{runs} at {budget.label}{left}."
    if len(defined):
        text += (
            f" {excl} of {len(defined)} loss–accuracy correlations at {epoch_label(found.quoted_epoch)} have a "
            f"95 % interval that excludes 0"
        )
        text += f"; the other {len(defined) - excl} are inconclusive." if excl < len(defined) else "."
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


# --- the page --------------------------------------------------------------------------------

Section = tuple[str, pd.DataFrame]  # (caption, display table)


def write_report(
    path: Path,
    study: Study,
    budget: Budget,
    summary_lines: list[str],
    warnings: list[str],
    found: Findings,
    comparisons: dict[str, Section],
    sections: dict[str, Section],
    plots: dict[str, Path],
    objective: Section | None = None,
) -> Path:
    """comparisons: {title: section} of the paired comparisons and crossovers; sections: {title:
    section} of the loss-versus-accuracy part, each in order; objective: a Pareto study's Pareto set."""
    out = [f"# Study analysis: {study.name}", "", f"Study directory: `{study.path}`", "", "## Summary", ""]
    out += [f"- {line}" for line in summary_lines] + [""]
    if warnings:
        out += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]

    out += [
        "## Trials",
        "",
        "Every trial and its status; all columns in `trials.csv`, every epoch in `epochs.csv`.",
        "",
    ]
    out += [markdown(_trial_overview(study, budget)), ""]
    fixed = [p for p in study.params if p not in study.varied]
    if fixed:
        values = study.trials.iloc[0]
        out += ["Fixed hyperparameters: " + ", ".join(f"{p} = {fmt_value(values[p])}" for p in fixed) + ".", ""]

    if objective is not None:
        caption, table = objective
        out += ["## Pareto objective", "", f"*{caption}*", "", markdown(table), ""]
        for name, alt in (("pareto_front", "Pareto front"), ("hypervolume", "hypervolume against epochs spent")):
            if name in plots:
                out += [_image(plots[name], path.parent, alt), ""]

    out += ["## Ablation tables", ""]
    if not found.ablations:
        why = (
            "the study varied no hyperparameter." if budget.epoch is not None else "no finished or stopped trials yet."
        )
        out += [f"No ablation tables: {why}", ""]
    for ab in found.ablations:
        out += [f"### By {ab.param}", "", to_markdown(ab), ""]
        name = f"metrics_vs_{slug(ab.param)}"
        if name in plots:
            out += [_image(plots[name], path.parent, f"metrics against {ab.param}"), ""]

    if comparisons:
        out += ["## Arms against the baseline", ""]
        out += [f"- {note}" for note in found.arm_notes] + ([""] if found.arm_notes else [])
        for title, (caption, table) in comparisons.items():
            out += [f"### {title}", "", f"*{caption}*", "", markdown(table), ""]
        for name, plot in plots.items():
            if name.startswith("error_curve_"):
                out += [_image(plot, path.parent, name.replace("_", " ")), ""]

    out += ["## Loss versus 1 km accuracy", ""]
    for title, (caption, table) in sections.items():
        out += [f"### {title}", "", f"*{caption}*", "", markdown(table), ""]
    for name, alt in (
        ("loss_vs_acc", "loss against acc_1km"),
        ("accuracy_vs_threshold", "accuracy against threshold"),
        ("learning_curves", "learning curves"),
    ):
        if name in plots:
            out += [_image(plots[name], path.parent, alt), ""]

    importance = found.importance
    out += ["## Parameter importance", ""]
    if len(importance.table):
        table = importance.table.assign(importance=importance.table["importance"].map(lambda v: f"{v:.3f}"))
        out += [f"*{importance.evaluator} importance over the {budget.describe()}.*", "", markdown(table), ""]
    out += [f"- {note}" for note in importance.notes] + ([""] if importance.notes else [])
    if "importance" in plots:
        out += [_image(plots["importance"], path.parent, "importance"), ""]
    if "parallel_coordinates" in plots:
        image = _image(plots["parallel_coordinates"], path.parent, "parallel coordinates")
        out += ["## Parallel coordinates", "", image, ""]
    path.write_text("\n".join(out), encoding="utf-8")
    return path


def _image(plot: Path, base: Path, alt: str) -> str:
    return f"![{alt}]({Path(os.path.relpath(plot, base)).as_posix()})"


def _trial_overview(study: Study, budget: Budget) -> pd.DataFrame:
    """Every trial, with its score and finest accuracy at the budget ("–" for a trial not compared)."""
    cols = {"number": "#", "trial_id": "trial", "status_detail": "status", "node": "node"}
    view = study.trials[list(cols)].rename(columns=cols).astype(str)
    for p in study.varied:
        view[p] = study.trials[p].map(fmt_value)
    compared = budget.trials.set_index("trial_id")
    for m in (["score"] if "score" in study.metrics else []) + study.accuracies[:1]:
        if study.registry.fraction(m) and budget.epoch is not None:
            values = study.trials["trial_id"].map(compared[m])
            view[f"{m} at {budget.label} (%)"] = values.map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
    return view.replace({"None": "–", "nan": "–", "<NA>": "–"}).fillna("–")  # pandas 3 keeps NaN as NaN in str
