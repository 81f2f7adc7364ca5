"""Gallery retrieval and the per-epoch validation metrics (keys as in ``geoloc.tasks.geoclip.metrics``).

The gallery is encoded once per evaluation, in chunks; similarities are scored in chunks too,
so a 100K gallery fits in memory. When an evaluation cache holds several views per image
(TenCrop), logits are averaged over the views, as the published evaluation does; since the
logit is linear in the image embedding, that is the same as scoring the mean embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoloc.common.metrics import accuracy_key, ceiling_key
from geoloc.data.cache import FeatureCache
from geoloc.data.derived import cached_array, fingerprint
from geoloc.data.regions import cached_regions
from geoloc.geo import chord_km, haversine_km, unit_vectors
from geoloc.parts.neighbours import nearest
from geoloc.parts.precision import exact_fp32
from geoloc.tasks.geoclip.config import EvalConfig
from geoloc.tasks.geoclip.model import GeoCLIP

VAL_NEGATIVES_SEED = 0  # the same val_loss candidates for every trial, so val_loss compares
CURVE_RANGE_KM = (0.1, 20_000.0)  # from well below 1 km to half the earth's circumference
CURVE_POINTS_PER_DECADE = 8
GEOSCORE_MAX = 5000.0  # OSV-5M's GeoScore: GEOSCORE_MAX * exp(-d / GEOSCORE_SCALE_KM) points per image
GEOSCORE_SCALE_KM = 1492.7


def curve_thresholds(thresholds_km) -> np.ndarray:
    """The distances of the fine error curve: 8 per decade from 0.1 to 20,000 km (10^(k/8), so
    0.1, 1, 10, ... are exact) plus both ends and the study's own thresholds, sorted; 48 for the
    defaults. Holding the thresholds makes the curve agree with ``acc_<t>km`` exactly."""
    lo, hi = np.log10(CURVE_RANGE_KM)
    k = np.arange(np.ceil(lo * CURVE_POINTS_PER_DECADE), np.floor(hi * CURVE_POINTS_PER_DECADE) + 1)
    grid = 10.0 ** (k / CURVE_POINTS_PER_DECADE)
    return np.unique(np.concatenate([grid, CURVE_RANGE_KM, np.asarray(thresholds_km, dtype=float)]))


def accuracy_curve(errors_km: np.ndarray, km: np.ndarray) -> np.ndarray:
    """The share of errors <= each distance (the empirical distribution of the errors at ``km``)."""
    return np.searchsorted(np.sort(errors_km), km, side="right") / len(errors_km)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation set's result: the metrics of every epoch row, each image's top-1 gallery
    index and its error."""

    metrics: dict[str, float]
    predicted: np.ndarray
    errors_km: np.ndarray


def accuracy_metrics(errors_km: np.ndarray, cfg: EvalConfig) -> dict[str, float]:
    """acc_<t>km per threshold, median_km, mean_km, geoscore and the weighted score from per-image errors."""
    metrics = {accuracy_key(t): float(np.mean(errors_km <= t)) for t in cfg.thresholds_km}
    metrics["median_km"] = float(np.median(errors_km))
    metrics["mean_km"] = float(np.mean(errors_km))
    metrics["geoscore"] = geoscore(errors_km)
    metrics["score"] = weighted_score(metrics, cfg)
    return metrics


def geoscore(errors_km: np.ndarray) -> float:
    """GeoScore (OSV-5M, PLONK): the mean over images of 5000 exp(-d / 1492.7 km), d each image's
    great-circle error; 5000 for a perfect prediction, 5000/e at 1492.7 km, near 0 across the globe."""
    return float(np.mean(GEOSCORE_MAX * np.exp(-np.asarray(errors_km, dtype=float) / GEOSCORE_SCALE_KM)))


def region_accuracy(
    country: np.ndarray, continent: np.ndarray, predicted_country: np.ndarray, predicted_continent: np.ndarray
) -> dict[str, float]:
    """``country_acc`` and ``continent_acc``: the share of images whose predicted gallery point lies in
    their own country (continent), by ``geoloc.data.regions``'s rule ("sea" counts as one more region)."""
    return {
        "country_acc": float(np.mean(np.asarray(country) == np.asarray(predicted_country))),
        "continent_acc": float(np.mean(np.asarray(continent) == np.asarray(predicted_continent))),
    }


def weighted_score(metrics: dict[str, float], cfg: EvalConfig) -> float:
    accs = [metrics[accuracy_key(t)] for t in cfg.thresholds_km]
    return float(np.dot(cfg.score_weights, accs) / np.sum(cfg.score_weights))


def nearest_distance_km(points: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """For each point, the great-circle distance to its nearest gallery point.

    The nearest point comes from a k-d tree on unit vectors (``geoloc.parts.neighbours.nearest``:
    3,000 points against a 1M gallery in seconds, where the all-pairs matrix product took about 40 s
    on 2 cores); the distance is then taken from the chord, which stays exact for nearby points
    where an arccos of the dot product would not.
    """
    nearest_index = nearest(points, gallery, 1)[:, 0]
    return chord_km(np.sum((unit_vectors(points) - unit_vectors(gallery[nearest_index])) ** 2, axis=1))


def gallery_ceiling(cache: FeatureCache, gallery: np.ndarray, thresholds_km: Sequence[float]) -> dict[str, float]:
    """``ceiling_<t>km``: top-1 retrieval cannot beat the share of images that have any gallery point
    within the threshold. The images' nearest distances are kept beside the evaluation cache
    (``geoloc.data.derived``, named by the images' and the gallery's coordinates): the launcher
    computes them once before the first trial (``GeoCLIP.prepare``) and every trial reads them. A
    cache made in memory (benchmarks) has no folder to keep them in; they are computed each time."""
    if Path(cache.path).is_dir():
        key = fingerprint(cache.coords, np.asarray(gallery))
        distances = cached_array(cache.path, "gallery_nearest", key, lambda: nearest_distance_km(cache.coords, gallery))
    else:
        distances = nearest_distance_km(cache.coords, gallery)
    return {ceiling_key(t): float(np.mean(distances <= t)) for t in thresholds_km}


def prepare_evaluation(cfg: EvalConfig, val: dict[str, FeatureCache], gallery: np.ndarray, home: str) -> None:
    """What every trial's evaluators read, built once by the launcher before the first trial: each
    set's nearest gallery distances (``gallery_ceiling``) and, with ``eval.regions``, the countries and
    continents of the sets' images and of the gallery (kept in ``home``, the training cache, as a
    trial's ``Gallery`` keeps them: the 100K gallery takes 9.0 s to look up on 2 cores)."""
    for cache in val.values():
        gallery_ceiling(cache, gallery, cfg.thresholds_km)
        if cfg.regions:
            cached_regions(cache.path, cache.coords)
    if cfg.regions:
        cached_regions(home, gallery)  # the file a trial's ``Gallery.regions`` reads


class Gallery:
    """The GPS gallery: coordinates on the host (for distances) and on the device (to encode); each
    point's country and continent (``geoloc.data.regions``), found once and kept beside ``home`` (a
    feature cache: the training cache's in a run)."""

    def __init__(self, coords: np.ndarray, device: torch.device, chunk: int, home: str | None = None):
        self.coords, self.chunk, self.home = coords, chunk, home
        self.coords_t = torch.from_numpy(coords).float().to(device)
        self._regions: tuple[np.ndarray, np.ndarray] | None = None

    def regions(self, fallback_home) -> tuple[np.ndarray, np.ndarray]:
        """(country codes, continents) of every gallery point; kept in ``fallback_home`` without a home."""
        if self._regions is None:
            self._regions = cached_regions(self.home or fallback_home, self.coords)
        return self._regions

    def __len__(self) -> int:
        return len(self.coords)

    @torch.no_grad()
    def embeddings(self, model: GeoCLIP, precision: Callable[[], ContextManager]) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, fp32 embeddings) chunk by chunk: one chunk is held at a time, never the whole gallery."""
        for start in range(0, len(self), self.chunk):
            with precision():
                emb = model.encode_locations(self.coords_t[start : start + self.chunk])
            yield start, emb.float()


class Evaluator:
    """Scores one evaluation cache against a gallery. Per-set constants are computed once here."""

    def __init__(
        self,
        cfg: EvalConfig,
        cache: FeatureCache,
        gallery: np.ndarray | Gallery,
        negatives: np.ndarray,
        device: torch.device,
    ):
        self.cfg, self.cache, self.device = cfg, cache, device
        self.gallery = gallery if isinstance(gallery, Gallery) else Gallery(gallery, device, cfg.gallery_chunk)
        self.coords_t = torch.from_numpy(cache.coords).float().to(device)
        self.negatives_t = torch.from_numpy(negatives).float().to(device)
        self.ceiling = gallery_ceiling(cache, self.gallery.coords, cfg.thresholds_km)
        # Regions (eval.regions): the images' true country and continent and the gallery's, found once.
        self.regions = None
        if cfg.regions:
            self.regions = (cached_regions(cache.path, cache.coords), self.gallery.regions(cache.path))

    @staticmethod
    def fixed_negatives(train_coords: np.ndarray, n: int) -> np.ndarray:
        rng = np.random.default_rng(VAL_NEGATIVES_SEED)
        return train_coords[rng.choice(len(train_coords), size=min(n, len(train_coords)), replace=False)]

    def batches(self) -> list[tuple[int, int]]:
        """The (start, stop) image batches of ``eval.batch_size``."""
        n, bs = len(self.cache), self.cfg.batch_size
        return [(start, min(start + bs, n)) for start in range(0, n, bs)]

    def image_embeddings(self, model: GeoCLIP, start: int, stop: int) -> torch.Tensor:
        feats = torch.from_numpy(np.asarray(self.cache.features[start:stop], dtype=np.float32)).to(self.device)
        emb = model.encode_images(feats)  # (b, views, d)
        return emb.mean(dim=1)  # mean over views == mean of logits over views

    @torch.no_grad()
    def embed(self, model: GeoCLIP, precision) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every batch's fp32 image embeddings, and the sum of ``val_loss`` over the set."""
        negatives_emb = None
        images, losses = [], []
        scale = model.logit_scale.exp()
        for start, stop in self.batches():
            with precision():
                image_emb = self.image_embeddings(model, start, stop).float()
                if negatives_emb is None:
                    negatives_emb = model.encode_locations(self.negatives_t).float()
                candidates = torch.cat([model.encode_locations(self.coords_t[start:stop]).float(), negatives_emb])
            with exact_fp32(self.device):
                logits = scale * image_emb @ candidates.T
            losses.append(F.cross_entropy(logits, torch.arange(stop - start, device=self.device), reduction="sum"))
            images.append(image_emb)
        return images, torch.stack(losses).sum()

    def result(self, best_idx: torch.Tensor, loss_sum: torch.Tensor) -> Evaluation:
        predicted = best_idx.cpu().numpy()
        errors = haversine_km(self.gallery.coords[predicted], self.cache.coords)
        metrics = {"val_loss": float(loss_sum / len(self.cache)), **accuracy_metrics(errors, self.cfg), **self.ceiling}
        if self.regions is not None:
            (country, continent), (gallery_country, gallery_continent) = self.regions
            metrics |= region_accuracy(country, continent, gallery_country[predicted], gallery_continent[predicted])
        return Evaluation(metrics, predicted, errors)

    def __call__(self, model: GeoCLIP, precision) -> Evaluation:
        return evaluate_sets(model, [self], precision)[0]


@torch.no_grad()
def evaluate_sets(model: GeoCLIP, evaluators: list[Evaluator], precision) -> list[Evaluation]:
    """Evaluate every set against their shared gallery, encoding the gallery once, chunk by chunk.

    Embeddings are computed under ``precision`` (the run's autocast), their similarities in exact
    fp32 (``exact_fp32``): the top-1 search then tells apart gallery points whose similarities
    differ by far less than bf16's resolution. Memory holds the sets' image embeddings and one
    gallery chunk's, whatever the gallery's size.
    """
    gallery = evaluators[0].gallery
    if any(e.gallery is not gallery for e in evaluators):
        raise ValueError("evaluate_sets: the evaluators must share one Gallery")
    was_training = model.training
    model.eval()
    embedded = [e.embed(model, precision) for e in evaluators]
    best = [
        [
            (torch.full((len(x),), -torch.inf, device=x.device), torch.zeros(len(x), dtype=torch.long, device=x.device))
            for x in images
        ]
        for images, _ in embedded
    ]
    for start, gallery_emb in gallery.embeddings(model, precision):
        with exact_fp32(gallery_emb.device):
            for (images, _), set_best in zip(embedded, best, strict=True):
                for k, image_emb in enumerate(images):
                    set_best[k] = _better(set_best[k], image_emb @ gallery_emb.T, start)
    model.train(was_training)
    return [
        e.result(torch.cat([idx for _, idx in set_best]), loss)
        for e, (_, loss), set_best in zip(evaluators, embedded, best, strict=True)
    ]


def _better(
    best: tuple[torch.Tensor, torch.Tensor], sim: torch.Tensor, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-1 (similarity, gallery index) after one more chunk; the earlier index wins ties."""
    best_sim, best_idx = best
    value, index = sim.max(dim=1)
    better = value > best_sim
    return torch.where(better, value, best_sim), torch.where(better, index + offset, best_idx)
