"""GeoCLIP's own figures: each loss against the finest accuracy, with the pair's Pareto front, and accuracy
by gallery density (the error curves are drawn by ``crossover.py``, the maps by ``maps.py``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis import names
from analysis.budget import Budget
from analysis.canvas import DISCRETE_LIMIT, Chart, colouring, figure, palette
from analysis.load import Study

from .tradeoff import LOSSES, pareto_mask


def loss_vs_fine(study: Study, budget: Budget) -> Chart | None:
    """Each loss against the finest accuracy (acc_1km) at the budget: a dot per trial coloured by the
    study's first factor, with the pair's Pareto front."""
    fine = study.accuracies[0] if study.accuracies else None
    losses = [loss for loss in LOSSES if loss in study.metrics]
    used = budget.trials
    if fine is None or not losses or not len(used):
        return None
    colours = colouring(study)
    fig, axes = figure(1, len(losses), (5.5 * len(losses), 4.5))
    for ax, loss in zip(axes[0], losses, strict=True):
        part = used.dropna(subset=[loss, fine])
        x, y = part[loss].astype(float), part[fine].astype(float)
        dots = [colours.of(t) if colours.key else "steelblue" for t in part["trial_id"]]
        ax.scatter(x, y, c=dots, s=45, edgecolors="k", linewidths=0.4)
        for xi, yi, number in zip(x, y, part["number"], strict=True):
            ax.annotate(f"#{number}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if len(part):
            on = pareto_mask(pd.DataFrame({loss: x, fine: y}), {loss: "min", fine: "max"})
            front = part[on].sort_values(loss)
            ax.step(front[loss], front[fine], where="post", color="crimson", lw=1.5, label="Pareto front")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(f"{loss}, {budget.label}")
        ax.set_ylabel(f"{fine}, {budget.label}")
        ax.grid(alpha=0.3)
    colours.explain(fig, axes[0].tolist())
    fig.suptitle(f"loss versus {fine}" + (f", coloured by {colours.key}" if colours.key else ""))
    return Chart(names.LOSS_VS_ACC, fig, names.alt(names.LOSS_VS_ACC))


def density_accuracy(table: pd.DataFrame, thresholds_km) -> Chart | None:
    """Accuracy against the density bin within 1 km (``density.by_density``), one panel per threshold, a line
    per arm with its Wilson interval: whether the fine hits come from images among many gallery points."""
    from .density import BINS, RADII_KM

    part = table[table["radius_km"] == RADII_KM[0]]
    if not len(part):
        return None
    labels = [label for _, _, label in BINS]
    arms = list(dict.fromkeys(part["arm"]))
    colours = palette(arms) if len(arms) <= DISCRETE_LIMIT else {a: "steelblue" for a in arms}
    fig, axes = figure(1, len(thresholds_km), (4.2 * len(thresholds_km) + 1.2, 3.6))
    for ax, t in zip(axes[0], thresholds_km, strict=True):
        for arm in arms:
            mine = part[(part["arm"] == arm) & (part["threshold_km"] == t)].set_index("bin").reindex(labels)
            x = np.arange(len(labels))
            acc = 100 * mine["accuracy"].to_numpy(dtype=float)
            below = acc - 100 * mine["ci_low"].to_numpy(dtype=float)
            above = 100 * mine["ci_high"].to_numpy(dtype=float) - acc
            ax.errorbar(x, acc, yerr=[below, above], marker="o", ms=4, capsize=3, color=colours[arm], label=arm)
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_xlabel(f"gallery points within {RADII_KM[0]:g} km")
        ax.set_ylabel(f"accuracy within {t:g} km (%)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", color=colours[a], label=a) for a in arms]
    fig.legend(handles=handles, title="arm", loc="outside right upper", fontsize=8, title_fontsize=8)
    fig.suptitle("accuracy by gallery density (95 % Wilson intervals)")
    return Chart(names.DENSITY_PLOT, fig, names.alt(names.DENSITY_PLOT))
