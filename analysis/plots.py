"""The generic figures of a study: accuracy against threshold, learning curves, each shown metric
against each varied parameter, parallel coordinates, importance, and a Pareto study's front and
hypervolume. Each is drawn as a ``canvas.Chart`` (written later by ``pipeline.py``); a figure
whose metrics the registry lacks is not drawn.
"""

from __future__ import annotations

import matplotlib.colors
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D

from geoloc.study.folders import Status

from . import names, roles
from .budget import Budget
from .canvas import CMAP, Chart, colouring, figure
from .frames import START
from .importance import Importance
from .load import Study
from .pareto import Front
from .tables import MAX_LEVELS, fmt_value, levels


def accuracy_vs_threshold(study: Study, budget: Budget, top: int = 5) -> Chart | None:
    """The best trials by score at the budget's epoch: accuracy against threshold (the registry's
    thresholds), the ceiling dashed where the registry has one; none without accuracies."""
    accs = study.accuracies
    used = budget.trials
    if not accs or "score" not in study.metrics or not len(used):
        return None
    best = used.dropna(subset=["score"]).nlargest(top, "score")
    x = [study.registry.get(a).threshold_km for a in accs]
    ceilings = study.ceilings
    fig, axes = figure(1, 1, (7, 4.5))
    ax = axes[0, 0]
    tab10 = matplotlib.colormaps["tab10"]
    for i, trial in enumerate(best.to_dict("records")):
        colour = tab10(i % 10)
        ax.plot(
            x,
            [trial[a] for a in accs],
            "o-",
            color=colour,
            label=f"#{trial['number']} (score {trial['score']:.3f})",
        )
        ceil = {study.registry.get(c).threshold_km: trial.get(c) for c in ceilings}
        ys = [ceil.get(t, np.nan) for t in x]
        if not np.all(pd.isna(ys)):
            ax.plot(x, ys, "--", color=colour, alpha=0.6, lw=1)
    if ceilings:
        ax.plot([], [], "--", color="grey", label="gallery ceiling")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{t:g} km" for t in x])
    ax.set_xlabel("threshold")
    ax.set_ylabel(f"accuracy, {budget.label}")
    ax.set_ylim(0, 1.02)
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"accuracy against threshold, best {len(best)} trials by score")
    return Chart(names.ACCURACY_VS_THRESHOLD, fig, names.alt(names.ACCURACY_VS_THRESHOLD))


def learning_curves(study: Study, budget: Budget | None = None) -> Chart | None:
    """The losses and the headline metric per epoch for every trial, coloured by the study's first
    factor; an x where ASHA stopped a trial, a grey line at the epoch the tables compare (the trials
    that stopped before it are seen only here). Curves of runs evaluated before training start at
    epoch 0, marked by a hollow square (no train_loss there: that panel starts at epoch 1)."""
    head = roles.headline(study)
    panels = list(dict.fromkeys([*roles.losses(study), *([head] if head else [])]))
    epochs = study.every_epoch()
    if not panels or not len(epochs):
        return None
    colours = colouring(study)
    fig, axes = figure(1, len(panels), (5 * len(panels), 4.2))
    status = study.trials.set_index("trial_id")["status"]
    for ax, metric in zip(axes[0], panels, strict=True):
        for trial_id, curve in epochs.groupby("trial_id", sort=False):
            c = colours.of(trial_id) if colours.key else "steelblue"
            style = ":" if status[trial_id] == Status.RUNNING.value else "-"
            y = pd.to_numeric(curve[metric], errors="coerce")
            ax.plot(curve["epoch"], y, style, color=c, lw=1.2, alpha=0.85)
            start = (curve["epoch"] == START).to_numpy()
            if start.any():
                ax.plot(curve["epoch"][start], y[start], "s", mfc="white", color=c, ms=5)
            if status[trial_id] == Status.STOPPED.value:
                ax.plot(curve["epoch"].iloc[-1], y.iloc[-1], "x", color="k", ms=7, mew=1.5)
            elif status[trial_id] == Status.ERRORED.value:
                ax.plot(curve["epoch"].iloc[-1], y.iloc[-1], "o", mfc="none", color="crimson", ms=7)
        if budget is not None and isinstance(budget.epoch, int):
            ax.axvline(budget.epoch, color="grey", lw=1, ls="--")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], ls="", marker="x", color="k", label=study.stopped_words),
        Line2D([], [], ls="", marker="o", mfc="none", color="crimson", label="errored"),
        Line2D([], [], ls=":", color="grey", label="running"),
    ]
    if budget is not None and isinstance(budget.epoch, int):
        handles.append(Line2D([], [], ls="--", color="grey", lw=1, label=f"compared: {budget.label}"))
    if len(study.start):
        handles.append(Line2D([], [], ls="", marker="s", mfc="white", color="grey", label="before training"))
        # The train_loss panel has no point at epoch 0: every panel on the same epochs, 0 included.
        lo, hi = min(ax.get_xlim()[0] for ax in axes[0]), max(ax.get_xlim()[1] for ax in axes[0])
        for ax in axes[0]:
            ax.set_xlim(lo, hi)
    axes[0][-1].legend(handles=handles, fontsize=8)
    colours.explain(fig, axes[0].tolist())
    return Chart(names.LEARNING_CURVES, fig, names.alt(names.LEARNING_CURVES))


def metrics_vs_param(study: Study, budget: Budget, param: str) -> Chart | None:
    """Every accuracy, the headline and the score (``roles.shown``) against one hyperparameter at the
    budget: a dot per unit, the mean per value."""
    metrics = roles.shown(study)
    used = budget.units
    if not metrics or not len(used):
        return None
    kind = study.param_kinds.get(param, "categorical")
    numeric = kind in ("int", "float")
    if numeric:
        x = pd.to_numeric(used[param], errors="coerce")
    else:
        level, _ = levels(used[param], kind)
        x = pd.Series(level.cat.codes, index=used.index).astype(float)
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = figure(rows, cols, (4.2 * cols, 3.4 * rows))
    for ax, metric in zip(axes.flat, metrics, strict=False):  # the grid may have spare axes
        y = pd.to_numeric(used[metric], errors="coerce")
        ax.scatter(x, y, s=25, alpha=0.8, edgecolors="k", linewidths=0.3)
        means = y.groupby(x).mean()
        if len(means) <= MAX_LEVELS:  # for a continuous param the per-value mean is just the dots again
            ax.plot(means.index, means.to_numpy(), "-", color="crimson", lw=1.2, label="mean")
        if numeric and kind == "float" and x.min() > 0 and x.max() / x.min() >= 100:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(level.cat.categories)), level.cat.categories, rotation=30, fontsize=8)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"metrics at {budget.label} against {param} (one dot per {budget.unit_word[:-1]})")
    return Chart(names.metrics_vs(param), fig, names.alt(names.metrics_vs(param), param))


def parallel_coordinates(study: Study, budget: Budget) -> Chart | None:
    """One line per trial through its varied hyperparameters (each scaled to 0..1) and its score at the budget."""
    used = budget.trials.dropna(subset=["score"]) if "score" in study.metrics else None
    if used is None or not len(used) or not study.varied:
        return None
    axes_names = study.varied + ["score"]
    scaled, ticks = [], []
    for name in axes_names:
        if name == "score":
            values = used["score"].astype(float)
        elif study.param_kinds.get(name) in ("int", "float"):
            values = pd.to_numeric(used[name], errors="coerce")
            if study.param_kinds[name] == "float" and values.min() > 0 and values.max() / values.min() >= 100:
                values = np.log10(values)  # log-sampled params would crowd at one end
        else:
            level, _ = levels(used[name], "categorical")
            values = pd.Series(level.cat.codes, index=used.index).astype(float)
        lo, hi = values.min(), values.max()
        scaled.append(((values - lo) / (hi - lo)).fillna(0.5).to_numpy() if hi > lo else np.full(len(values), 0.5))
        raw = used[name]
        ticks.append((fmt_value(_pick(raw, "min")), fmt_value(_pick(raw, "max"))))
    data = np.column_stack(scaled)
    score = used["score"].astype(float).to_numpy()
    fig, axes = figure(1, 1, (max(6, 1.8 * len(axes_names)), 4.5))
    ax = axes[0, 0]
    segments = [np.column_stack([np.arange(len(axes_names)), row]) for row in data]
    top = score.max() if score.max() > score.min() else score.min() + 1
    norm = matplotlib.colors.Normalize(vmin=score.min(), vmax=top)
    lines = LineCollection(segments, cmap=CMAP, norm=norm, linewidths=1.4, alpha=0.85)
    lines.set_array(score)
    ax.add_collection(lines)
    for i, (lo, hi) in enumerate(ticks):
        ax.axvline(i, color="k", lw=0.8)
        ax.annotate(lo, (i, -0.04), ha="center", va="top", fontsize=7)
        ax.annotate(hi, (i, 1.04), ha="center", va="bottom", fontsize=7)
    ax.set_xlim(-0.3, len(axes_names) - 0.7)
    ax.set_ylim(-0.15, 1.15)
    ax.set_xticks(range(len(axes_names)), axes_names, rotation=20, fontsize=8)
    ax.set_yticks([])
    fig.colorbar(lines, ax=ax, label=f"score, {budget.label}")
    ax.set_title("parallel coordinates (each axis scaled to its range)")
    return Chart(names.PARALLEL_COORDINATES, fig, names.alt(names.PARALLEL_COORDINATES))


def _pick(values: pd.Series, how: str):
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return getattr(numeric, how)()
    labels = sorted(map(str, values))
    return labels[0] if how == "min" else labels[-1]


def importance_bars(result: Importance) -> Chart | None:
    if not len(result.table):
        return None
    targets = list(dict.fromkeys(result.table["target"]))
    fig, axes = figure(1, len(targets), (5.5 * len(targets), 0.5 * result.table["param"].nunique() + 2.2))
    for ax, target in zip(axes[0], targets, strict=True):
        part = result.table[result.table["target"] == target].sort_values("importance")
        ax.barh(part["param"], part["importance"], color="steelblue")
        ax.set_xlabel(f"{result.evaluator} importance")
        ax.set_title(target)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3, axis="x")
    return Chart(names.IMPORTANCE, fig, names.alt(names.IMPORTANCE))


def pareto_front(front: Front) -> Chart | None:
    """The full-budget trials of a two-objective Pareto study, the Pareto set highlighted and joined
    by the edge of the region it dominates (with three or more objectives: the table only)."""
    if len(front.objective.metrics) != 2 or not len(front.trials):
        return None
    (x, y), (x_up, y_up) = front.objective.metrics, front.objective.maximise
    on = front.trials[front.trials["on_front"]].sort_values(x)
    rest = front.trials[~front.trials["on_front"]]
    fig, axes = figure(1, 1, (6.5, 5))
    ax = axes[0, 0]
    ax.scatter(rest[x], rest[y], s=40, color="lightgrey", edgecolors="k", linewidths=0.4, label="dominated")
    # Between two members, the best value reachable is the next member's when x is maximised, the last one's if not.
    ax.step(on[x], on[y], where="pre" if x_up else "post", color="crimson", lw=1.2)
    ax.scatter(on[x], on[y], s=55, color="crimson", edgecolors="k", linewidths=0.5, zorder=3, label="Pareto set")
    for xi, yi, number in zip(on[x], on[y], on["number"], strict=True):
        ax.annotate(f"#{number}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{x} ({'max' if x_up else 'min'}), epoch {front.epochs}")
    ax.set_ylabel(f"{y} ({'max' if y_up else 'min'}), epoch {front.epochs}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Pareto set: {len(on)} of the {len(front.trials)} trials that ran {front.epochs} epochs")
    return Chart(names.PARETO_FRONT, fig, names.alt(names.PARETO_FRONT))


def hypervolume_plot(front: Front) -> Chart | None:
    """The hypervolume of the front found against the epochs spent, a dot where the front grew."""
    history = front.history
    if front.reference is None:
        return None
    fig, axes = figure(1, 1, (6.5, 4.2))
    ax = axes[0, 0]
    ax.step(history["epochs_spent"], history["hypervolume"], where="post", color="steelblue", lw=1.5)
    grew = history[history["hypervolume"].diff().fillna(history["hypervolume"]) > 0]
    ax.plot(grew["epochs_spent"], grew["hypervolume"], "o", color="steelblue", ms=4, label="the front grew")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epochs spent (every trial's epochs, those stopped early included)")
    ax.set_ylabel("hypervolume of the front found")
    corner = ", ".join(f"{v:g}" for v in front.reference)
    ax.set_title(f"{front.objective.describe()}; reference point ({corner})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Chart(names.HYPERVOLUME, fig, names.alt(names.HYPERVOLUME))


def all_plots(study: Study, budget: Budget, importance: Importance, front: Front | None = None) -> dict[str, Chart]:
    """Every generic figure that has something to show, by name; ``front``: a Pareto study's front."""
    made = [
        accuracy_vs_threshold(study, budget),
        learning_curves(study, budget),
        *[metrics_vs_param(study, budget, p) for p in study.varied],
        parallel_coordinates(study, budget),
        importance_bars(importance),
    ]
    if front is not None:
        made += [pareto_front(front), hypervolume_plot(front)]
    return {chart.name: chart for chart in made if chart is not None}
