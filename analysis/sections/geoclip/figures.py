"""GeoCLIP's own figure: each loss against the finest accuracy, with the pair's Pareto front (the
error curves are drawn by ``crossover.py``)."""

from __future__ import annotations

import pandas as pd

from analysis import names
from analysis.budget import Budget
from analysis.canvas import Chart, colouring, figure
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
