"""Ablation tables: one row per value of a hyperparameter, mean ± std (n) of each metric.

The numbers only; ``formats.py`` renders them (CSV keeps raw fractions for machines; Markdown and
LaTeX show accuracies and score in percent with the best cell of each column in bold, so a table
can go straight into a thesis). The columns are the registry's (``roles.table_columns``): a
diagnostic that is the same in every run at the budget is left out, and the caption says so.

When the runs evaluated before training (``eval.at_start``), each table opens with that row,
``before training (epoch 0)``: the mean over the finished or stopped runs that have one (with a
warm start, the published model on this validation set), the point every arm started from. It is
no arm: it takes no part in the best cell, the baseline or the significance marks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import roles
from .budget import Budget, start_units
from .load import Study

MAX_LEVELS = 6  # a numeric parameter with more distinct values than this is binned
MIN_RUNS = 3  # cells with fewer runs get a warning: their std means little
SIGNIFICANT = "†"  # marks a cell that differs significantly from the baseline row (compare.py's rule)
START_LABEL = "before training (epoch 0)"  # the first row of a study whose runs evaluated before training


@dataclass
class Ablation:
    param: str
    binned: bool
    columns: list[str]  # metric keys, in table order
    # One row per level: value, n, <m>_mean, <m>_std, <m>_n, <m>_best, baseline (the baseline
    # row) and <m>_sig (differs significantly from it); the last two are set by `mark`.
    cells: pd.DataFrame
    percent: list[str]  # the columns that are fractions, shown in %
    caption: str
    warnings: list[str] = field(default_factory=list)
    # The row before training (module docstring), with the columns of ``cells`` (best, baseline and
    # significance all False); None when no run evaluated before training.
    start: pd.DataFrame | None = None

    def rows(self) -> pd.DataFrame:
        """The rows as written: the one before training, if any, then ``cells``."""
        return self.cells if self.start is None else pd.concat([self.start, self.cells], ignore_index=True)


def fmt_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(unset)"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def levels(values: pd.Series, kind: str, bins: int = 4) -> tuple[pd.Series, bool]:
    """Each value's level label, as an ordered categorical; True when numeric values were binned.

    Bins are quantile bins labelled by the smallest and largest member ("[1e-05, 3e-05]"), so a
    label never claims a range that no trial sampled.
    """
    if kind in ("int", "float"):
        numeric = pd.to_numeric(values, errors="coerce")
        distinct = numeric.dropna().unique()
        if len(distinct) > MAX_LEVELS:
            codes = pd.qcut(numeric, q=bins, labels=False, duplicates="drop")
            labels = pd.Series(index=values.index, dtype=object)
            order = []
            for code in sorted(codes.dropna().unique()):
                members = numeric[codes == code]
                label = f"[{members.min():g}, {members.max():g}]"
                labels[codes == code] = label
                order.append(label)
            labels[codes.isna()] = "(unset)"
            if codes.isna().any():
                order.append("(unset)")
            order = list(dict.fromkeys(order))
            return pd.Series(pd.Categorical(labels, categories=order, ordered=True), index=values.index), True
        # Values that print alike (6 significant digits) share a row rather than show two equal labels.
        labels = list(dict.fromkeys(fmt_value(v) for v in sorted(distinct)))
        mapped = [fmt_value(v) if not pd.isna(v) else "(unset)" for v in numeric]
        if numeric.isna().any():
            labels.append("(unset)")
        return pd.Series(pd.Categorical(mapped, categories=labels, ordered=True), index=values.index), False
    mapped = [fmt_value(v) for v in values]
    order = sorted(set(mapped), key=lambda s: (s == "(unset)", s))
    return pd.Series(pd.Categorical(mapped, categories=order, ordered=True), index=values.index), False


def arms(study: Study, budget: Budget, param: str, bins: int = 4) -> tuple[pd.Series, bool]:
    """Each compared trial's level of ``param`` (an ordered categorical indexed by trial_id), and
    whether it was binned: levels and bins are drawn over trials, so a trial's seeds share its row."""
    trials = budget.trials.set_index("trial_id")
    return levels(trials[param], study.param_kinds.get(param, "categorical"), bins)


def ablation(study: Study, budget: Budget, param: str, bins: int = 4) -> Ablation:
    """Mean ± std of each metric per level of ``param``, over the budget's units (runs at its epoch)."""
    units = budget.units
    columns = roles.table_columns(study, units)
    level, binned = arms(study, budget, param, bins)
    unit_level = units["trial_id"].map(level)
    rows = []
    for label in level.cat.categories:
        members = units[(unit_level == label).to_numpy()]
        if len(members):
            rows.append(_summary(label, members, columns))
    cells = pd.DataFrame(rows, columns=["value", "n"] + [f"{m}_{s}" for m in columns for s in ("mean", "std", "n")])
    for m in columns:
        means, how = cells[f"{m}_mean"], study.registry.direction(m)
        if how and means.notna().any():  # no "best" for a metric without a direction (the resolution)
            cells[f"{m}_best"] = np.isclose(means, getattr(means, how)(), rtol=0, atol=1e-12)
        else:
            cells[f"{m}_best"] = False
    cells["baseline"] = False  # `mark` sets these where the parameter is compared with a baseline
    for m in columns:
        cells[f"{m}_sig"] = False

    word = budget.unit_word
    percent = [m for m in columns if study.registry.fraction(m)]
    caption = _caption(study, budget, param, binned, columns, percent)
    thin = [f"{r.value} (n={r.n})" for r in cells.itertuples() if r.n < MIN_RUNS]
    warnings = [f"warning: ablation by {param}: fewer than {MIN_RUNS} {word} in {', '.join(thin)}"] if thin else []
    start = before_training(study, columns)
    if start is not None:
        caption += (
            f" First row: {START_LABEL}, the evaluation before the first epoch (eval.at_start; with a warm start, "
            f"the published model), over the {start['n']} finished or stopped {word} that have one; it is not an "
            "arm and takes no part in the best values or the comparisons."
        )
        start = pd.DataFrame([start]).reindex(columns=cells.columns, fill_value=False)
    return Ablation(param, binned, columns, cells, percent, caption, warnings, start)


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:-1]) + " and " + keys[-1] if len(keys) > 1 else keys[0]


def _caption(study: Study, budget: Budget, param: str, binned: bool, columns: list[str], percent: list[str]) -> str:
    """What a table shows, over which units, in which units of measure; which constant diagnostics it leaves out."""
    registry = study.registry
    what = "runs (trial × seed)" if budget.per_seed else "trials"
    distances = [m for m in columns if registry.get(m) is not None and registry.get(m).kind == "distance"]
    distances = [m for m in distances if registry.direction(m)] + [m for m in distances if not registry.direction(m)]
    scales = []
    if percent:
        accuracies = any(registry.get(m).kind == "accuracy" for m in percent)
        scales.append(f"{'Accuracies and score' if accuracies else _listing(percent)} in %")
    if distances:
        scales.append(f"{_listing(distances)} in km")
    points = [m for m in columns if registry.get(m) is not None and registry.get(m).kind == "points"]
    if points:
        scales.append(f"{_listing(points)} in points (0 to 5000, higher is better)")
    caption = (
        f"Ablation by {param}{' (quantile bins)' if binned else ''}: mean ± std over {what}, "
        f"{budget.describe()}. {', '.join(scales) + '; ' if scales else ''}"
        f"n = {budget.unit_word} per row; best value per column in bold."
    )
    left_out = roles.constant(budget.units, roles.diagnostics(study))
    if left_out:
        values = ", ".join(f"{m} = {v:g}" for m, v in left_out.items())
        caption += f" The same in every {budget.unit_word[:-1]}, so left out: {values}."
    return caption


def before_training(study: Study, columns: list[str]) -> dict | None:
    """The row before training: value, n, <m>_mean/_std/_n over `budget.start_units`; None without one."""
    units = start_units(study)
    return _summary(START_LABEL, units, columns) if len(units) else None


def _summary(label: str, members: pd.DataFrame, columns: list[str]) -> dict:
    """One row of a table: mean, std and n of each metric over ``members`` (NaN left out).

    The std of identical values is 0 exactly (floating-point rounding would make it 1e-17), so
    that the tables can say "no variance" (``formats.cell_text``)."""
    row = {"value": label, "n": len(members)}
    for m in columns:
        # A column the rows before training lack (an older run's log) is a cell with n = 0, not an error.
        values = pd.to_numeric(members[m], errors="coerce").dropna() if m in members else pd.Series(dtype=float)
        row[f"{m}_mean"] = values.mean() if len(values) else math.nan
        row[f"{m}_std"] = (0.0 if values.nunique() == 1 else values.std(ddof=1)) if len(values) > 1 else math.nan
        row[f"{m}_n"] = len(values)
    return row


def mark(ab: Ablation, comparison: pd.DataFrame, baseline: str, how: str) -> None:
    """Mark the baseline row and each cell that ``comparison`` (compare.py's table for this
    parameter: arm, metric, significant) finds significantly different from it; ``how`` says by
    which rule, for the caption."""
    ab.cells["baseline"] = ab.cells["value"] == baseline
    significant = {(str(r.arm), r.metric) for r in comparison.itertuples() if r.significant}
    for m in ab.columns:
        ab.cells[f"{m}_sig"] = [(str(v), m) in significant for v in ab.cells["value"]]
    ab.caption += f" {SIGNIFICANT} = differs from the baseline row {baseline} ({how})."
