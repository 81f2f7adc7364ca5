"""GeoCLIP's analysis section (``GeoCLIPTask.analysis``): its loss-versus-1 km question, the
crossover distances of its error curves and its gallery ceiling, beside the generic analysis.

- ``tradeoff.py``: loss against accuracy across trials (rank correlations at each ASHA rung),
  divergence epochs within trials, the Pareto fronts of the conflicting objectives, the gallery
  ceiling.
- ``crossover.py``: where each arm's fine error curve (``curves.jsonl``) crosses its baseline's.
- ``figures.py``: each loss against the finest accuracy; accuracy by gallery density.
- ``regions.py``: accuracy by continent and country; by continent per compared parameter.
- ``density.py``: each image's gallery points within 1 and 25 km, accuracy by density bin.
- ``maps.py``: where each arm gains and loses hits against its baseline; the best trial's errors.
- ``sentences.py``: its lines of the report's summary.

Every view reads its keys from the registry (the accuracies, ceilings and losses it finds) and is
empty where they are missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis import names
from analysis.budget import Budget, counted_words
from analysis.findings import Findings
from analysis.formats import Table, fractions_display, km_text
from analysis.load import Study
from analysis.sections import Part
from analysis.summary import interval, signed

from . import crossover, density, maps, regions, sentences, tradeoff
from .figures import density_accuracy, loss_vs_fine

HEADING = "Loss versus 1 km accuracy"


@dataclass
class Numbers:
    """GeoCLIP's findings at the budget."""

    fine: str | None  # the finest accuracy the trials reported
    corr: pd.DataFrame  # tradeoff.loss_vs_accuracy
    quoted_epoch: object  # the correlations' epoch the summary quotes (tradeoff.quoted_epoch)
    per_trial: pd.DataFrame  # tradeoff.divergence
    divergence: pd.DataFrame  # tradeoff.divergence_summary
    fronts: pd.DataFrame  # tradeoff.pareto
    ceiling: pd.DataFrame  # tradeoff.ceiling
    crossovers: pd.DataFrame  # per compared parameter: param, then crossover.COLUMNS
    regions: pd.DataFrame  # regions.by_region: accuracy by continent and country, with intervals
    density: pd.DataFrame  # density.by_density: accuracy by gallery density bin, with intervals
    continents: list[tuple]  # per compared parameter: (Arms, regions.continent_ablation)
    predictions: pd.DataFrame  # regions.budget_predictions: the per-image rows the maps draw
    min_country_images: int = regions.MIN_COUNTRY_IMAGES


def compute(
    study: Study, budget: Budget, found: Findings, bins: int, min_country_images: int = regions.MIN_COUNTRY_IMAGES
) -> Numbers:
    predictions = regions.budget_predictions(study, budget)
    corr = tradeoff.loss_vs_accuracy(study, budget)
    fine = study.accuracies[0] if study.accuracies else None
    per_trial = tradeoff.divergence(study, fine)
    return Numbers(
        fine,
        corr,
        tradeoff.quoted_epoch(corr, budget),
        per_trial,
        tradeoff.divergence_summary(study, per_trial, bins),
        tradeoff.pareto(study, budget.trials),
        tradeoff.ceiling(study, budget.trials),
        _crossovers(found),
        regions.by_region(study, budget, predictions, min_country_images),
        density.by_density(study, density.with_density(study, predictions)),
        [(a, regions.continent_ablation(study, budget, a, predictions)) for a in found.arms],
        predictions,
        min_country_images,
    )


def _crossovers(found: Findings) -> pd.DataFrame:
    """crossover.crossovers for each compared parameter with error curves, stacked with a leading ``param``."""
    tables = [
        crossover.crossovers(a.curves, a.baseline).assign(param=a.param)
        for a in found.arms
        if a.baseline in set(a.curves["arm"])
    ]
    if not tables:
        return pd.DataFrame(columns=["param", *crossover.COLUMNS])
    return pd.concat(tables, ignore_index=True)[["param", *crossover.COLUMNS]]


def render(study: Study, budget: Budget, numbers: Numbers, found: Findings, plots: bool) -> Part:
    fine = numbers.fine or "accuracy"
    used = budget.describe()
    cross = Table(
        names.CROSSOVER,
        "Crossover distance of the error curves",
        f"Where each arm's mean error curve (accuracy within a distance, on {study.primary_set}) crosses "
        f"the baseline's, at {budget.label}: below it the arm is worse, above it better ('none' when the "
        f"curves do not cross; ties within {100 * crossover.TIE_TOL:g} pp are skipped); 95 % interval: bootstrap "
        f"over seeds ({crossover.N_RESAMPLES} resamples, seed {crossover.SEED}), ∞ where more than 2.5 % of the "
        "resamples do not cross the same way.",
        numbers.crossovers,
        _crossover_display(numbers.crossovers),
    )
    tables = [
        Table(
            names.LOSS_VS_ACCURACY,
            "Loss against accuracy across trials",
            "Spearman rank correlation between each trial's loss and each accuracy at one epoch (each ASHA rung "
            f"and the compared epoch), with a seeded percentile bootstrap 95 % interval ({tradeoff.N_BOOT} "
            "resamples of trials), over the finished or stopped trials that reached that epoch, with their "
            "values there.",
            numbers.corr,
            _corr_display(numbers.corr),
        ),
        Table(
            names.DIVERGENCE_SUMMARY,
            f"Divergence epochs: loss fell while {fine} fell",
            f"Epochs e > 1 where the loss fell versus epoch e-1 while {fine} fell too; "
            f"n = trials with at least 2 epochs; first epoch = earliest (min) and median first divergence epoch; "
            f"epoch curves of {counted_words(study)}.",
            numbers.divergence,
            _divergence_display(numbers.divergence),
        ),
        Table(
            names.PARETO,
            "Pareto fronts",
            f"Trials no other trial beats on both objectives of a front (accuracies and score in %); {used}.",
            numbers.fronts,
            fractions_display(numbers.fronts, study.registry, study.varied),
        ),
        Table(
            names.CEILING,
            "Gallery ceiling",
            "Accuracy the gallery allows at best (a prediction can be no closer than the nearest gallery "
            f"point) beside the mean and best accuracy reached, all in %; {used}.",
            numbers.ceiling,
            _ceiling_display(numbers.ceiling),
        ),
        Table(
            names.REGIONS,
            "Accuracy by continent and country",
            f"Accuracy in % on {study.primary_set} by the continent and country of each image's true place "
            "(offline: nearest GeoNames place, 'sea' beyond 150 km; geoloc/data/regions.py), per arm of the "
            f"first factor, from the runs' per-image predictions; countries with at least "
            f"{numbers.min_country_images} images (--min-country-images); n = images; "
            f"[Wilson 95 % interval of the image sample]; {used}.",
            numbers.regions,
            regions.display(numbers.regions),
        ),
        Table(
            names.DENSITY,
            "Accuracy by gallery density",
            f"Accuracy in % on {study.primary_set} by the number of gallery points within 1 km and within 25 km of "
            "each image's true place (each trial's own gallery; analysis/sections/geoclip/density.py), per arm of "
            "the first factor, from the runs' per-image predictions; n = images; [Wilson 95 % interval of the image "
            f"sample]; {used}.",
            numbers.density,
            density.display(numbers.density),
        ),
        *(
            Table(
                names.ablation_by_continent(arms.param),
                f"{arms.param} by continent",
                f"Accuracy in % within {km_text(table['threshold_km'].iloc[0])} on {study.primary_set} by the "
                f"continent of each image's true place, per arm of {arms.param} (baseline marked), from the runs' "
                f"per-image predictions; [Wilson 95 % interval of the image sample] (images); {used}.",
                table,
                regions.continent_display(table, arms.baseline, list(arms.units["arm"].cat.categories)),
            )
            for arms, table in numbers.continents
            if len(table)
        ),
    ]
    error_curves = [
        crossover.plot_error_curves(a.curves, a.baseline, a.param)
        for a in found.arms
        if plots and a.baseline in set(a.curves["arm"])
    ]
    charts = []
    if plots:
        charts = [
            loss_vs_fine(study, budget),
            density_accuracy(numbers.density, maps.map_thresholds(study)),
            maps.error_map(study, budget),
        ]
        error_curves += maps.gain_maps(study, found, numbers.predictions)
    return Part(
        heading=HEADING,
        comparisons=[cross] if len(numbers.crossovers) else [],
        comparison_charts=error_curves,
        tables=tables,
        charts=[chart for chart in charts if chart is not None],
        summary=sentences.lines(study, budget, numbers, found),
        evidence=sentences.evidence(numbers),
        files={names.DIVERGENCE_CSV: numbers.per_trial},
        result={
            "correlations": numbers.corr.to_dict("records"),
            "crossovers": numbers.crossovers.to_dict("records"),
            "pareto": {name: list(g["trial_id"]) for name, g in numbers.fronts.groupby("front", sort=False)}
            if len(numbers.fronts)
            else {},
        },
    )


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


def _crossover_display(crossovers: pd.DataFrame) -> pd.DataFrame:
    view = crossovers[["param", "arm", "baseline", "note"]].astype(str)
    km = pd.to_numeric(crossovers["crossover_km"], errors="coerce")
    view.insert(3, "crossover", km.map(lambda v: "none" if pd.isna(v) else km_text(v)))
    view.insert(4, "95 % CI", [crossover.interval_text(r) for _, r in crossovers.iterrows()])
    view["paired"] = crossovers["paired"].map({True: "yes", False: "no"})
    return view


def _divergence_display(summary: pd.DataFrame) -> pd.DataFrame:
    view = summary.copy()
    view["share"] = view["share"].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.0f} %")
    view["first_epoch_min"] = view["first_epoch_min"].map(lambda v: "–" if pd.isna(v) else str(v))
    view["first_epoch_median"] = view["first_epoch_median"].map(lambda v: "–" if pd.isna(v) else f"{v:g}")
    return view.astype(str)


def _ceiling_display(frame: pd.DataFrame) -> pd.DataFrame:
    view = frame.copy()
    for col in ("ceiling", "mean_acc", "best_acc", "best_share_of_ceiling"):
        view[col] = view[col].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
    view["threshold_km"] = view["threshold_km"].map(lambda v: f"{v:g}")
    return view.astype(str)
