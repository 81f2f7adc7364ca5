"""The render step of ``analyse()``: the numbers of the generic analysis and of the task's section
as a `Page`, every table's display strings, every figure drawn and report.md's text, in memory.
The write step (``pipeline.py``) then only writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from . import compare, names
from .budget import Budget
from .canvas import Chart
from .findings import Findings
from .formats import Table, fractions_display
from .load import Study
from .report import Objective, report_text
from .sections import Part
from .summary import summary
from .tables import Ablation


@dataclass
class Page:
    """Everything ``analyse()`` writes, rendered."""

    ablations: list[Ablation]
    tables: list[Table]  # every other table, in writing order
    charts: dict[str, Chart]  # every figure, by file name
    files: dict[str, pd.DataFrame]  # plain CSV files: file name -> rows
    report: str  # report.md


def render(study: Study, budget: Budget, found: Findings, part: Part | None, warnings: list[str], plots: bool) -> Page:
    """The page of ``study`` at ``budget``; ``part``: the task section's, rendered; ``warnings``: every
    warning of the analysis; ``plots``: False for tables and the report only."""
    from .plots import all_plots  # matplotlib: only once there is something to draw

    comparison = _comparison_table(study, budget, found.comparison)
    charts = all_plots(study, budget, found.importance, found.front) if plots else {}
    objective = _objective(study, found, charts)
    tables = [comparison] if len(comparison.numbers) else []
    tables += [*part.comparisons, *part.tables] if part else []
    tables += [objective.table] if objective else []
    if len(found.importance.table):
        importance = found.importance
        caption = f"{importance.evaluator} importance; {budget.describe()}."
        tables.append(
            Table(names.IMPORTANCE_TABLE, "Parameter importance", caption, importance.table, importance.table.round(4))
        )
    files = {names.TRIALS: study.trials, names.EPOCHS: study.every_epoch(), **(part.files if part else {})}
    if found.front is not None:
        files[names.HYPERVOLUME_CSV] = found.front.history
    charts.update({chart.name: chart for chart in (part.comparison_charts + part.charts if part else [])})
    lines = summary(study, budget, found, part.summary if part else (), part.evidence if part else "")
    text = report_text(study, budget, lines, warnings, found, [comparison], charts, part, objective)
    return Page(found.ablations, tables, charts, files, text)


def _comparison_table(study: Study, budget: Budget, comparison: pd.DataFrame) -> Table:
    fractions = [m for m in study.metrics if study.registry.fraction(m)]
    display = (
        compare.render(comparison, fractions)
        .assign(param=comparison["param"].to_numpy())
        .pipe(lambda view: view[["param", *[c for c in view.columns if c != "param"]]])
    )
    head = (
        f"Each arm against its parameter's baseline at {budget.label}: units are {budget.unit_word} "
        f"({budget.describe()}), paired by seed and every other varied setting."
    )
    parts = [
        compare.caption(part) if comparison["param"].nunique() == 1 else f"{param}: {compare.caption(part)}"
        for param, part in comparison.groupby("param", sort=False)
    ]
    return Table(names.COMPARISON, "Paired comparisons", " ".join([head, *parts]), comparison, display)


def _objective(study: Study, found: Findings, charts: dict[str, Chart]) -> Objective | None:
    """A Pareto study's set of the trials that ran the full budget, as a table, and its figures."""
    front = found.front
    if front is None:
        return None
    members = front.pareto_set()
    caption = (
        f"The Pareto set of the study's objective ({front.objective.describe()}): the trials no other trial "
        f"beats on every objective, among the {len(front.trials)} trials that ran the full {front.epochs} "
        "epochs, with their values there (accuracies and score in %); trials stopped earlier are not compared."
    )
    display = fractions_display(members, study.registry, study.varied)
    table = Table(names.PARETO_SET, "Pareto objective", caption, members, display)
    return Objective(table, [charts[n] for n in (names.PARETO_FRONT, names.HYPERVOLUME) if n in charts])
