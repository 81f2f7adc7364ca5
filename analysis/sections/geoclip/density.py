"""Gallery density around each image, and accuracy by density bin: do the 1 km hits come from dense clusters?

An image's density is the number of gallery points within ``RADII_KM`` (1 and 25 km) of its true
place, counted by scikit-learn's ``BallTree`` with the haversine metric (radii in km / the earth's
radius, ``geoloc.geo.EARTH_RADIUS_KM``). A prediction is a gallery point, so an image with no gallery
point within 1 km cannot be a 1 km hit, and one among hundreds is an easy one: accuracy by density bin
says whether a 1 km result measures the model or the gallery around the test set's places.

Which gallery and images: each compared trial's own (its ``config.json``'s ``data`` section: the
gallery it names, thinned as the run thinned it, and its primary evaluation set's coordinates,
``geoloc.data.load_data``), so a study that varies the gallery counts each trial against its own.
The counts are kept beside the evaluation cache (``CACHE/derived/gallery_density-<key>.npy``,
``geoloc.data.derived.cached_array``), keyed by a digest of the images, the gallery, the radii and
``DENSITY_VERSION``: computed once per (evaluation set, gallery), shared by every analysis of every
study that reads that set. A trial without a readable configuration or data (a hand-made folder, a
study moved away from its caches) is left out, and the table is empty when none is left.

Bins (``BINS``, on the count within each radius): 0, 1-9, 10-99, 100+. The interval: Wilson's, as the
regions table's (``regions.py``): k = the hits averaged over the arm's runs (rounded) of n = the bin's images.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analysis.load import Study
from analysis.sections.geoclip.regions import threshold_columns, wilson_rows
from geoloc.geo import EARTH_RADIUS_KM
from geoloc.study.folders import TrialFolder

RADII_KM = (1.0, 25.0)
BINS = ((0, 0, "0"), (1, 9, "1-9"), (10, 99, "10-99"), (100, np.inf, "100+"))  # (low, high, label), inclusive
DENSITY_VERSION = 1  # bump when the counting changes: cached counts are keyed by it
COLUMNS = ["arm", "radius_km", "bin", "n_images", "runs", "threshold_km", "accuracy", "ci_low", "ci_high"]


def gallery_counts(points: np.ndarray, gallery: np.ndarray, radii_km=RADII_KM) -> np.ndarray:
    """(N, len(radii)) int64: the gallery points within each great-circle radius of each (lat, lon) point."""
    from sklearn.neighbors import BallTree

    points = np.radians(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    tree = BallTree(np.radians(np.asarray(gallery, dtype=np.float64).reshape(-1, 2)), metric="haversine")
    columns = [tree.query_radius(points, r / EARTH_RADIUS_KM, count_only=True) for r in radii_km]
    return np.stack(columns, axis=1).astype(np.int64) if len(points) else np.zeros((0, len(radii_km)), np.int64)


def cached_counts(home, points: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``gallery_counts(points, gallery)``, computed once and kept in ``home``'s ``derived/`` folder."""
    from geoloc.data.derived import cached_array, fingerprint

    points = np.ascontiguousarray(points, dtype=np.float64)
    gallery = np.ascontiguousarray(gallery, dtype=np.float64)
    key = fingerprint(points, gallery, list(RADII_KM), DENSITY_VERSION)
    return np.asarray(cached_array(home, "gallery_density", key, lambda: gallery_counts(points, gallery)))


def density_bin(counts: np.ndarray) -> np.ndarray:
    """Each count's bin label (``BINS``)."""
    counts = np.asarray(counts)
    labels = np.full(counts.shape, "", dtype=object)
    for low, high, label in BINS:
        labels[(counts >= low) & (counts <= high)] = label
    return labels.astype(str)


def trial_counts(study: Study, trial_ids) -> dict[str, pd.DataFrame]:
    """trial id -> its images' counts (``image``, ``within_<r>km``) on the primary set against its own gallery;
    trials without a usable configuration or data are missing (module docstring)."""
    from geoloc.common.validation import ConfigError
    from geoloc.data import DataError, load_data
    from geoloc.data.config import DataConfig

    by_data, out = {}, {}
    for trial_id in dict.fromkeys(trial_ids):
        config = TrialFolder.of_trial(study.path, trial_id).read_config() or {}
        if not isinstance(config.get("data"), dict):
            continue
        key = json.dumps(config["data"], sort_keys=True)
        if key not in by_data:
            try:
                data = load_data(DataConfig.model_validate(config["data"]))
                cache = data.val[study.primary_set]
            except (DataError, ConfigError, OSError, KeyError, ValueError):
                by_data[key] = None
                continue
            counts = cached_counts(cache.path, cache.coords, data.gallery)
            frame = pd.DataFrame(counts, columns=[f"within_{r:g}km" for r in RADII_KM])
            by_data[key] = frame.rename_axis("image").reset_index()
        if by_data[key] is not None:
            out[trial_id] = by_data[key]
    return out


def with_density(study: Study, predictions: pd.DataFrame) -> pd.DataFrame:
    """The per-image rows (``regions.budget_predictions``) with each image's counts; rows of trials without
    counts dropped."""
    if not len(predictions):
        return predictions
    counts = trial_counts(study, predictions["trial_id"])
    groups = predictions.groupby("trial_id", sort=False)
    parts = [group.merge(counts[t], on="image") for t, group in groups if t in counts]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def by_density(study: Study, rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per arm, radius, density bin and threshold with its Wilson interval, from ``with_density`` rows."""
    if not len(rows):
        return pd.DataFrame(columns=COLUMNS)
    thresholds = [m.threshold_km for m in study.registry if m.kind == "accuracy" and m.primary]
    order = {label: i for i, (_, _, label) in enumerate(BINS)}
    out = []
    for radius in RADII_KM:
        binned = rows.assign(bin=density_bin(rows[f"within_{radius:g}km"].to_numpy()))
        for (arm, label), group in binned.groupby(["arm", "bin"], sort=False):
            out += [[arm, radius, label, *row] for row in wilson_rows(group, thresholds)]
    table = pd.DataFrame(out, columns=COLUMNS)
    rank = table["bin"].map(order)
    return table.assign(_rank=rank).sort_values(["radius_km", "arm", "_rank", "threshold_km"]).drop(columns="_rank")


def display(table: pd.DataFrame) -> pd.DataFrame:
    """One row per arm, radius and bin, one column per threshold: "41.2 [35.1, 47.6]" in %."""
    within = table.assign(within=[f"{r:g} km" for r in table["radius_km"]])
    return threshold_columns(within, ["arm", "within", "bin"]).rename(columns={"bin": "gallery points"})
