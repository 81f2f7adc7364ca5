"""GeoCLIP (image-to-GPS contrastive learning on cached image features): the harness's first task.

``GeoCLIPTask`` is its entry in the task seam (``geoloc.tasks.seam``); the rest of this folder
is the model (``model.py``), its configuration (``config.py``), one seed's training
(``trainer.py``), gallery retrieval (``evaluate.py``), the encoder's resolution
(``resolution.py``) and the metric registry (``metrics.py``). Torch is imported only when a
trainer is made, so validating a study and analysing one need none.
"""

from __future__ import annotations

from pathlib import Path

from geoloc.common.metrics import MetricRegistry
from geoloc.common.validation import ConfigError
from geoloc.data.config import OFFLINE, OFFLINE_VAL_SET, UNION, eval_set_name
from geoloc.tasks.geoclip.config import GeoCLIPConfig
from geoloc.tasks.geoclip.metrics import geoclip_registry
from geoloc.tasks.seam import Task, TaskTrainer, register


@register
class GeoCLIPTask(Task):
    name = "geoclip"
    config = GeoCLIPConfig
    score_keys = ("eval.thresholds_km", "eval.score_weights", "data.val")
    headline = "acc_1km"
    analysis = "geoclip"

    def registry(self, cfg: GeoCLIPConfig) -> MetricRegistry:
        sets = [eval_set_name(v) for v in cfg.data.val]
        return geoclip_registry(list(cfg.eval.thresholds_km), sets, cfg.eval.regions)

    def prepare(self, cfg: GeoCLIPConfig) -> None:
        """Open every cache and the gallery once (building the offline benchmark if named), then build
        what the sampler and the miner keep beside the training cache (``prepare_sampling``) and what the
        evaluators read (``prepare_evaluation``: the gallery ceiling, regions), so that no trial computes them."""
        from geoloc.data import DataError, load_data
        from geoloc.tasks.geoclip.evaluate import prepare_evaluation
        from geoloc.tasks.geoclip.trainer import prepare_sampling

        try:
            data = load_data(cfg.data)
        except ConfigError as e:
            raise DataError(str(e)) from None
        prepare_sampling(cfg, data)
        prepare_evaluation(cfg.eval, data.val, data.gallery, data.train.path)

    def data_files(self, cfg: GeoCLIPConfig) -> list[Path]:
        """The files of the training and evaluation caches (``geoloc.data.cache``: manifest, features,
        coordinates), of the offline benchmark where it is named, the gallery's file and, with
        ``model.warm_start``, the published weights. Files derived
        from a cache (``geoloc.data.derived``) are left out: each is named by a digest of its inputs."""
        from geoloc.data.cache import MANIFEST
        from geoloc.data.synthetic import benchmark_dir, geoclip_package_dir

        data = cfg.data
        benchmark = benchmark_dir(data.offline)
        caches = [benchmark / "train" if data.train == OFFLINE else Path(data.train)]
        caches += [benchmark / OFFLINE_VAL_SET if spec == OFFLINE else Path(spec) for spec in data.val]
        files = [Path(c).expanduser() / name for c in caches for name in (MANIFEST, "features.npy", "coords.npy")]
        if data.gallery == OFFLINE:
            files.append(benchmark / "gallery.npy")
        elif data.gallery in ("geoclip", UNION):
            files.append(geoclip_package_dir() / "gps_gallery" / "coordinates_100K.csv")
        elif data.gallery not in ("train", UNION):
            files.append(Path(data.gallery).expanduser())
        if cfg.model.warm_start:  # the published weights (geoloc.tasks.geoclip.model.load_geoclip_weights)
            weights = geoclip_package_dir() / "weights"
            files += [weights / f"{n}_weights.pth" for n in ("location_encoder", "image_encoder_mlp", "logit_scale")]
        return files

    def trainer(self, cfg: GeoCLIPConfig, gpu_share: float = 1.0, shared: TaskTrainer | None = None) -> TaskTrainer:
        from geoloc.data import load_data
        from geoloc.tasks.geoclip.trainer import Trainer

        if shared is None:
            return Trainer(cfg, load_data(cfg.data), gpu_share=gpu_share)
        # The seeds share the first one's data and feed: a cache resident on the GPU is held once.
        return Trainer(cfg, shared.data, shared.feed, gpu_share)
