"""Ablation tables: one row per value of a hyperparameter, mean ± std (n) of each metric.

One set of numbers, three renderings: CSV keeps raw fractions for machines; Markdown and LaTeX
show accuracies and score in percent (how GeoCLIP results are published) with the best cell of
each column in bold, so a table can go straight into a thesis.

When the runs evaluated before training (``eval.at_start``), each table opens with that row,
``before training (epoch 0)``: the mean over the finished or stopped runs that have one (with a
warm start, the published model on this validation set), the point every arm started from. It is
no arm: it takes no part in the best cell, the baseline or the significance marks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geoloc.parts.config import SAMPLER_DISTANCES
from geoloc.tasks.geoclip.metrics import RESOLUTION

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


def slug(name: str) -> str:
    """A parameter name as a file-name part: train.noise.batch_sigma -> train_noise_batch_sigma."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def fmt_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(unset)"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def km_text(km: float) -> str:
    """A distance as people write it: 3 significant digits, no exponent (4320 km, 0.0316 km)."""
    return f"{float(f'{km:.3g}'):g} km"


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


def table_metrics(study: Study) -> list[str]:
    """The columns of every ablation table: accuracies finest first, the encoder's resolution beside
    the finest one (when the trials report it), then median_km and score, then what the batch
    sampler did to the negatives (when the trials report it)."""
    accs = study.accuracies
    resolution = [RESOLUTION] if RESOLUTION in study.metrics else []
    tail = [m for m in ("median_km", "score", *SAMPLER_DISTANCES) if m in study.metrics]
    return accs[:1] + resolution + accs[1:] + tail


def arms(study: Study, budget: Budget, param: str, bins: int = 4) -> tuple[pd.Series, bool]:
    """Each compared trial's level of ``param`` (an ordered categorical indexed by trial_id), and
    whether it was binned: levels and bins are drawn over trials, so a trial's seeds share its row."""
    trials = budget.trials.set_index("trial_id")
    return levels(trials[param], study.param_kinds.get(param, "categorical"), bins)


def ablation(study: Study, budget: Budget, param: str, bins: int = 4) -> Ablation:
    """Mean ± std of each metric per level of ``param``, over the budget's units (runs at its epoch)."""
    units = budget.units
    columns = table_metrics(study)
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
    what = "runs (trial × seed)" if budget.per_seed else "trials"
    kms = [m for m in ("median_km", RESOLUTION, *SAMPLER_DISTANCES) if m in columns]
    distances = ", ".join(kms[:-1]) + " and " + kms[-1] if len(kms) > 1 else (kms or ["distances"])[0]
    caption = (
        f"Ablation by {param}{' (quantile bins)' if binned else ''}: mean ± std over {what}, "
        f"{budget.describe()}. Accuracies and score in %, {distances} in km; "
        f"n = {word} per row; best value per column in bold."
    )
    thin = [f"{r.value} (n={r.n})" for r in cells.itertuples() if r.n < MIN_RUNS]
    warnings = [f"warning: ablation by {param}: fewer than {MIN_RUNS} {word} in {', '.join(thin)}"] if thin else []
    percent = [m for m in columns if study.registry.fraction(m)]
    start = before_training(study, columns)
    if start is not None:
        caption += (
            f" First row: {START_LABEL}, the evaluation before the first epoch (eval.at_start; with a warm start, "
            f"the published model), over the {start['n']} finished or stopped {word} that have one; it is not an "
            "arm and takes no part in the best values or the comparisons."
        )
        start = pd.DataFrame([start]).reindex(columns=cells.columns, fill_value=False)
    return Ablation(param, binned, columns, cells, percent, caption, warnings, start)


def before_training(study: Study, columns: list[str]) -> dict | None:
    """The row before training: value, n, <m>_mean/_std/_n over `budget.start_units`; None without one."""
    units = start_units(study)
    return _summary(START_LABEL, units, columns) if len(units) else None


def _summary(label: str, members: pd.DataFrame, columns: list[str]) -> dict:
    """One row of a table: mean, std and n of each metric over ``members`` (NaN left out)."""
    row = {"value": label, "n": len(members)}
    for m in columns:
        # A column the rows before training lack (an older run's log) is a cell with n = 0, not an error.
        values = pd.to_numeric(members[m], errors="coerce").dropna() if m in members else pd.Series(dtype=float)
        row[f"{m}_mean"] = values.mean() if len(values) else math.nan
        row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
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


# --- rendering -------------------------------------------------------------------------------


def cell_text(mean: float, std: float, fraction: bool) -> str:
    """Mean ± std: a fraction (accuracies, score) in % with 2 decimals, anything else with 1."""
    if pd.isna(mean):
        return "–"
    scale, digits = (100.0, 2) if fraction else (1.0, 1)
    text = f"{mean * scale:.{digits}f}"
    if not pd.isna(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def _display(ab: Ablation, bold, escape) -> pd.DataFrame:
    rows = ab.rows()
    values = [f"{v} (baseline)" if base else str(v) for v, base in zip(rows["value"], rows["baseline"], strict=True)]
    out = pd.DataFrame({escape(ab.param): [escape(v) for v in values], "n": rows["n"].astype(str)})
    for m in ab.columns:
        texts = []
        for _, r in rows.iterrows():
            text = cell_text(r[f"{m}_mean"], r[f"{m}_std"], m in ab.percent)
            if r[f"{m}_n"] != r["n"]:
                text += f" (n={r[f'{m}_n']})"
            text = bold(escape(text)) if r[f"{m}_best"] else escape(text)
            texts.append(text + escape(SIGNIFICANT) if r[f"{m}_sig"] else text)
        out[escape(m)] = texts
    return out


def to_markdown(ab: Ablation) -> str:
    table = _display(ab, bold=lambda s: f"**{s}**", escape=lambda s: s)
    lines = [f"*{ab.caption}*", "", markdown(table)]
    lines += [""] + ab.warnings if ab.warnings else []
    return "\n".join(lines) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "≥": r"$\geq$",
    "ρ": r"$\rho$",
    SIGNIFICANT: r"$^{\dagger}$",
    "×": r"$\times$",
    "≤": r"$\leq$",
    "–": "--",
    "−": "$-$",
    # A cell starting with "[" right after \\ or \midrule would be read as their optional argument.
    "[": "{[}",
    "]": "{]}",
}


def latex_escape(text: str) -> str:
    # One pass, so the backslashes it adds are never escaped again.
    return re.sub(r"[\\&%$#_{}~^±≥≤–−ρ†×\[\]]", lambda m: _LATEX[m.group()], text)


def to_latex(ab: Ablation) -> str:
    return dataframe_to_latex(
        _display(ab, bold=lambda s: rf"\textbf{{{s}}}", escape=latex_escape),
        caption=ab.caption,
        label=f"tab:ablation-{slug(ab.param).replace('_', '-')}",
        comments=ab.warnings,
    )


def dataframe_to_latex(table: pd.DataFrame, caption: str, label: str, comments=()) -> str:
    """A booktabs table (pandas Styler, hrules=True); cells must already be LaTeX-safe."""
    styler = table.style.hide(axis="index")
    body = styler.to_latex(
        hrules=True,
        column_format="l" + "r" * (table.shape[1] - 1),
        caption=latex_escape(caption),
        label=label,
        position_float="centering",
    )
    head = "".join(f"% {c}\n" for c in comments)
    return head + body


def to_csv(ab: Ablation) -> pd.DataFrame:
    rows = ab.rows()
    return rows.assign(param=ab.param)[["param"] + list(rows.columns)]


def write(ab: Ablation, out_dir: Path, formats) -> dict[str, Path]:
    """Write the table in each format; returns {format: path}."""
    base = out_dir / f"ablation_{slug(ab.param)}"
    paths = {}
    if "csv" in formats:
        paths["csv"] = base.with_suffix(".csv")
        to_csv(ab).to_csv(paths["csv"], index=False)
    if "md" in formats:
        paths["md"] = base.with_suffix(".md")
        paths["md"].write_text(to_markdown(ab), encoding="utf-8")
    if "tex" in formats:
        paths["tex"] = base.with_suffix(".tex")
        paths["tex"].write_text(to_latex(ab), encoding="utf-8")
    return paths


def write_table(
    numeric: pd.DataFrame, display: pd.DataFrame, out_dir: Path, name: str, caption: str, formats
) -> dict[str, Path]:
    """Any other table: CSV from the numbers, Markdown and LaTeX from the display strings."""
    paths = {}
    if "csv" in formats:
        paths["csv"] = out_dir / f"{name}.csv"
        numeric.to_csv(paths["csv"], index=False)
    if "md" in formats:
        paths["md"] = out_dir / f"{name}.md"
        paths["md"].write_text(f"*{caption}*\n\n{markdown(display)}\n", encoding="utf-8")
    if "tex" in formats:
        paths["tex"] = out_dir / f"{name}.tex"
        escaped = display.rename(columns=latex_escape).map(lambda v: latex_escape(str(v)))
        paths["tex"].write_text(dataframe_to_latex(escaped, caption, f"tab:{name.replace('_', '-')}"), encoding="utf-8")
    return paths


def markdown(display: pd.DataFrame) -> str:
    if not len(display):
        return "(no rows)"
    return display.to_markdown(index=False, disable_numparse=True)
