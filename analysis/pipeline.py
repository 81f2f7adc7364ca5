"""``analyse()``: a study directory in, every table, plot and the report out."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from geoloc.study.folders import Status, StudyFolder

from . import budget as budgets
from . import tables
from .load import AnalysisError, Study, read_study
from .report import Findings, interval, signed, summary, write_report

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
) -> dict:
    """Analyse STUDY_DIR into OUT_DIR (default STUDY_DIR/analysis); returns paths and headline numbers.

    by: hyperparameters to tabulate (default: each one the study varied); formats: any of md, tex,
    csv for the tables; epoch: the epoch trials are compared at, a number, "final" or "best"
    (default: the rule of ``budget.py``); baseline: the value of the arm every other arm is
    compared with, for each parameter that has it (default: the base configuration's value).
    Raises AnalysisError for a user's mistake (no trials, unknown parameter, bad option), before
    anything is written.
    """
    formats = _check_options(formats, bins)
    epoch = budgets.parse_epoch(epoch)
    study = read_study(study_dir)
    by = _check_by(study, by)
    budget = budgets.at(study, budgets.choose(study, epoch), asked=epoch is not None)
    # scipy, matplotlib and optuna take seconds to import: only once there is a study to analyse,
    # so that a wrong path or epoch is answered at once.
    from . import arms, compare, pareto, tradeoff
    from .importance import importances
    from .plots import all_plots

    every_arm = arms.all_arms(study, budget, by, bins, baseline)  # an unknown --baseline stops here

    out = Path(out_dir) if out_dir is not None else study.path / StudyFolder.ANALYSIS
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"--out {out}: cannot create the output directory ({exc.strerror})") from None
    files: dict[str, Path] = {}
    warnings = [w if w.startswith("warning:") else f"warning: {w}" for w in study.warnings]
    warnings += [budget.warning()] if budget.warning() else []

    files["trials"] = out / "trials.csv"
    study.trials.to_csv(files["trials"], index=False)
    files["epochs"] = out / "epochs.csv"
    study.every_epoch().to_csv(files["epochs"], index=False)

    comparison = arms.comparison(study, every_arm)
    crossovers = arms.crossovers(every_arm)
    ablations = [tables.ablation(study, budget, p, bins) for p in by] if len(budget.trials) else []
    table_paths = {}
    baselines = {a.param: a.baseline for a in every_arm}
    for ab in ablations:
        warnings += ab.warnings
        if ab.param in baselines:
            rule = f"Holm-corrected t-test p < {compare.ALPHA:g}; see the paired comparisons"
            tables.mark(ab, comparison[comparison["param"] == ab.param], baselines[ab.param], rule)
        table_paths[f"ablation_{tables.slug(ab.param)}"] = tables.write(ab, out, formats)

    corr = tradeoff.loss_vs_accuracy(study, budget)
    fine = study.accuracies[0] if study.accuracies else None
    per_trial = tradeoff.divergence(study, fine)
    div_summary = tradeoff.divergence_summary(study, per_trial, bins)
    fronts = tradeoff.pareto(study, budget.trials)
    ceiling = tradeoff.ceiling(study, budget.trials)
    importance = importances(study, budget.trials)
    front, notes = pareto.front(study)  # None for a score study
    warnings += notes

    caption_used = budget.describe()
    fractions = [m for m in study.metrics if study.registry.fraction(m)]
    # (file name, report heading, caption, numbers for CSV, strings for Markdown/LaTeX)
    compared = [
        (
            "comparison",
            "Paired comparisons",
            _comparison_caption(comparison, budget),
            comparison,
            _comparison_display(comparison, fractions),
        ),
        (
            "crossover",
            "Crossover distance of the error curves",
            f"Where each arm's mean error curve (accuracy within a distance, on {study.primary_set}) crosses "
            f"the baseline's, at {budget.label}: below it the arm is worse, above it better ('none' when the "
            f"curves do not cross; ties within {100 * compare.TIE_TOL:g} pp are skipped).",
            crossovers,
            _crossover_display(crossovers),
        ),
    ]
    sections = [
        (
            "loss_vs_accuracy",
            "Loss against accuracy across trials",
            "Spearman rank correlation between each trial's loss and each accuracy at one epoch (each ASHA rung "
            f"and the compared epoch), with a seeded percentile bootstrap 95 % interval ({tradeoff.N_BOOT} "
            "resamples of trials), over the finished or stopped trials that reached that epoch, with their "
            "values there.",
            corr,
            _corr_display(corr),
        ),
        (
            "divergence_summary",
            f"Divergence epochs: loss fell while {fine or 'accuracy'} fell",
            f"Epochs e > 1 where the loss fell versus epoch e-1 while {fine or 'accuracy'} fell too; "
            f"n = trials with at least 2 epochs; first epoch = earliest (min) and median first divergence epoch; "
            f"epoch curves of {budgets.counted_words(study)}.",
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
            f"point) beside the mean and best accuracy reached, all in %; {caption_used}.",
            ceiling,
            _ceiling_display(ceiling),
        ),
    ]
    # The comparisons exist only for varied parameters, the crossovers only where curves were logged.
    compared = [c for c in compared if len(c[3])]
    for name, _, caption, numeric, display in compared + sections:
        table_paths[name] = tables.write_table(numeric, display, out, name, caption, formats)
    files["divergence"] = out / "divergence.csv"
    per_trial.to_csv(files["divergence"], index=False)
    objective_section = None
    if front is not None:
        files["hypervolume"] = out / "hypervolume.csv"
        front.history.to_csv(files["hypervolume"], index=False)
        members = front.pareto_set()
        caption = (
            f"The Pareto set of the study's objective ({front.objective.describe()}): the trials no other trial "
            f"beats on every objective, among the {len(front.trials)} trials that ran the full {front.epochs} "
            "epochs, with their values there (accuracies and score in %); trials stopped earlier are not compared."
        )
        display = _fractions_display(members, study)
        table_paths["pareto_set"] = tables.write_table(members, display, out, "pareto_set", caption, formats)
        objective_section = (caption, display)
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
        plot_paths = all_plots(study, budget, importance, out, front)
        for a in every_arm:
            if a.baseline in set(a.curves["arm"]):
                name = f"error_curve_{tables.slug(a.param)}"
                plot_paths[name] = compare.plot_error_curves(a.curves, a.baseline, out / f"{name}.png")

    found = Findings(
        ablations,
        corr,
        tradeoff.quoted_epoch(corr, budget),
        div_summary,
        fronts,
        ceiling,
        importance,
        comparison,
        crossovers,
        [note for a in every_arm for note in a.notes],
        front,
    )
    lines = summary(study, budget, found)
    files["report"] = write_report(
        out / "report.md",
        study,
        budget,
        lines,
        warnings,
        found,
        {title: (caption, display) for _, title, caption, _, display in compared},
        {title: (caption, display) for _, title, caption, _, display in sections},
        plot_paths,
        objective_section,
    )
    if echo_warnings:
        for w in warnings:
            print(w, file=sys.stderr)
    return _result(study, budget, out, files, table_paths, plot_paths, found, warnings)


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


def _corr_display(corr: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "epoch": corr["epoch"].astype(str),
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


def _comparison_caption(comparison: pd.DataFrame, budget: budgets.Budget) -> str:
    """What was compared, then compare.py's own caption for each parameter (each one Holm family)."""
    from .compare import caption

    head = (
        f"Each arm against its parameter's baseline at {budget.label}: units are {budget.unit_word} "
        f"({budget.describe()}), paired by seed and every other varied setting."
    )
    parts = [
        caption(part) if comparison["param"].nunique() == 1 else f"{param}: {caption(part)}"
        for param, part in comparison.groupby("param", sort=False)
    ]
    return " ".join([head, *parts])


def _comparison_display(comparison: pd.DataFrame, fractions: list[str]) -> pd.DataFrame:
    from .compare import render

    return (
        render(comparison, fractions)
        .assign(param=comparison["param"].to_numpy())
        .pipe(lambda view: view[["param", *[c for c in view.columns if c != "param"]]])
    )


def _crossover_display(crossovers: pd.DataFrame) -> pd.DataFrame:
    view = crossovers[["param", "arm", "baseline", "note"]].astype(str)
    km = pd.to_numeric(crossovers["crossover_km"], errors="coerce")
    view.insert(3, "crossover", km.map(lambda v: "none" if pd.isna(v) else tables.km_text(v)))
    view["paired"] = crossovers["paired"].map({True: "yes", False: "no"})
    return view


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


def _result(study, budget, out, files, table_paths, plot_paths, found, warnings) -> dict:
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
        "report": str(files["report"]),
        "trials_csv": str(files["trials"]),
        "epochs_csv": str(files["epochs"]),
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
        "correlations": found.corr.to_dict("records"),
        "comparison": found.comparison.to_dict("records"),
        "crossovers": found.crossovers.to_dict("records"),
        "pareto": {name: list(g["trial_id"]) for name, g in found.fronts.groupby("front", sort=False)}
        if len(found.fronts)
        else {},
        "importance": {
            t: dict(zip(g["param"], g["importance"], strict=True))
            for t, g in importance.table.groupby("target", sort=False)
        },
        "importance_evaluator": importance.evaluator,
        "objective": _objective(found.objective),
        "notes": list(importance.notes) + list(found.arm_notes),
        "warnings": list(warnings),
    }
