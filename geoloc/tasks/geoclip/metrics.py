"""GeoCLIP's metric registry: the keys of its epochs and evaluations.

Built from the evaluation configuration (``eval.thresholds_km`` and the ``data.val`` sets), so a
study with thresholds 0.5 / 10 / 100 km gets ``acc_0.5km``, ``acc_10km`` and ``acc_100km``
everywhere. Keys of one epoch: ``epoch``, ``train_loss``, ``lr``, ``temperature``, ``noise_batch_sigma``,
``noise_queue_sigma``, ``train_s``, ``eval_s``,
``encoder_resolution_km``, ``batch_median_km``, ``negative_median_km``, ``negative_min_km``,
and per evaluation set ``val_loss``, ``acc_<t>km``, ``median_km``, ``mean_km``, ``geoscore``,
``country_acc``, ``continent_acc``, ``score``
and ``ceiling_<t>km``. ``geoscore`` is OSV-5M's GeoScore, the mean over images of
5000 exp(-d / 1492.7 km), d the great-circle error (``geoloc.tasks.geoclip.evaluate.geoscore``):
0..5000 points, kind "points" (maximised, not a share, not part of ``score``). ``country_acc`` and
``continent_acc`` (kind "region", with ``eval.regions``) are the shares of images whose predicted
gallery point lies in their own country and continent (``geoloc.data.regions``). The first
evaluation set's keys are plain; each further set's are prefixed with its name
(``yfcc4k-vitl14_acc_1km``).
"""

from __future__ import annotations

from geoloc.common.metrics import Metric, MetricRegistry, accuracy_key, ceiling_key
from geoloc.parts.config import SAMPLER_DISTANCES

REGION_KEYS = ("country_acc", "continent_acc")
RESOLUTION = "encoder_resolution_km"  # the location encoder's sharpness (geoloc.tasks.geoclip.resolution)
NOISE_BATCH_SIGMA = "noise_batch_sigma"  # the epoch's train.noise sigmas after its schedule (km or embedding units)
NOISE_QUEUE_SIGMA = "noise_queue_sigma"


def geoclip_registry(thresholds_km: list[float], eval_sets: list[str], regions: bool = True) -> MetricRegistry:
    """The registry of a run evaluating ``eval_sets`` (names, first = primary) at ``thresholds_km``;
    ``regions`` (``eval.regions``) adds ``country_acc`` and ``continent_acc``."""
    out = [
        Metric("train_loss", "loss", "min", False, "train/loss", hparam=True),
        Metric("lr", "train", None, False, "lr"),
        Metric("temperature", "train", None, False, "temperature"),
        # The GPS noise each epoch trained with (train.noise.schedule applied): km, or embedding units.
        Metric(NOISE_BATCH_SIGMA, "train", None, False, "noise/batch_sigma"),
        Metric(NOISE_QUEUE_SIGMA, "train", None, False, "noise/queue_sigma"),
        Metric("train_s", "time", None, False, "time/train_s"),
        Metric("eval_s", "time", None, False, "time/eval_s"),
        # How finely the location encoder separates places (geoloc.tasks.geoclip.resolution); neither
        # direction is "better" in itself: it is the mechanism, set beside acc_1km.
        Metric(RESOLUTION, "distance", None, False, "encoder/resolution_km", hparam=True),
        # What the batch sampler and the mined negatives did (geoloc.parts.negatives.NegativeDistances).
        *[Metric(key, "distance", None, False, f"sampler/{key}") for key in SAMPLER_DISTANCES],
    ]
    thresholds = sorted(thresholds_km)
    for i, name in enumerate(eval_sets):
        primary = i == 0
        prefix = "" if primary else f"{name}_"
        # (key, kind, direction, fraction, threshold, listed in HParams)
        entries = [
            ("val_loss", "loss", "min", False, None, True),
            *[(accuracy_key(t), "accuracy", "max", True, t, True) for t in thresholds],
            ("median_km", "distance", "min", False, None, True),
            ("mean_km", "distance", "min", False, None, True),
            ("geoscore", "points", "max", False, None, True),
            *[(key, "region", "max", True, None, True) for key in REGION_KEYS if regions],
            ("score", "score", "max", True, None, True),
            *[(ceiling_key(t), "ceiling", None, True, t, False) for t in thresholds],
        ]
        for key, kind, direction, fraction, threshold, hparam in entries:
            tag = "val/loss" if primary and key == "val_loss" else f"val/{prefix}{key}"
            out.append(
                Metric(prefix + key, kind, direction, fraction, tag, hparam and primary, threshold, name, primary)
            )
    return MetricRegistry(tuple(out))
