"""The metric registry: every key a run reports, with its direction, unit and TensorBoard tag.

Built from the evaluation configuration (``eval.thresholds_km`` and the ``data.val`` sets), so a
study with thresholds 0.5 / 10 / 100 km gets ``acc_0.5km``, ``acc_10km`` and ``acc_100km``
everywhere: TensorBoard scalars and HParams, Ray's progress table, the launcher's summary and
the analysis. The launcher stores it in the study folder (``metrics.json``) and the analysis
reads it from there, so no reader parses metric names back.

Keys of one epoch (DESIGN.md): ``epoch``, ``train_loss``, ``lr``, ``temperature``, ``train_s``,
``eval_s``, ``encoder_resolution_km``, ``batch_median_km``, ``negative_median_km``,
``negative_min_km``, and per evaluation set ``val_loss``, ``acc_<t>km``, ``median_km``, ``mean_km``,
``score`` and ``ceiling_<t>km``. The first evaluation set's keys are plain; each further set's
are prefixed with its name (``yfcc4k-vitl14_acc_1km``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .atomic import write_json
from .config import OFFLINE

Kind = Literal["loss", "accuracy", "score", "distance", "ceiling", "train", "time"]

OFFLINE_VAL_SET = "val"  # the name of the offline benchmark's validation split
RESOLUTION = "encoder_resolution_km"  # the location encoder's sharpness (geoloc.resolution)
SAMPLER_DISTANCES = ("batch_median_km", "negative_median_km", "negative_min_km")  # per epoch, in km


def accuracy_key(threshold_km: float) -> str:
    """``acc_1km``, ``acc_2500km``, ``acc_0.5km``: the metric key of one threshold."""
    return f"acc_{threshold_km:g}km"


def ceiling_key(threshold_km: float) -> str:
    """``ceiling_1km``: the share of images with any gallery point within the threshold."""
    return f"ceiling_{threshold_km:g}km"


def eval_set_name(spec: str) -> str:
    """The name of an entry of ``data.val``: "val" for the offline benchmark, else the cache's folder name."""
    return OFFLINE_VAL_SET if spec == OFFLINE else Path(spec).expanduser().resolve().name


@dataclass(frozen=True)
class Metric:
    key: str  # as in metrics.jsonl
    kind: Kind
    direction: Literal["max", "min"] | None  # which way is better; None where "best" means nothing
    fraction: bool  # a share in 0..1 (shown in percent)
    tag: str  # TensorBoard tag
    hparam: bool = False  # listed as a metric of TensorBoard's HParams session
    threshold_km: float | None = None  # for accuracies and ceilings
    eval_set: str | None = None  # the evaluation set's name; None for training metrics
    primary: bool = False  # of the first evaluation set (the one ``score`` and the scheduler use)


@dataclass(frozen=True)
class MetricRegistry:
    metrics: tuple[Metric, ...]

    @classmethod
    def build(cls, thresholds_km: list[float], eval_sets: list[str]) -> MetricRegistry:
        """The registry of a run evaluating ``eval_sets`` (names, first = primary) at ``thresholds_km``."""
        out = [
            Metric("train_loss", "loss", "min", False, "train/loss", hparam=True),
            Metric("lr", "train", None, False, "lr"),
            Metric("temperature", "train", None, False, "temperature"),
            Metric("train_s", "time", None, False, "time/train_s"),
            Metric("eval_s", "time", None, False, "time/eval_s"),
            # How finely the location encoder separates places (geoloc.resolution); neither
            # direction is "better" in itself: it is the mechanism, set beside acc_1km.
            Metric(RESOLUTION, "distance", None, False, "encoder/resolution_km", hparam=True),
            # What the batch sampler and the mined negatives did (geoloc.negatives.NegativeDistances).
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
                ("mean_km", "distance", "min", False, None, False),
                ("score", "score", "max", True, None, True),
                *[(ceiling_key(t), "ceiling", None, True, t, False) for t in thresholds],
            ]
            for key, kind, direction, fraction, threshold, hparam in entries:
                tag = "val/loss" if primary and key == "val_loss" else f"val/{prefix}{key}"
                out.append(
                    Metric(prefix + key, kind, direction, fraction, tag, hparam and primary, threshold, name, primary)
                )
        return cls(tuple(out))

    @classmethod
    def for_run(cls, cfg) -> MetricRegistry:
        """The registry of a run configuration (``geoloc.config.JobConfig``)."""
        return cls.build(list(cfg.eval.thresholds_km), [eval_set_name(v) for v in cfg.data.val])

    # -- lookups ---------------------------------------------------------------------------------

    def __iter__(self):
        return iter(self.metrics)

    def __contains__(self, key: str) -> bool:
        return any(m.key == key for m in self.metrics)

    def get(self, key: str) -> Metric | None:
        return next((m for m in self.metrics if m.key == key), None)

    def direction(self, key: str) -> str | None:
        metric = self.get(key)
        return metric.direction if metric else None

    def fraction(self, key: str) -> bool:
        """True for a share in 0..1 (shown in percent); False for any other key, known or not."""
        metric = self.get(key)
        return bool(metric and metric.fraction)

    def tag(self, key: str) -> str:
        """The TensorBoard tag; a key the registry does not know is logged under ``other/``."""
        metric = self.get(key)
        return metric.tag if metric else f"other/{key}"

    def accuracies(self, eval_set: str | None = None) -> list[str]:
        """Accuracy keys of one evaluation set (default: the primary one), finest threshold first."""
        return [m.key for m in self.metrics if m.kind == "accuracy" and self._of(m, eval_set)]

    def ceilings(self, eval_set: str | None = None) -> list[str]:
        return [m.key for m in self.metrics if m.kind == "ceiling" and self._of(m, eval_set)]

    def hparam_tags(self) -> list[str]:
        """Tags of the metrics TensorBoard's HParams tab lists for every trial."""
        return [m.tag for m in self.metrics if m.hparam]

    def progress_columns(self) -> list[str]:
        """Ray's live trial table: the score, the finest and coarsest accuracy and val_loss."""
        accs = self.accuracies()
        return ["epoch", "score", *dict.fromkeys([accs[0], accs[-1]]), "val_loss"]

    @staticmethod
    def _of(metric: Metric, eval_set: str | None) -> bool:
        return metric.primary if eval_set is None else metric.eval_set == eval_set

    # -- the study folder's copy -----------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        write_json(path, [asdict(m) for m in self.metrics])

    @classmethod
    def load(cls, path: str | Path) -> MetricRegistry:
        """Raises OSError or ValueError when the file is missing or not a registry."""
        return cls(tuple(Metric(**entry) for entry in json.loads(Path(path).read_text(encoding="utf-8"))))
