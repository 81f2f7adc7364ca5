"""``analyse()``: a study directory in, every table, plot and the report out, in three steps.

1. compute: read the study, choose the budget, and compute the generic numbers (``findings.py``)
   and those of the task's section (``analysis/sections/``, chosen by the task seam's
   ``analysis``); a user's mistake is an AnalysisError here, before anything is written;
2. render: display tables, figures and report.md's text, in memory (``render.py``);
3. write: the files, into the output folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from geoloc.study.folders import Status, StudyFolder

from . import budget as budgets
from . import names
from .canvas import overlaps
from .findings import Findings, compute
from .formats import write_ablation, write_table
from .load import AnalysisError, Study, read_study
from .render import Page, render
from .sections import section_of

FORMATS = ("md", "tex", "csv")


def analyse(
    study_dir,
    out_dir=None,
    by=None,
    formats=FORMATS,
    *,
    epoch=None,
    baseline=None,
    bins: int = 4,
    plots: bool = True,
    echo_warnings: bool = True,
    min_country_images: int = 30,
) -> dict:
    """Analyse STUDY_DIR into OUT_DIR (default STUDY_DIR/analysis); returns paths and headline numbers.

    by: hyperparameters to tabulate (default: each one the study varied); formats: any of md, tex,
    csv for the tables; epoch: the epoch trials are compared at, a number, "final" or "best"
    (default: the rule of ``budget.py``); baseline: the value of the arm every other arm is
    compared with, for each parameter that has it (default: the base configuration's value);
    min_country_images: the fewest images a country needs to get rows of its own in a task section's
    by-region table (GeoCLIP's; --min-country-images).
    Raises AnalysisError for a user's mistake (no trials, unknown parameter, bad option), before
    anything is written.
    """
    formats = _check_options(formats, bins)
    if isinstance(min_country_images, bool) or not isinstance(min_country_images, int) or min_country_images < 1:
        raise AnalysisError(f"--min-country-images: expected an integer >= 1, got {min_country_images!r}")
    epoch = budgets.parse_epoch(epoch)
    study = read_study(study_dir)
    by = _check_by(study, by)
    budget = budgets.at(study, budgets.choose(study, epoch), asked=epoch is not None)

    found = compute(study, budget, by, bins, baseline)
    section = section_of(study)
    numbers = section.compute(study, budget, found, bins, min_country_images=min_country_images) if section else None

    warnings = [w if w.startswith("warning:") else f"warning: {w}" for w in study.warnings]
    warnings += [budget.warning()] if budget.warning() else []
    warnings += found.warnings
    part = section.render(study, budget, numbers, found, plots) if section else None
    page = render(study, budget, found, part, warnings, plots)

    out = Path(out_dir) if out_dir is not None else study.path / StudyFolder.ANALYSIS
    files, table_paths, plot_paths = _write(page, out, formats)
    # Every figure checked as drawn: a label over its tick labels is a figure the reader cannot read.
    for name, chart in page.charts.items():
        warnings += [f"warning: {name}.png: {pair} overlap" for pair in overlaps(chart.figure)]
    if echo_warnings:
        for w in warnings:
            print(w, file=sys.stderr)
    result = _result(study, budget, out, files, table_paths, plot_paths, found, warnings)
    return {**result, **(part.result if part else {})}


def _write(page: Page, out: Path, formats) -> tuple[dict[str, Path], dict[str, dict[str, Path]], dict[str, Path]]:
    """Every file of the page: (plain files, tables by name and format, figures by name)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"--out {out}: cannot create the output directory ({exc.strerror})") from None
    files = {}
    for name, rows in page.files.items():
        files[name] = out / name
        rows.to_csv(files[name], index=False)
    table_paths = {names.ablation(ab.param): write_ablation(ab, out, formats) for ab in page.ablations}
    table_paths.update({table.name: write_table(table, out, formats) for table in page.tables})
    plot_paths = {name: chart.save(out) for name, chart in page.charts.items()}
    files[names.REPORT] = out / names.REPORT
    files[names.REPORT].write_text(page.report, encoding="utf-8")
    return files, table_paths, plot_paths


def _check_options(formats, bins) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    formats = tuple(f.strip().lower() for f in formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise AnalysisError(
            f"--format: expected a comma-separated subset of {','.join(FORMATS)}, got {','.join(formats) or 'nothing'}"
        )
    if not isinstance(bins, int) or bins < 2:
        raise AnalysisError(f"--bins: expected an integer >= 2, got {bins!r}")
    return formats


def _check_by(study: Study, by) -> list[str]:
    if not by:
        return list(study.varied)
    by = [by] if isinstance(by, str) else list(by)
    unknown = [p for p in by if p not in study.params]
    if unknown:
        have = ", ".join(study.params) or "none"
        raise AnalysisError(f"--by {unknown[0]}: no such hyperparameter in {study.path} (its trials have: {have})")
    return list(dict.fromkeys(by))


def _native(value):
    """numpy scalars -> Python ones, so the result serialises with json as the launcher may want."""
    return value.item() if hasattr(value, "item") else value


def _objective(front) -> dict:
    """The study's objective in the result: its type; for a Pareto study its front and hypervolume."""
    if front is None:
        return {"type": "score"}
    return {
        "type": "pareto",
        "metrics": list(front.objective.metrics),
        "epochs": front.epochs,
        "front": list(front.pareto_set()["trial_id"]),
        "hypervolume": front.hypervolume,
        "reference": None if front.reference is None else [float(v) for v in front.reference],
        "epochs_spent": front.epochs_spent,
    }


def _result(study, budget, out, files, table_paths, plot_paths, found: Findings, warnings) -> dict:
    counts = study.trials["status"].value_counts()
    used = budget.trials
    best = None
    if "score" in study.metrics and used["score"].notna().any():
        row = used.loc[used["score"].astype(float).idxmax()]
        best = {
            "number": None if pd.isna(row["number"]) else int(row["number"]),
            "trial_id": row["trial_id"],
            "score": float(row["score"]),
            "params": {p: _native(row[p]) for p in study.params},
        }
    every = [str(p) for p in files.values()] + [str(p) for d in table_paths.values() for p in d.values()]
    every += [str(p) for p in plot_paths.values()]
    importance = found.importance
    return {
        "out_dir": str(out),
        "report": str(files[names.REPORT]),
        "trials_csv": str(files[names.TRIALS]),
        "epochs_csv": str(files[names.EPOCHS]),
        "tables": {name: {fmt: str(p) for fmt, p in d.items()} for name, d in table_paths.items()},
        "plots": {name: str(p) for name, p in plot_paths.items()},
        "files": sorted(every),
        "counts": {
            **{s.value: int(counts.get(s.value, 0)) for s in Status},
            "total": len(study.trials),
            "counted": budget.counted,
            "compared": len(budget.trials),
        },
        "epoch": budget.epoch,
        "varied": list(study.varied),
        "best": best,
        "comparison": found.comparison.to_dict("records"),
        "importance": {
            t: dict(zip(g["param"], g["importance"], strict=True))
            for t, g in importance.table.groupby("target", sort=False)
        },
        "importance_evaluator": importance.evaluator,
        "objective": _objective(found.front),
        "notes": list(importance.notes) + list(found.arm_notes),
        "warnings": list(warnings),
    }
