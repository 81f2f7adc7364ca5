"""Tables as files: one set of numbers, three renderings.

CSV keeps the raw numbers (fractions as fractions) for machines; Markdown and LaTeX show display
strings (accuracies and score in percent, the best cell of an ablation column in bold), so that a
table can go straight into a thesis. An ablation table (``tables.Ablation``) is rendered here from
its cells; any other table arrives as a `Table`, its numbers and its display strings side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from geoloc.common.metrics import MetricRegistry

from . import names
from .compare import NO_VARIANCE
from .tables import SIGNIFICANT, Ablation, fmt_value


@dataclass
class Table:
    """One table: ``numbers`` become its CSV, ``display`` its Markdown and LaTeX, under ``caption``."""

    name: str  # the file name, without a suffix (``names.py``)
    title: str  # its heading in report.md
    caption: str
    numbers: pd.DataFrame
    display: pd.DataFrame


def km_text(km: float) -> str:
    """A distance as people write it: 3 significant digits, no exponent (4320 km, 0.0316 km)."""
    return f"{float(f'{km:.3g}'):g} km"


def cell_text(mean: float, std: float, fraction: bool) -> str:
    """Mean ± std: a fraction (accuracies, score) in % with 2 decimals, anything else with 1; a std of
    0 (identical values, ``tables._summary``) as "(no variance)"."""
    if pd.isna(mean):
        return "–"
    scale, digits = (100.0, 2) if fraction else (1.0, 1)
    text = f"{mean * scale:.{digits}f}"
    if std == 0:
        text += f" ({NO_VARIANCE})"
    elif not pd.isna(std):
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
    "∞": r"$\infty$",
    "–": "--",
    "−": "$-$",
    # A cell starting with "[" right after \\ or \midrule would be read as their optional argument.
    "[": "{[}",
    "]": "{]}",
}


def latex_escape(text: str) -> str:
    # One pass, so the backslashes it adds are never escaped again.
    return re.sub(r"[\\&%$#_{}~^±≥≤∞–−ρ†×\[\]]", lambda m: _LATEX[m.group()], text)


def to_latex(ab: Ablation) -> str:
    return dataframe_to_latex(
        _display(ab, bold=lambda s: rf"\textbf{{{s}}}", escape=latex_escape),
        caption=ab.caption,
        label=f"tab:{names.ablation(ab.param).replace('_', '-')}",
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


def write_ablation(ab: Ablation, out_dir: Path, formats) -> dict[str, Path]:
    """Write an ablation table in each format; returns {format: path}."""
    base = out_dir / names.ablation(ab.param)
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


def write_table(table: Table, out_dir: Path, formats) -> dict[str, Path]:
    """Any other table: CSV from the numbers, Markdown and LaTeX from the display strings."""
    paths = {}
    if "csv" in formats:
        paths["csv"] = out_dir / f"{table.name}.csv"
        table.numbers.to_csv(paths["csv"], index=False)
    if "md" in formats:
        paths["md"] = out_dir / f"{table.name}.md"
        paths["md"].write_text(f"*{table.caption}*\n\n{markdown(table.display)}\n", encoding="utf-8")
    if "tex" in formats:
        paths["tex"] = out_dir / f"{table.name}.tex"
        escaped = table.display.rename(columns=latex_escape).map(lambda v: latex_escape(str(v)))
        label = f"tab:{table.name.replace('_', '-')}"
        paths["tex"].write_text(dataframe_to_latex(escaped, table.caption, label), encoding="utf-8")
    return paths


def markdown(display: pd.DataFrame) -> str:
    if not len(display):
        return "(no rows)"
    return display.to_markdown(index=False, disable_numparse=True)


def fractions_display(frame: pd.DataFrame, registry: MetricRegistry, varied: list[str]) -> pd.DataFrame:
    """A table of trials as display strings: fractions (accuracies, score) in %, losses to 4 decimals,
    varied hyperparameters as in the ablation tables."""
    view = frame.copy()
    for col in view.columns:
        metric = registry.get(col)
        if metric and metric.fraction:
            view[col] = view[col].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
        elif metric and metric.kind == "loss":
            view[col] = view[col].map(lambda v: "–" if pd.isna(v) else f"{v:.4f}")
        elif col in varied:
            view[col] = view[col].map(fmt_value)
    return view.astype(str)
