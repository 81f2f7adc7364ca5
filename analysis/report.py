"""report.md: every table and figure on one page, opening with the summary (``summary.py``).

The page, in order: the summary and the warnings; every trial; a Pareto study's objective; the
ablation tables, each with its parameter's figure; the arms against their baselines (the paired
comparisons, then what the task's section adds to them); the task section's own block (or, for a
task without one, "Learning curves"), followed by the generic curves (accuracy against threshold,
learning curves); importance; parallel coordinates. Figures are linked, never embedded.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from geoloc.study.manifest import MANIFEST, describe

from . import names, roles
from .budget import Budget
from .canvas import Chart
from .findings import Findings
from .formats import Table, markdown, to_markdown
from .load import Study
from .sections import Part
from .tables import fmt_value

CURVES_HEADING = "Learning curves"  # the block of the generic curves for a task without a section
CURVES = (names.ACCURACY_VS_THRESHOLD, names.LEARNING_CURVES)  # the generic curves, in page order


@dataclass
class Objective:
    """A Pareto study's block: its Pareto set and its figures."""

    table: Table
    charts: list[Chart]


def report_text(
    study: Study,
    budget: Budget,
    summary_lines: list[str],
    warnings: list[str],
    found: Findings,
    comparisons: list[Table],
    charts: dict[str, Chart],
    part: Part | None,
    objective: Objective | None,
) -> str:
    """report.md's text. comparisons: the paired comparisons (when there are any); charts: the generic
    figures by name; part: the task section's contribution; objective: a Pareto study's block."""
    made = describe(study.manifest) if study.manifest else f"no {MANIFEST} (a study made before manifests)"
    out = [f"# Study analysis: {study.name}", "", f"Study directory: `{study.path}`", "", f"Made by: {made}."]
    out += ["", "## Summary", ""]
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
        out += ["## Pareto objective", "", f"*{objective.table.caption}*", "", markdown(objective.table.display), ""]
        out += _images(objective.charts)

    out += ["## Ablation tables", ""]
    if not found.ablations:
        why = (
            "the study varied no hyperparameter." if budget.epoch is not None else "no finished or stopped trials yet."
        )
        out += [f"No ablation tables: {why}", ""]
    for ab in found.ablations:
        out += [f"### By {ab.param}", "", to_markdown(ab), ""]
        out += _images([charts[name]] if (name := names.metrics_vs(ab.param)) in charts else [])

    comparisons = [t for t in [*comparisons, *(part.comparisons if part else [])] if len(t.numbers)]
    if comparisons:
        out += ["## Arms against the baseline", ""]
        out += [f"- {note}" for note in found.arm_notes] + ([""] if found.arm_notes else [])
        out += _tables(comparisons)
        out += _images(part.comparison_charts if part else [])

    curves = [charts[name] for name in CURVES if name in charts]
    if part is not None:
        out += [f"## {part.heading}", ""] + _tables(part.tables) + _images([*part.charts, *curves])
    elif curves:
        out += [f"## {CURVES_HEADING}", ""] + _images(curves)

    importance = found.importance
    out += ["## Parameter importance", ""]
    if len(importance.table):
        table = importance.table.assign(importance=importance.table["importance"].map(lambda v: f"{v:.3f}"))
        out += [f"*{importance.evaluator} importance over the {budget.describe()}.*", "", markdown(table), ""]
    out += [f"- {note}" for note in importance.notes] + ([""] if importance.notes else [])
    out += _images([charts[names.IMPORTANCE]] if names.IMPORTANCE in charts else [])
    if names.PARALLEL_COORDINATES in charts:
        out += ["## Parallel coordinates", ""] + _images([charts[names.PARALLEL_COORDINATES]])
    return "\n".join(out)


def _tables(tables: list[Table]) -> list[str]:
    out = []
    for table in tables:
        out += [f"### {table.title}", "", f"*{table.caption}*", "", markdown(table.display), ""]
    return out


def _images(charts: list[Chart]) -> list[str]:
    """Links to figures written beside report.md."""
    out = []
    for chart in charts:
        out += [f"![{chart.alt}]({chart.name}.png)", ""]
    return out


def _trial_overview(study: Study, budget: Budget) -> pd.DataFrame:
    """Every trial, with its score and headline metric at the budget ("–" for a trial not compared)."""
    cols = {"number": "#", "trial_id": "trial", "status_detail": "status", "node": "node"}
    view = study.trials[list(cols)].rename(columns=cols).astype(str)
    for p in study.varied:
        view[p] = study.trials[p].map(fmt_value)
    compared = budget.trials.set_index("trial_id")
    head = roles.headline(study)
    for m in dict.fromkeys(["score", *([head] if head else [])]):
        if m in study.metrics and study.registry.fraction(m) and budget.epoch is not None:
            values = study.trials["trial_id"].map(compared[m])
            view[f"{m} at {budget.label} (%)"] = values.map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
    return view.replace({"None": "–", "nan": "–", "<NA>": "–"}).fillna("–")  # pandas 3 keeps NaN as NaN in str
