"""The names of everything ``analyse()`` writes, in one place: the figures (``<name>.png``), the tables
(``<name>.md``, ``.tex``, ``.csv``) and the plain files. The code that draws or computes an output
and the report that links it both take its name from here.
"""

from __future__ import annotations

import re

REPORT = "report.md"
TRIALS = "trials.csv"
EPOCHS = "epochs.csv"

# Tables of the generic analysis (each written as .md, .tex and .csv).
COMPARISON = "comparison"
IMPORTANCE_TABLE = "importance"
PARETO_SET = "pareto_set"
HYPERVOLUME_CSV = "hypervolume.csv"

# Figures of the generic analysis.
ACCURACY_VS_THRESHOLD = "accuracy_vs_threshold"
LEARNING_CURVES = "learning_curves"
PARALLEL_COORDINATES = "parallel_coordinates"
IMPORTANCE = "importance"
PARETO_FRONT = "pareto_front"
HYPERVOLUME = "hypervolume"

# GeoCLIP's section (analysis/sections/geoclip/).
CROSSOVER = "crossover"
LOSS_VS_ACCURACY = "loss_vs_accuracy"
DIVERGENCE_SUMMARY = "divergence_summary"
DIVERGENCE_CSV = "divergence.csv"
PARETO = "pareto"
CEILING = "ceiling"
REGIONS = "accuracy_by_region"
DENSITY = "accuracy_by_density"
LOSS_VS_ACC = "loss_vs_acc"
DENSITY_PLOT = "density_accuracy"
ERROR_MAP = "error_map"

# How report.md describes each figure (its alt text); per-parameter figures are described by `alt`.
ALT = {
    ACCURACY_VS_THRESHOLD: "accuracy against threshold",
    LEARNING_CURVES: "learning curves",
    PARALLEL_COORDINATES: "parallel coordinates",
    IMPORTANCE: "importance",
    PARETO_FRONT: "Pareto front",
    HYPERVOLUME: "hypervolume against epochs spent",
    LOSS_VS_ACC: "loss against acc_1km",
    DENSITY_PLOT: "accuracy by gallery density",
    ERROR_MAP: "map of the best trial's errors",
}


def slug(name: str) -> str:
    """A parameter name as a file-name part: train.noise.batch_sigma -> train_noise_batch_sigma."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def ablation(param: str) -> str:
    """The ablation table of one parameter."""
    return f"ablation_{slug(param)}"


def metrics_vs(param: str) -> str:
    """The figure of every headline metric against one parameter."""
    return f"metrics_vs_{slug(param)}"


def error_curve(param: str) -> str:
    """The error curves of one parameter's arms (GeoCLIP's section)."""
    return f"error_curve_{slug(param)}"


def ablation_by_continent(param: str) -> str:
    """The by-continent ablation table of one parameter (GeoCLIP's section)."""
    return f"{ablation(param)}_by_continent"


def gain_map(param: str) -> str:
    """The map of where one parameter's arms gain and lose hits against its baseline (GeoCLIP's section)."""
    return f"gain_map_{slug(param)}"


def alt(name: str, param: str | None = None) -> str:
    """report.md's description of a figure."""
    if name.startswith("metrics_vs_") and param is not None:
        return f"metrics against {param}"
    if name.startswith("gain_map_") and param is not None:
        return f"map of gains and losses against the baseline, {param}"
    if name.startswith("error_curve_"):
        return name.replace("_", " ")
    return ALT[name]
