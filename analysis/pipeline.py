"""``analyse()``: a study directory in, every table, plot and the report out."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from geoloc.folders import Status, StudyFolder

from . import tables
from .load import AnalysisError, Study, read_study
from .report import interval, signed, summary, write_report

FORMATS = ("md", "tex", "csv")


def analyse(
    study_dir,
    out_dir=None,
    by=None,
    formats=FORMATS,
    *,
    which: str = "final",
    bins: int = 4,
    plots: bool = True,
    echo_warnings: bool = True,
) -> dict:
    """Analyse STUDY_DIR into OUT_DIR (default STUDY_DIR/analysis); returns paths and headline numbers.

    by: hyperparameters to tabulate (default: each one the study varied); formats: any of md, tex,
    csv for the tables; which: "final" (last epoch, default) or "best" (best epoch) metrics.
    Raises AnalysisError for a user's mistake (no trials, unknown parameter, bad option).
    """
    formats = _check_options(formats, which, bins)
    study = read_study(study_dir)
    by = _check_by(study, by)
    # scipy and optuna take seconds to import: only once there is a study to analyse, so that a
    # wrong path is answered at once.
    from . import tradeoff
    from .importance import importances

    out = Path(out_dir) if out_dir is not None else study.path / StudyFolder.ANALYSIS
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"--out {out}: cannot create the output directory ({exc.strerror})") from None
    files: dict[str, Path] = {}
    warnings = [w if w.startswith("warning:") else f"warning: {w}" for w in study.warnings]

    files["trials"] = out / "trials.csv"
    study.trials.to_csv(files["trials"], index=False)
    files["epochs"] = out / "epochs.csv"
    study.epochs.to_csv(files["epochs"], index=False)

    has_counted = len(study.counted()) > 0
    ablations = [tables.ablation(study, p, which, bins) for p in by] if has_counted else []
    table_paths = {}
    for ab in ablations:
        warnings += ab.warnings
        table_paths[f"ablation_{tables.slug(ab.param)}"] = tables.write(ab, out, formats)

    corr = tradeoff.loss_vs_accuracy(study, which)
    fine = study.accuracies[0] if study.accuracies else None
    per_trial = tradeoff.divergence(study, fine)
    div_summary = tradeoff.divergence_summary(study, per_trial, bins)
    fronts = tradeoff.pareto(study, which)
    ceiling = tradeoff.ceiling(study, which)
    importance = importances(study, which=which)

    caption_used = tables.counted_caption(study, which)
    # (file name, report heading, caption, numbers for CSV, strings for Markdown/LaTeX)
    sections = [
        (
            "loss_vs_accuracy",
            "Loss against accuracy across trials",
            f"Spearman rank correlation between each trial's {which} loss and each accuracy, with a seeded "
            f"percentile bootstrap 95 % interval ({tradeoff.N_BOOT} resamples of trials); {caption_used}.",
            corr,
            _corr_display(corr),
        ),
        (
            "divergence_summary",
            f"Divergence epochs: loss fell while {fine or 'accuracy'} fell",
            f"Epochs e > 1 where the loss fell versus epoch e-1 while {fine or 'accuracy'} fell too; "
            f"n = trials with at least 2 epochs; first epoch = earliest (min) and median first divergence epoch; "
            f"{tables.counted_caption(study, None)}.",
            div_summary,
            _div_display(div_summary),
        ),
        (
            "pareto",
            "Pareto fronts",
            f"Trials no other trial beats on both objectives of a front (accuracies and score in %); {caption_used}.",
            fronts,
            _fractions_display(fronts, study),
        ),
        (
            "ceiling",
            "Gallery ceiling",
            "Accuracy the gallery allows at best (a prediction can be no closer than the nearest gallery "
            "point) beside the mean and best accuracy reached, all in %.",
            ceiling,
            _ceiling_display(ceiling),
        ),
    ]
    for name, _, caption, numeric, display in sections:
        table_paths[name] = tables.write_table(numeric, display, out, name, caption, formats)
    files["divergence"] = out / "divergence.csv"
    per_trial.to_csv(files["divergence"], index=False)
    if len(importance.table):
        table_paths["importance"] = tables.write_table(
            importance.table,
            importance.table.round(4),
            out,
            "importance",
            f"{importance.evaluator} importance; {caption_used}.",
            formats,
        )

    plot_paths = {}
    if plots:
        from .plots import all_plots  # matplotlib, likewise, only when plots are wanted

        plot_paths = all_plots(study, importance, out, which)

    lines = summary(study, which, ablations, corr, div_summary, fronts, ceiling, importance)
    files["report"] = write_report(
        out / "report.md",
        study,
        which,
        lines,
        warnings,
        ablations,
        {title: (caption, display) for _, title, caption, _, display in sections},
        importance,
        plot_paths,
    )
    if echo_warnings:
        for w in warnings:
            print(w, file=sys.stderr)
    return _result(study, out, files, table_paths, plot_paths, corr, fronts, importance, warnings, which)


def _check_options(formats, which, bins) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    formats = tuple(f.strip().lower() for f in formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise AnalysisError(
            f"--format: expected a comma-separated subset of {','.join(FORMATS)}, got {','.join(formats) or 'nothing'}"
        )
    if which not in ("final", "best"):
        raise AnalysisError(f"--which: expected final or best, got {which!r}")
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


def _corr_display(corr: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "loss": corr["loss"],
            "accuracy": corr["metric"],
            "n": corr["n"].astype(str),
            "Spearman ρ": corr["rho"].map(signed),
            "95 % CI": [interval(r) for _, r in corr.iterrows()],
            "p": corr["p_value"].map(lambda p: "–" if pd.isna(p) else f"{p:.3g}"),
            "excludes 0": corr["excludes_zero"].map({True: "yes", False: "no"}),
            "strength": corr["strength"],
        }
    )


def _div_display(summary: pd.DataFrame) -> pd.DataFrame:
    view = summary.copy()
    view["share"] = view["share"].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.0f} %")
    view["first_epoch_min"] = view["first_epoch_min"].map(lambda v: "–" if pd.isna(v) else str(v))
    view["first_epoch_median"] = view["first_epoch_median"].map(lambda v: "–" if pd.isna(v) else f"{v:g}")
    return view.astype(str)


def _fractions_display(frame: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Fractions (accuracies, score) in %, losses to 4 decimals, varied hyperparameters as in the tables."""
    view = frame.copy()
    for col in view.columns:
        metric = study.registry.get(col)
        if metric and metric.fraction:
            view[col] = view[col].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
        elif metric and metric.kind == "loss":
            view[col] = view[col].map(lambda v: "–" if pd.isna(v) else f"{v:.4f}")
        elif col in study.varied:
            view[col] = view[col].map(tables.fmt_value)
    return view.astype(str)


def _ceiling_display(frame: pd.DataFrame) -> pd.DataFrame:
    view = frame.copy()
    for col in ("ceiling", "mean_acc", "best_acc", "best_share_of_ceiling"):
        view[col] = view[col].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
    view["threshold_km"] = view["threshold_km"].map(lambda v: f"{v:g}")
    return view.astype(str)


def _native(value):
    """numpy scalars -> Python ones, so the result serialises with json as the launcher may want."""
    return value.item() if hasattr(value, "item") else value


def _result(study, out, files, table_paths, plot_paths, corr, fronts, importance, warnings, which) -> dict:
    counts = study.trials["status"].value_counts()
    used = study.counted()
    best = None
    if f"{which}_score" in used and used[f"{which}_score"].notna().any():
        row = used.loc[used[f"{which}_score"].astype(float).idxmax()]
        best = {
            "number": None if pd.isna(row["number"]) else int(row["number"]),
            "trial_id": row["trial_id"],
            "score": float(row[f"{which}_score"]),
            "params": {p: _native(row[p]) for p in study.params},
        }
    every = [str(p) for p in files.values()] + [str(p) for d in table_paths.values() for p in d.values()]
    every += [str(p) for p in plot_paths.values()]
    return {
        "out_dir": str(out),
        "report": str(files["report"]),
        "trials_csv": str(files["trials"]),
        "epochs_csv": str(files["epochs"]),
        "tables": {name: {fmt: str(p) for fmt, p in d.items()} for name, d in table_paths.items()},
        "plots": {name: str(p) for name, p in plot_paths.items()},
        "files": sorted(every),
        "counts": {
            **{s.value: int(counts.get(s.value, 0)) for s in Status},
            "total": len(study.trials),
            "counted": len(used),
        },
        "varied": list(study.varied),
        "best": best,
        "correlations": corr.to_dict("records"),
        "pareto": {name: list(g["trial_id"]) for name, g in fronts.groupby("front", sort=False)} if len(fronts) else {},
        "importance": {
            t: dict(zip(g["param"], g["importance"], strict=True))
            for t, g in importance.table.groupby("target", sort=False)
        },
        "importance_evaluator": importance.evaluator,
        "notes": list(importance.notes),
        "warnings": list(warnings),
    }
