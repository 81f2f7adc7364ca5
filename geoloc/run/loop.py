"""The one epoch loop of the project, for any task: ``train(cfg, run_dir, ...) -> metrics``.

``python -m geoloc.train`` (``geoloc/train.py``) and every Ray trial (``geoloc.tuning.trainable``)
run it; it reaches the task only through ``LockStep`` and the task seam.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from geoloc.common.metrics import MetricRegistry
from geoloc.run.events import EventLogger, flatten
from geoloc.run.lockstep import LockStep
from geoloc.study.config import JobConfig
from geoloc.study.folders import TrialFolder
from geoloc.study.predictions import write_predictions


def train(
    cfg: JobConfig,
    run_dir: str | Path,
    *,
    seeds: int = 1,
    resume: bool = False,
    on_epoch: Callable[[dict, Path], None] | None = None,
    on_start: Callable[[dict], None] | None = None,
    hparams: dict | None = None,
    context: dict | None = None,
    progress: bool = False,
    gpu_share: float = 1.0,
) -> dict[str, float]:
    """Train ``cfg.train.epochs`` epochs into the run folder ``run_dir``; returns the last epoch's metrics.

    The one epoch loop of the project: ``python -m geoloc.train`` and every Ray trial run it. Each
    epoch it logs TensorBoard, appends ``metrics.jsonl`` and ``curves.jsonl``, writes the per-image
    predictions (``predictions/``, where the task keeps them: ``geoloc.study.predictions``), saves
    ``checkpoint.pt``, then calls ``on_epoch(metrics, checkpoint)`` (a trial reports to Ray there).
    ``seeds`` > 1 trains that many seeds in lock-step (``LockStep``): the metrics are their mean,
    and each seed's own go to ``seeds.jsonl`` and its TensorBoard folder (``TrialFolder.seed_dir``).
    TensorBoard's events go to ``TrialFolder.events_dir`` (a trial's named run, from its ``trial.json``).
    ``resume`` continues from the folder's own checkpoint, so no epoch runs twice. ``hparams`` are
    what TensorBoard's HParams tab shows (default: the whole configuration, flattened); ``context``
    is added to every metrics row (the trial's node). ``gpu_share`` is the trial's share of its GPU
    (the task's trainer keeps to it).

    With ``eval.at_start`` a run that starts fresh first evaluates the model as it starts and
    records that as epoch 0 (every log above, TensorBoard step 0), then calls ``on_start(metrics)``;
    it is neither checkpointed nor passed to ``on_epoch``, so Ray's scheduler and the sampler see
    trained epochs only. A resumed run keeps the epoch-0 row it wrote when it started.
    """
    folder = TrialFolder(run_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    runs = LockStep(cfg, seeds, gpu_share)
    runs.restore_newest([folder.checkpoint if resume else None])
    if runs.epoch:
        folder.truncate_after(runs.epoch)
    else:
        folder.clear_metrics()
    folder.write_config(cfg.model_dump(mode="json"))
    hparams = flatten(cfg.model_dump(mode="json")) if hparams is None else hparams
    logger = EventLogger(folder.events_dir(), hparams, runs.registry)
    seed_loggers = (
        [EventLogger(folder.seed_dir(seed), {**hparams, "seed": seed}, runs.registry) for seed in runs.seeds]
        if seeds > 1
        else []
    )

    def record(mean: dict, per_seed: list[dict], curves: list[dict]) -> dict:
        """Log one epoch's rows everywhere (TensorBoard, seeds, curves, metrics); the trial's row."""
        metrics = {**mean, **(context or {})}
        # seed_loggers is empty for one seed: its row is the trial's, logged once.
        for each, row in [(logger, metrics), *zip(seed_loggers, per_seed, strict=False)]:
            each.log(row, row["epoch"])
            if row["epoch"] == cfg.train.epochs:
                each.close(finished=True)  # before on_epoch: Ray may end a trial at its last report
        if seed_loggers:
            for seed, row in zip(runs.seeds, per_seed, strict=True):
                folder.append(folder.SEEDS, {**row, "seed": seed})
        for row in curves:
            folder.append(folder.CURVES, row)
        if (predictions := runs.predictions()) is not None:
            write_predictions(folder, metrics["epoch"], *predictions)
        folder.append_metrics(metrics)
        return metrics

    metrics: dict[str, float] = {}
    try:
        if cfg.eval.at_start and runs.epoch == 0:  # after clear_metrics above: a restart writes it anew
            start = record(*runs.evaluate_at_start())
            if on_start:
                on_start(start)
        while runs.epoch < cfg.train.epochs:
            metrics = record(*runs.run_epoch(progress))
            runs.save(folder.checkpoint)
            if on_epoch:
                on_epoch(metrics, folder.checkpoint)
    finally:
        for each in [logger, *seed_loggers]:
            each.close(finished=runs.epoch == cfg.train.epochs)
        if runs.trainers[0].device.type == "cuda":
            # Ray reuses this process for the next trial: hand the cached blocks back to the card.
            del runs
            torch.cuda.empty_cache()
    return metrics


def format_metrics(m: dict, registry: MetricRegistry) -> str:
    """One epoch's line on the command line: every metric with a direction of the training and of the
    primary evaluation set, in the registry's order; the epoch-0 row (``eval.at_start``) has no training keys."""
    training = [x.key for x in registry if x.direction and x.eval_set is None]
    keys = [k for k in training + registry.headline() if k in m]
    values = " ".join(f"{k}={m[k]:.4g}" for k in keys)
    took = f"{m['train_s']:.1f}s + {m['eval_s']:.1f}s" if "train_s" in m else f"before training, {m['eval_s']:.1f}s"
    return f"epoch {m['epoch']}: {values} ({took})"
