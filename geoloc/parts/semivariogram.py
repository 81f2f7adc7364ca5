"""The empirical semivariogram of a feature cache and a variogram model fitted to it.

How fast image features decorrelate with distance on the globe: the semivariance of two images
``h`` km apart is

    gamma(h) = 0.5 * mean over pairs about h apart of mean over dimensions d of (f_i,d - f_j,d)^2

for features ``f`` (view 0 of each image, as float64) and great-circle distances. Its fitted
practical range is the distance beyond which locations tell little about each other's features,
a length scale that studies use as a data-derived constant.

Pairs are SAMPLED (all pairs of a 100K cache are 5e9): random pairs among a seeded sample of
anchor images cover the long distances, and each anchor with its nearest neighbours covers the
short ones, where uniform pairs almost never fall. Both kinds estimate the same per-bin mean (a
pair's expected semivariance depends on its distance only), so they are pooled into one set of
log-spaced bins. The seed is a constant, so every trial of a study gets the same answer;
``fitted_range_km`` also keeps it on disk beside the cache (``geoloc.data.derived``).

Sizes: at most ANCHORS * (NEIGHBOURS + 1) rows are read (with ``FeatureCache.read``; the features
file is never loaded whole) and at most RANDOM_PAIRS + ANCHORS * (NEIGHBOURS + 1) pairs compared,
whatever the cache's size: with 768-d features about 1.5 s on 2 cores (the float64 differences of
the pairs are most of it), 3 to 6 s measured for a 100K-image cache on a busy machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gstools
import numpy as np
import pandas as pd
from tqdm import tqdm

from geoloc.data.cache import FeatureCache
from geoloc.data.derived import cached_json, fingerprint
from geoloc.geo import haversine_km
from geoloc.parts.neighbours import nearest

SEED = 0  # one sample of pairs for every call: a cache has one semivariogram
ANCHORS = 4_000  # images sampled as pair ends (all of them in a smaller cache)
RANDOM_PAIRS = 200_000  # uniform pairs among the anchors (repeats and self-pairs dropped): the long distances
NEIGHBOURS = 8  # nearest images of each anchor (geoloc.parts.neighbours.nearest): the short distances
VIEW = 0  # the cached view compared (others are augmentations of the same image)

MIN_KM, MAX_KM = 0.1, 20_000.0  # outer bin edges; pairs closer or farther (antipodes: 20,015 km) are left out
BINS_PER_DECADE = 8
N_BINS = round(BINS_PER_DECADE * math.log10(MAX_KM / MIN_KM))  # 42 bins, log-spaced
BIN_EDGES_KM = np.geomspace(MIN_KM, MAX_KM, N_BINS + 1)

MODELS = (gstools.Exponential, gstools.Gaussian, gstools.Spherical)  # candidates; the best r2 is kept
LOSS = "linear"  # least squares (see fit_model)
PRACTICAL_RANGE = 0.95  # the range is where the model reaches this share of its partial sill above the nugget
MIN_IMAGES = 200  # fewer images than this: no semivariogram
MIN_BINS = 6  # non-empty bins needed for a fit of 3 parameters (partial sill, length scale, nugget)
CHUNK = 8_192  # pairs compared at a time (8192 * 768 float64 differences: 50 MB)

BIN_COLUMNS = ("lower_km", "upper_km", "centre_km", "pairs", "gamma")
"""Columns of ``Semivariogram.bins``: edges and geometric centre of each bin, its pair count and semivariance
(NaN where the bin has no pair)."""


class SemivariogramError(ValueError):
    """A cache that gives no semivariogram model (too small, too few distances, a fit that fails)."""


@dataclass(frozen=True)
class Semivariogram:
    """Empirical bins and the fitted model; distances are km, semivariances squared feature units."""

    bins: pd.DataFrame  # one row per bin, columns BIN_COLUMNS
    model: str  # gstools model name, e.g. "Exponential"
    range_km: float  # practical range: the model reaches PRACTICAL_RANGE of its partial sill here
    sill: float  # nugget + partial sill: the semivariance of distant images
    nugget: float  # the semivariance of images at (nearly) the same place
    len_scale_km: float  # the model's own length parameter (Exponential: range_km / ln 20)
    r2: float  # of the fit on the non-empty bins
    pairs: int  # pairs that fell into a bin
    fitted: gstools.CovModel = field(repr=False, compare=False)

    def curve(self, distance_km) -> np.ndarray:
        """The fitted model's semivariance at these distances."""
        return self.fitted.variogram(np.asarray(distance_km, dtype=np.float64))

    def summary(self) -> dict:
        """The fitted numbers as JSON-able values (what ``fitted_range_km`` keeps on disk)."""
        return {
            "model": self.model,
            "range_km": self.range_km,
            "sill": self.sill,
            "nugget": self.nugget,
            "len_scale_km": self.len_scale_km,
            "r2": self.r2,
            "pairs": self.pairs,
        }


def estimate_semivariogram(cache: FeatureCache, progress: bool = False) -> Semivariogram:
    """Sample pairs, bin their semivariances and fit a model; SemivariogramError when the cache allows none.

    ``progress``: a progress bar of the pair comparisons on a terminal (none where stderr is not one).
    """
    if len(cache) < MIN_IMAGES:
        raise SemivariogramError(f"{cache.path}: {len(cache)} images, a semivariogram needs at least {MIN_IMAGES}")
    first, second = sample_pairs(cache.coords, np.random.default_rng(SEED))
    rows = np.unique(np.concatenate([first, second]))  # sorted: the reads go forward through the file
    features = cache.read(rows, np.full(len(rows), VIEW))
    distance = haversine_km(cache.coords[first], cache.coords[second])
    gamma = pair_semivariance(features, np.searchsorted(rows, first), np.searchsorted(rows, second), progress)
    bins = bin_semivariance(distance, gamma)
    return fit_model(bins, str(cache.path))


def sample_pairs(coords: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j, each pair once, sorted): random pairs among the anchors plus each anchor with its
    nearest images."""
    n = len(coords)
    anchors = np.sort(rng.choice(n, size=min(n, ANCHORS), replace=False))
    random = anchors[rng.integers(len(anchors), size=(2, RANDOM_PAIRS))]
    near = nearest(coords[anchors], coords, min(n, NEIGHBOURS + 1))  # each anchor itself among them: dropped below
    near = np.stack(np.broadcast_arrays(anchors[:, None], near)).reshape(2, -1)
    i, j = np.concatenate([random, near], axis=1)
    keep = i != j  # self-pairs (random draws, and each anchor among its own neighbours)
    keys = np.unique(np.minimum(i, j)[keep] * n + np.maximum(i, j)[keep])
    return keys // n, keys % n


def pair_semivariance(features: np.ndarray, first: np.ndarray, second: np.ndarray, progress=False) -> np.ndarray:
    """0.5 * mean over dimensions of (f_first - f_second)^2 for each pair of rows, in float64."""
    out = np.empty(len(first))
    chunks = range(0, len(first), CHUNK)
    # disable=None: tqdm draws only on a terminal, so a failure leaves just its one error line on stderr.
    for start in tqdm(chunks, desc="pairs", unit="chunk", disable=None if progress else True, leave=False):
        sl = slice(start, start + CHUNK)
        diff = features[first[sl]].astype(np.float64) - features[second[sl]]
        out[sl] = np.einsum("ij,ij->i", diff, diff)
    return out * (0.5 / features.shape[1])


def bin_semivariance(distance_km: np.ndarray, gamma: np.ndarray) -> pd.DataFrame:
    """Mean semivariance per log-spaced distance bin (BIN_EDGES_KM); empty bins have 0 pairs and NaN gamma."""
    which = np.searchsorted(BIN_EDGES_KM, distance_km, side="right") - 1
    which[distance_km == MAX_KM] = N_BINS - 1  # the last bin includes its upper edge
    inside = (which >= 0) & (which < N_BINS)
    count = np.bincount(which[inside], minlength=N_BINS)
    total = np.bincount(which[inside], weights=gamma[inside], minlength=N_BINS)
    lower, upper = BIN_EDGES_KM[:-1], BIN_EDGES_KM[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    columns = (lower, upper, np.sqrt(lower * upper), count, mean)
    return pd.DataFrame(dict(zip(BIN_COLUMNS, columns, strict=True)))


def fit_model(bins: pd.DataFrame, where: str) -> Semivariogram:
    """Fit each of MODELS (with a nugget) to the non-empty bins and keep the best r2.

    Plain weighted least squares: each bin's squared residual is weighted by its pair count (a bin
    of many pairs is a more precise mean; gstools takes weights as inverse sigmas, so their square
    roots are passed). Not gstools' default robust loss ("soft_l1"): with weights it switches from
    squares to absolute values at a residual that depends on the features' units, so scaling the
    features would change the fitted range. Models of three parameters only (gstools' Stable,
    whose extra shape parameter often wins on r2, set the nugget to 0 or did not converge on the
    offline benchmark).
    """
    full = bins[bins["pairs"] > 0]
    if len(full) < MIN_BINS:
        raise SemivariogramError(f"{where}: {len(full)} distance bins with pairs, a fit needs at least {MIN_BINS}")
    x, y, weight = full["centre_km"].to_numpy(), full["gamma"].to_numpy(), np.sqrt(full["pairs"].to_numpy(float))
    fits = []
    for model_class in MODELS:
        model = model_class(dim=1)
        try:
            _, _, r2 = model.fit_variogram(x, y, nugget=True, weights=weight, loss=LOSS, return_r2=True)
        except (RuntimeError, ValueError):  # curve_fit did not converge, or bounds it cannot meet
            continue
        if np.isfinite(r2):
            fits.append((r2, model))
    if not fits:
        raise SemivariogramError(f"{where}: no variogram model ({', '.join(m.__name__ for m in MODELS)}) converged")
    r2, model = max(fits, key=lambda fit: fit[0])  # the first of equals: MODELS are in order of preference
    range_km = float(model.percentile_scale(PRACTICAL_RANGE))
    lowest, highest = full["lower_km"].iloc[0], full["upper_km"].iloc[-1]
    if not lowest <= range_km <= highest:
        raise SemivariogramError(
            f"{where}: fitted range {range_km:.4g} km lies outside the sampled distances "
            f"({lowest:.4g}-{highest:.4g} km)"
        )
    return Semivariogram(
        bins=bins,
        model=model.name,
        range_km=range_km,
        sill=float(model.sill),
        nugget=float(model.nugget),
        len_scale_km=float(model.len_scale),
        r2=float(r2),
        pairs=int(bins["pairs"].sum()),
        fitted=model,
    )


def estimator_constants() -> dict:
    """Everything that decides the estimate: part of the key of the file kept on disk."""
    return {
        "seed": SEED,
        "anchors": ANCHORS,
        "random_pairs": RANDOM_PAIRS,
        "neighbours": NEIGHBOURS,
        "view": VIEW,
        "bin_edges_km": BIN_EDGES_KM.tolist(),
        "models": [m.__name__ for m in MODELS],
        "loss": LOSS,
        "practical_range": PRACTICAL_RANGE,
        "min_images": MIN_IMAGES,
        "min_bins": MIN_BINS,
        "gstools": gstools.__version__,
    }


def fitted_range_km(cache: FeatureCache) -> float:
    """The practical range of the cache's semivariogram (km), estimated once and kept in ``CACHE/derived/``.

    The same float for the same cache on every call and in every trial; a cache that allows no fit
    raises SemivariogramError every time (failures are not kept).
    """
    key = fingerprint(cache.coords, list(cache.features.shape), estimator_constants())
    summary = cached_json(cache.path, "semivariogram", key, lambda: estimate_semivariogram(cache).summary())
    return float(summary["range_km"])
