"""Accuracy by continent and country at every threshold, from the runs' per-image predictions.

Each compared run's ``predictions/epoch_<e>.npz`` (``geoloc.study.predictions``) at the budget
epoch, on the primary evaluation set; each image's continent and country from its true coordinates
(``geoloc.data.regions``: nearest GeoNames place, "sea" beyond 150 km). Rows: the arms of the
study's first factor (one row "all" without one) by region; a country is listed only where it has
at least ``min_country_images`` images (``python -m analysis --min-country-images N``, default
``MIN_COUNTRY_IMAGES``: an option of the analysis, not of the run, so the same run folders can be read
with another minimum), every continent always.

``continent_ablation``: the same accuracies by continent for the arms of each compared parameter (not
only the first factor), at the study's finest threshold, one row per arm and one column per continent:
a table of its own beside the parameter's ablation table (``ablation_<param>_by_continent``), since
seven continents and the sea as columns would double the ablation table's width.

The interval: Wilson's 95 % interval (``scipy.stats.binomtest(...).proportion_ci``) of the image
sample, with k = the hits averaged over the arm's runs (rounded) out of n = the region's images.
Seeds and trials of one arm share the images, so pooling their hits as independent trials would
claim more images than the set holds; the interval says how sure the region's accuracy is given
how few images it has, which is the question for a small region.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from analysis.budget import Budget
from analysis.load import Study
from analysis.tables import fmt_value
from geoloc.common.metrics import accuracy_key
from geoloc.data.regions import regions_of
from geoloc.study.folders import TrialFolder
from geoloc.study.predictions import read_predictions

MIN_COUNTRY_IMAGES = 30  # a country with fewer images on the primary set is left out of the country rows
LEVELS = ("continent", "country")
COLUMNS = ["arm", "level", "region", "n_images", "runs", "threshold_km", "accuracy", "ci_low", "ci_high"]


def budget_predictions(study: Study, budget: Budget) -> pd.DataFrame:
    """The compared runs' per-image rows on the primary set at the budget, with ``trial_id`` and ``arm``
    (the first factor's value, "all" without one); empty where the runs kept none."""
    factor = study.varied[0] if study.varied else None
    frames = []
    for row in budget.trials.to_dict("records"):  # records: parameter names are dotted, no identifiers
        epoch = row.get("epoch", budget.epoch)
        if not isinstance(epoch, int | np.integer):
            continue
        frame = read_predictions(TrialFolder.of_trial(study.path, row["trial_id"]), [int(epoch)])
        frame = frame[frame["set"] == study.primary_set]
        if len(frame):
            arm = "all" if factor is None else fmt_value(row.get(factor))  # the ablation tables' labels
            frames.append(frame.assign(trial_id=row["trial_id"], arm=arm))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def by_region(
    study: Study,
    budget: Budget,
    predictions: pd.DataFrame | None = None,
    min_country_images: int = MIN_COUNTRY_IMAGES,
    levels=LEVELS,
) -> pd.DataFrame:
    """Accuracy per arm, region level, region and threshold, with its interval (module docstring)."""
    predictions = budget_predictions(study, budget) if predictions is None else predictions
    if not len(predictions):
        return pd.DataFrame(columns=COLUMNS)
    images = predictions.drop_duplicates("image").sort_values("image")
    country, continent = regions_of(images[["true_lat", "true_lon"]].to_numpy(np.float64))
    region = pd.DataFrame({"image": images["image"].to_numpy(), "continent": continent, "country": country})
    frame = predictions.merge(region, on="image")
    counts = region["country"].value_counts()
    thresholds = [m.threshold_km for m in study.registry if m.kind == "accuracy" and m.primary]
    rows = []
    for level in levels:
        keep = frame if level == "continent" else frame[frame["country"].map(counts) >= min_country_images]
        for (arm, name), group in keep.groupby(["arm", level], sort=True):
            rows += [[arm, level, name, *row] for row in wilson_rows(group, thresholds)]
    return pd.DataFrame(rows, columns=COLUMNS)


def wilson_rows(group: pd.DataFrame, thresholds) -> list[list]:
    """(images, runs, threshold, accuracy, Wilson interval) per threshold of one group's per-image rows
    (the module docstring's interval); also the density bins' (``density.py``)."""
    runs = group.groupby(["trial_id", "seed"]).ngroups
    n = group["image"].nunique()
    out = []
    for t in thresholds:
        hits = int((group["error_km"] <= t).sum())
        low, high = binomtest(int(round(hits / runs)), n).proportion_ci(0.95, method="wilson")
        out.append([n, runs, t, hits / (runs * n), low, high])
    return out


def display(table: pd.DataFrame) -> pd.DataFrame:
    """One row per arm and region, one column per threshold: "41.2 [35.1, 47.6]" in %."""
    return threshold_columns(table, ["arm", "level", "region"])


def threshold_columns(table: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """``index`` and the images' count (``n``), then one column per threshold: "41.2 [35.1, 47.6]" in %."""
    if not len(table):
        return pd.DataFrame(columns=[*index, "n"])
    text = table.assign(
        cell=[f"{100 * r.accuracy:.1f} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]" for r in table.itertuples()],
        column=[accuracy_key(t) for t in table["threshold_km"]],
    )
    wide = text.pivot_table(index=[*index, "n_images"], columns="column", values="cell", aggfunc="first", sort=False)
    wide = wide[list(dict.fromkeys(text["column"]))].reset_index().rename(columns={"n_images": "n"})
    return wide.astype(str)


def continent_ablation(study: Study, budget: Budget, arms, predictions: pd.DataFrame) -> pd.DataFrame:
    """``by_region``'s continent rows for the arms of one compared parameter (``analysis.arms.Arms``) at the
    study's finest threshold."""
    if not len(predictions) or not study.accuracies:
        return pd.DataFrame(columns=COLUMNS)
    units = arms.units[["trial_id", "seed", "arm"]].assign(arm=lambda u: u["arm"].astype(str))
    rows = predictions.drop(columns="arm").merge(units, on=["trial_id", "seed"])
    table = by_region(study, budget, rows, levels=("continent",))
    finest = min(m.threshold_km for m in study.registry if m.kind == "accuracy" and m.primary)
    return table[table["threshold_km"] == finest].reset_index(drop=True)


def continent_display(table: pd.DataFrame, baseline: str, order: list) -> pd.DataFrame:
    """One row per arm (the baseline marked), one column per continent: "41.2 [35.1, 47.6] (n)" in %."""
    if not len(table):
        return pd.DataFrame(columns=["arm"])
    text = table.assign(
        cell=[
            f"{100 * r.accuracy:.1f} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] ({r.n_images})"
            for r in table.itertuples()
        ]
    )
    wide = text.pivot_table(index="arm", columns="region", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex([a for a in map(str, order) if a in wide.index]).reset_index()
    wide["arm"] = [f"{a} (baseline)" if a == baseline else a for a in wide["arm"]]
    return wide.fillna("–").astype(str)
