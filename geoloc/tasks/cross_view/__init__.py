"""Sample4Geo's cross-view geo-localisation ("SampleGeo" in the thesis): the harness's second task.

Ground-level queries (street-view panoramas) are matched against a database of aerial tiles
(references) with one encoder for both views, a symmetric InfoNCE loss, and hard negatives from
GPS neighbours and Dynamic Similarity Sampling (``train.batches``). ``CrossViewTask`` is its
entry in the task seam (``geoloc.tasks.seam``); the rest of this folder is its configuration
(``config.py``), registry (``metrics.py``), encoders (``model.py``), data and inputs (``data.py``,
``encode.py``), pair batches (``batches.py``), retrieval metrics (``retrieval.py``) and one seed's
training (``trainer.py``). Torch is imported only when a trainer is made.
"""

from __future__ import annotations

from pathlib import Path

from geoloc.common.metrics import MetricRegistry
from geoloc.tasks.cross_view.config import CrossViewConfig
from geoloc.tasks.cross_view.metrics import cross_view_registry
from geoloc.tasks.seam import Task, TaskTrainer, register


@register
class CrossViewTask(Task):
    name = "cross_view"
    config = CrossViewConfig
    score_keys = (
        "eval.recall_at",
        "eval.thresholds_km",
        "eval.score_weights",
        "data.layout",
        "data.root",
        "data.vigor",
    )
    headline = "recall_1"

    def registry(self, cfg: CrossViewConfig) -> MetricRegistry:
        return cross_view_registry(cfg)

    def prepare(self, cfg: CrossViewConfig) -> None:
        """Read and check both splits (building the offline benchmark if named), extract cached mode's
        features, and build the GPS lists the sampler keeps, once before any trial. A bad file is a
        ``DataError``, a bad key (the weights file, the lists' range) a ``ConfigError`` naming it."""
        from geoloc.common.devices import pick_device
        from geoloc.tasks.cross_view.data import load_crossview_data, prepare_sampling

        data = load_crossview_data(cfg, pick_device(cfg.train.device, "train.device"), progress=True)
        prepare_sampling(cfg, data)

    def data_files(self, cfg: CrossViewConfig) -> list[Path]:
        from geoloc.tasks.cross_view.data import data_files

        return data_files(cfg)

    def trainer(self, cfg: CrossViewConfig, gpu_share: float = 1.0, shared: TaskTrainer | None = None) -> TaskTrainer:
        from geoloc.tasks.cross_view.trainer import CrossViewTrainer

        return CrossViewTrainer(cfg, shared.data if shared is not None else None, gpu_share)

    def describe(self, cfg: CrossViewConfig) -> str:
        mode = "cached features, heads per view" if cfg.cached else "end to end"
        return f"task cross_view: {cfg.data.layout} data, {cfg.model.backbone.name} ({mode})"
