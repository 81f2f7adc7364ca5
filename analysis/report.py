"""report.md: every table and figure on one page, opening with a summary written from the numbers.

The summary states effects with their n and intervals, and says when the evidence is thin, so
that a sentence copied into a thesis carries its own caveat.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from geoloc.folders import Status
from geoloc.metrics import MetricRegistry

from .importance import Importance
from .load import Study
from .tables import MIN_RUNS, Ablation, cell_text, counted_caption, fmt_value, markdown, slug, to_markdown

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


def summary(
    study: Study,
    which: str,
    ablations: list[Ablation],
    corr: pd.DataFrame,
    div_summary: pd.DataFrame,
    fronts: pd.DataFrame,
    ceiling: pd.DataFrame,
    importance: Importance,
) -> list[str]:
    counts = study.trials["status"].value_counts()
    parts = [f"{counts.get(s.value, 0)} {word}" for s, word in STATUS_WORDS.items() if counts.get(s.value, 0)]
    used = study.counted()
    lines = [
        f"**Trials:** {len(study.trials)} in all: {', '.join(parts)}. Tables and statistics use the "
        f"{len(used)} finished or stopped trials, {which}-epoch metrics."
    ]
    if not len(used):
        lines.append("No trial has finished or been stopped yet: nothing to compare. Run the analysis again later.")
        return lines
    fine = study.accuracies[0] if study.accuracies else None
    coarse = study.accuracies[-1] if len(study.accuracies) > 1 else None

    if f"{which}_score" in used and used[f"{which}_score"].notna().any():
        best = used.loc[used[f"{which}_score"].astype(float).idxmax()]
        accs = ", ".join(f"{a} {pct(best[f'{which}_{a}'])}" for a in study.accuracies)
        params = ", ".join(f"{p} = {fmt_value(best[p])}" for p in study.varied) or "no varied hyperparameters"
        lines.append(
            f"**Best trial by score:** #{best['number']} (`{best['trial_id']}`, {best['status_detail']}): "
            f"score {pct(best[f'{which}_score'])}; {accs}; {params}."
        )

    effects = [a for a in ablations if not is_seed(a.param) and len(a.cells) >= 2]
    if fine:
        sentences = []
        for ab in sorted(effects, key=lambda a: -_spread(a, fine)):
            hi, lo = _extreme(ab, fine, "max", study.registry), _extreme(ab, fine, "min", study.registry)
            if hi is None or _spread(ab, fine) < 1e-12:
                continue
            sentences.append(
                f"{ab.param}: highest at {hi['value']} ({_cell(hi, fine, study.registry)}, n={hi['n']}), "
                f"lowest at {lo['value']} ({_cell(lo, fine, study.registry)}, n={lo['n']})"
            )
        top = importance.table[importance.table["target"] == fine].head(3)
        ranked = ", ".join(f"{r.param} {r.importance:.2f}" for r in top.itertuples())
        text = "; ".join(sentences) if sentences else "no varied hyperparameter (seeds aside) changes it"
        ranking = f" {importance.evaluator} importance for {fine}: {ranked}." if ranked else ""
        lines.append(f"**What raises {fine}:** {text}.{ranking}")

    if fine and coarse:
        trades = []
        for ab in effects:
            best_fine = set(ab.cells.loc[ab.cells[f"{fine}_best"], "value"])
            best_coarse = set(ab.cells.loc[ab.cells[f"{coarse}_best"], "value"])
            # A trade-off only where no value is best at both (ties count as best).
            if best_fine and best_coarse and not best_fine & best_coarse:
                a, b = _extreme(ab, fine, "max", study.registry), _extreme(ab, coarse, "max", study.registry)
                trades.append(f"{ab.param} = {a['value']} is best for {fine} but {b['value']} for {coarse}")
        lines.append(
            f"**What trades {fine} against coarse accuracy:** "
            + (
                "; ".join(trades) + "."
                if trades
                else f"no varied hyperparameter: the value best for {fine} is also best for {coarse}."
            )
        )
        for loss in ("train_loss", "val_loss"):
            sentence = _correlation_sentence(corr, loss, fine, coarse, which)
            if sentence:
                lines.append(sentence)

    for loss in ("train_loss", "val_loss"):
        sentence = _divergence_sentence(div_summary, loss, fine)
        if sentence:
            lines.append(sentence)

    if len(fronts):
        for name, group in fronts.groupby("front", sort=False):
            members = ", ".join(f"#{n}" for n in group["number"])
            lines.append(f"**Pareto front {name}:** {len(group)} of {len(used)} trials ({members}).")

    if fine and len(ceiling):
        row = ceiling[ceiling["metric"] == fine].iloc[0]
        if not pd.isna(row["ceiling"]):
            share = row["best_share_of_ceiling"]
            note = (
                " - close to the ceiling: a flat accuracy here is the gallery's limit, not the model's"
                if share >= 0.9
                else " - well below the ceiling: the model, not the gallery, limits it"
            )
            lines.append(
                f"**Gallery ceiling:** {fine} can reach at most {pct(row['ceiling'])}; the best trial reaches "
                f"{pct(row['best_acc'])} ({100 * share:.0f} % of the ceiling){note}."
            )

    lines.append(_evidence(corr, ablations, used))
    return lines


def _spread(ab: Ablation, metric: str) -> float:
    means = ab.cells[f"{metric}_mean"]
    return float(means.max() - means.min()) if means.notna().any() else 0.0


def _extreme(ab: Ablation, metric: str, how: str, registry: MetricRegistry):
    """The cell where ``metric`` is best ("max") or worst ("min"), by the registry's direction."""
    means = ab.cells[f"{metric}_mean"]
    if not means.notna().any():
        return None
    best_is_high = registry.direction(metric) == "max"
    pick = means.idxmax() if (how == "max") == best_is_high else means.idxmin()
    return ab.cells.loc[pick]


def _cell(cell, metric: str, registry: MetricRegistry) -> str:
    """One cell's mean ± std as the tables show it, with its unit."""
    fraction = registry.fraction(metric)
    return cell_text(cell[f"{metric}_mean"], cell[f"{metric}_std"], fraction) + (" %" if fraction else "")


def _correlation_sentence(corr: pd.DataFrame, loss: str, fine: str, coarse: str, which: str) -> str | None:
    rows = {r["metric"]: r for _, r in corr[corr["loss"] == loss].iterrows()}
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

    tail = f", and with {clause(coarse)}" if coarse in rows else ""
    return f"**Across trials**, a lower {which} {loss} goes with {clause(fine)}{tail}."


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


def _evidence(corr: pd.DataFrame, ablations: list[Ablation], used: pd.DataFrame) -> str:
    defined = corr.dropna(subset=["ci_low"]) if len(corr) else corr
    excl = int(defined["excludes_zero"].sum()) if len(defined) else 0
    text = f"**Strength of evidence:** {len(used)} trials."
    if len(defined):
        text += f" {excl} of {len(defined)} loss–accuracy correlations have a 95 % interval that excludes 0"
        text += f"; the other {len(defined) - excl} are inconclusive." if excl < len(defined) else "."
    sizes = [int(n) for ab in ablations for n in ab.cells["n"]]
    if sizes:
        text += f" Ablation cells hold {min(sizes)}–{max(sizes)} trials"
        thin = sum(n < MIN_RUNS for n in sizes)
        text += f"; {thin} cell(s) have fewer than {MIN_RUNS} (see the warnings)." if thin else "."
    if len(used) < 10:
        text += " With so few trials, treat every effect as a hypothesis for the next study, not a result."
    return text


# --- the page --------------------------------------------------------------------------------


def write_report(
    path: Path,
    study: Study,
    which: str,
    summary_lines: list[str],
    warnings: list[str],
    ablations: list[Ablation],
    sections: dict[str, tuple[str, pd.DataFrame]],
    importance: Importance,
    plots: dict[str, Path],
) -> Path:
    """sections: {title: (caption, display table)} for the loss-vs-accuracy part, in order."""
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
    out += [markdown(_trial_overview(study, which)), ""]
    fixed = [p for p in study.params if p not in study.varied]
    if fixed:
        values = study.trials.iloc[0]
        out += ["Fixed hyperparameters: " + ", ".join(f"{p} = {fmt_value(values[p])}" for p in fixed) + ".", ""]

    out += ["## Ablation tables", ""]
    if not ablations:
        why = "the study varied no hyperparameter." if len(study.counted()) else "no finished or stopped trials yet."
        out += [f"No ablation tables: {why}", ""]
    for ab in ablations:
        out += [f"### By {ab.param}", "", to_markdown(ab), ""]
        name = f"metrics_vs_{slug(ab.param)}"
        if name in plots:
            out += [_image(plots[name], path.parent, f"metrics against {ab.param}"), ""]

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

    out += ["## Parameter importance", ""]
    if len(importance.table):
        table = importance.table.assign(importance=importance.table["importance"].map(lambda v: f"{v:.3f}"))
        out += [
            f"*{importance.evaluator} importance over the {counted_caption(study, which)}.*",
            "",
            markdown(table),
            "",
        ]
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


def _trial_overview(study: Study, which: str) -> pd.DataFrame:
    cols = {"number": "#", "trial_id": "trial", "status_detail": "status", "node": "node"}
    view = study.trials[list(cols)].rename(columns=cols).astype(str)
    for p in study.varied:
        view[p] = study.trials[p].map(fmt_value)
    for m in (["score"] if f"{which}_score" in study.trials else []) + study.accuracies[:1]:
        if study.registry.fraction(m):
            view[f"{m} (%)"] = study.trials[f"{which}_{m}"].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
    return view.replace({"None": "–", "nan": "–", "<NA>": "–"})
