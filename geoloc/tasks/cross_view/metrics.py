"""The cross-view task's metric registry: the keys of its epochs and evaluations.

Keys of one epoch: ``epoch``, ``train_loss``, ``lr``, ``temperature``, ``train_s``, ``eval_s``, and
of the evaluation (one set, the data set's validation split, named ``val``): ``val_loss``,
``recall_<k>`` for each k of ``eval.recall_at``, ``recall_top1pct``, ``hit_rate`` (VIGOR), the
top-1 reference's great-circle error ``median_km`` and ``mean_km``, ``acc_<t>km`` for each of
``eval.thresholds_km`` (the distance scale GeoCLIP's studies use), and ``score`` (the weighted mean
of ``eval.score_weights``).
"""

from __future__ import annotations

from geoloc.common.metrics import Metric, MetricRegistry, accuracy_key
from geoloc.tasks.cross_view.config import HIT_RATE, RECALL_TOP1PCT, CrossViewConfig, recall_key

EVAL_SET = "val"


def cross_view_registry(cfg: CrossViewConfig) -> MetricRegistry:
    """The registry of a run of this configuration."""

    def evaluation(key, kind, direction, fraction, hparam=True, threshold=None):
        return Metric(key, kind, direction, fraction, f"val/{key}", hparam, threshold, EVAL_SET, True)

    vigor = cfg.data.layout == "vigor"
    return MetricRegistry(
        (
            Metric("train_loss", "loss", "min", False, "train/loss", hparam=True),
            Metric("lr", "train", None, False, "lr"),
            Metric("temperature", "train", None, False, "temperature"),
            Metric("train_s", "time", None, False, "time/train_s"),
            Metric("eval_s", "time", None, False, "time/eval_s"),
            Metric("val_loss", "loss", "min", False, "val/loss", True, None, EVAL_SET, True),
            *[evaluation(recall_key(k), "recall", "max", True) for k in cfg.eval.recall_at],
            evaluation(RECALL_TOP1PCT, "recall", "max", True),
            *([evaluation(HIT_RATE, "recall", "max", True)] if vigor else []),
            evaluation("median_km", "distance", "min", False),
            evaluation("mean_km", "distance", "min", False, hparam=False),
            *[evaluation(accuracy_key(t), "accuracy", "max", True, True, t) for t in sorted(cfg.eval.thresholds_km)],
            evaluation("score", "score", "max", True),
        )
    )


def weighted_score(metrics: dict[str, float], cfg: CrossViewConfig) -> float:
    """``score``: the weighted mean of the metrics ``eval.score_weights`` names."""
    weights = cfg.eval.score_weights
    return sum(w * metrics[key] for key, w in weights.items()) / sum(weights.values())
