"""Training GeoCLIP on cached features: one epoch, the queue, the loss, resumable state, the epoch loop.

``Trainer`` holds one run's model, optimiser and random streams; ``LockStep`` trains several seeds
of one configuration together; ``train(cfg, run_dir, ...)`` is the one epoch loop (a Ray trial
calls it through ``geoloc.trainable``); ``main`` is the command line ``python -m geoloc.train
CONFIG.yaml --out DIR [--resume] [--seeds K]``, which writes the run folder
(``geoloc.folders.TrialFolder``: metrics.jsonl, curves.jsonl, TensorBoard events, checkpoint.pt) into DIR.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import ConfigError, JobConfig, load_job, parse_job, set_path
from .data import Data, DataError, load_data
from .devices import DeviceError, pick_device
from .evaluate import Evaluator, Gallery, accuracy_curve, curve_thresholds, evaluate_sets
from .events import EventLogger, flatten
from .feed import Feed
from .folders import TrialFolder
from .geo import gps_noise
from .graphs import GraphedModules
from .losses import training_loss
from .metrics import RESOLUTION, MetricRegistry
from .model import GeoCLIP
from .negatives import NegativeDistances, NegativeMiner
from .precision import precision, tf32
from .resolution import ResolutionProbe
from .sampler import BatchSampler, embed_training_set

WARM_START_FEATURE_DIM = 768  # the published image head reads CLIP ViT-L/14 features
DIVERGENCE_CHECK_STEPS = 64  # steps between looks at the losses (each look waits for the GPU)


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite: the trial stops with this reason instead of training on garbage."""

    def __init__(self, message: str, epochs_done: int):
        super().__init__(message)
        self.epochs_done = epochs_done

    def __reduce__(self):  # Ray copies and pickles a trial's exception: rebuilt from both arguments
        return type(self), (str(self), self.epochs_done)


class CheckpointMismatch(ValueError):
    """A checkpoint from a different model configuration."""


def cpu_share() -> int:
    """CPUs this process was given: Ray sets OMP_NUM_THREADS to a trial's CPUs; else the affinity mask."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return int(omp) if omp.isdigit() and int(omp) > 0 else len(os.sched_getaffinity(0))


class Resumable:
    """Checkpoint files of anything with ``state_dict``, ``load_state_dict`` and ``epoch``."""

    epoch: int

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Atomic: a crash while saving leaves the previous checkpoint intact."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | Path) -> None:
        # On the CPU: the generator state must stay there; load_state_dict puts the rest on the device.
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def restore_newest(self, paths: Iterable[Path | None]) -> None:
        """Load whichever of these checkpoints is ahead of this trainer; torn or missing files are skipped."""
        for path in paths:
            if path is not None and checkpoint_epoch(path) > self.epoch:
                self.load(path)


class Trainer(Resumable):
    """Model, optimiser, schedule, queue and random streams of one run; ``state_dict`` resumes it exactly.

    On a GPU a step waits for the GPU nowhere: losses stay on the device (looked at every
    ``DIVERGENCE_CHECK_STEPS`` steps), the queue's fill level is a host int, batches come from
    ``geoloc.feed``. ``gpu_share`` is the trial's share of its card (Ray's ``resources.gpu``): the
    process may allocate that share of the card's memory, and the feed sizes itself to it.
    """

    def __init__(self, cfg: JobConfig, data: Data | None = None, feed: Feed | None = None, gpu_share: float = 1.0):
        self.cfg = cfg
        self.data = data or load_data(cfg.data)
        self.device = pick_device(cfg.train.device, "train.device")
        torch.set_num_threads(cfg.train.threads or cpu_share())
        if self.device.type == "cuda":
            # Trials packed onto one card each keep to their share; a reused worker starts from an empty cache.
            index = torch.cuda.current_device() if self.device.index is None else self.device.index
            torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_share), index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            self.model = GeoCLIP(cfg.model, self.data.train.feature_dim, cfg.train.queue_size)
        if cfg.model.warm_start:
            if self.data.train.feature_dim != WARM_START_FEATURE_DIM:
                raise ConfigError(
                    f"model.warm_start: needs {WARM_START_FEATURE_DIM}-d features (CLIP ViT-L/14), "
                    f"the training cache {self.data.train.path} has {self.data.train.feature_dim}"
                )
            self.model.load_geoclip_weights()
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            fused=self.device.type == "cuda" or None,  # one kernel for all parameters; the CPU keeps its default
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=cfg.train.lr_gamma)
        # One CPU stream for shuffling, view choice and GPS noise: the same seed gives the same run anywhere.
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        # The embedding noise (a batch+queue x 512 draw per step) is drawn where it is used: on a GPU
        # a stream of its own, seeded alike and checkpointed; on the CPU the one stream above.
        self.device_generator = (
            torch.Generator(self.device).manual_seed(cfg.train.seed) if self.device.type != "cpu" else self.generator
        )
        self.epoch = 0
        batch, mined = cfg.train.batch_size, cfg.train.negatives.mined
        self.graphs = GraphedModules(
            {
                self.model.image_head: (batch, self.data.train.feature_dim),
                self.model.location_encoder: (batch + cfg.train.queue_size + batch * mined, 2),
            },
            enabled=cfg.train.cuda_graphs,
        )
        self.feed = feed or Feed.for_run(self.data.train, self.device, gpu_share)
        self.train_coords = self.feed.coords
        self.sampler = BatchSampler(cfg.train.batches, batch, self.data.train, self.generator)
        self.miner = NegativeMiner.for_run(cfg.train.negatives, self.data) if mined else None
        self.distances = NegativeDistances()
        negatives = Evaluator.fixed_negatives(self.data.train.source.coords, cfg.eval.val_negatives)
        self.gallery = Gallery(self.data.gallery, self.device, cfg.eval.gallery_chunk)
        self.evaluators = {
            name: Evaluator(cfg.eval, cache, self.gallery, negatives, self.device)
            for name, cache in self.data.val.items()
        }
        self.curve_km = curve_thresholds(cfg.eval.thresholds_km)
        self.curves: dict[str, np.ndarray] = {}  # the last evaluation's error curve per set, at curve_km
        n_probe = cfg.eval.resolution_points
        self.probe = ResolutionProbe(self.data.gallery, n_probe) if n_probe else None

    # -- one epoch -------------------------------------------------------------------------------

    def precision(self):
        """The context of every step and evaluation: ``train.precision`` (``geoloc.precision``)."""
        return precision(self.cfg.train.precision, self.device)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor this trainer holds, by name: model, optimiser state, feed and evaluation."""
        yield from (("model." + k, v) for k, v in self.model.state_dict().items())
        for i, state in enumerate(self.optimizer.state.values()):
            yield from ((f"optimizer.{i}.{k}", v) for k, v in state.items() if isinstance(v, torch.Tensor))
        yield from self.feed.tensors()
        yield "gallery.coords", self.gallery.coords_t
        for name, evaluator in self.evaluators.items():
            yield f"eval.{name}.coords", evaluator.coords_t
            yield f"eval.{name}.negatives", evaluator.negatives_t

    def batches(self):
        """(indices, views) of the next epoch's batches (``geoloc.sampler``): one cached view per image,
        indices sorted within a batch so reads go forward."""
        embed = embed_training_set(self.model, self.data.train, self.device, self.precision)
        return self.sampler.epoch(self.epoch + 1, embed)

    def train_step(self, features: torch.Tensor, gps: torch.Tensor, idx: np.ndarray | None = None) -> torch.Tensor:
        """One optimiser step on a batch (both on the device) of the training rows ``idx`` (needed to mine
        negatives); the loss, a 0-d tensor on the device."""
        noise = self.cfg.train.noise
        model = self.model
        queue = model.queue.contents()
        mined = None
        if self.miner is not None:
            if idx is None:
                raise ValueError("train.negatives.mined needs the batch's training rows (idx) to mine from")
            mined = self.miner.coords(self.miner.draw(idx, self.generator), self.device)
        self.distances.add(gps, torch.cat([gps, queue]), mined)
        if noise.target == "gps":
            locations = torch.cat(
                [gps_noise(gps, noise.batch_sigma, self.generator), gps_noise(queue, noise.queue_sigma, self.generator)]
            )
        else:
            locations = torch.cat([gps, queue])
        n_shared = len(locations)
        if mined is not None:
            locations = torch.cat([locations, mined.flatten(0, 1)])
        with self.precision():
            image_emb = model.encode_images(features, self.graphs.run)
            location_emb = model.encode_locations(locations, self.graphs.run)
            mined_emb = location_emb[n_shared:].unflatten(0, mined.shape[:2]) if mined is not None else None
            location_emb = location_emb[:n_shared]
            if noise.target == "embedding":
                location_emb = self._noisy_embeddings(location_emb, len(gps))
            loss = training_loss(self.cfg.train.loss, image_emb, location_emb, model.logit_scale, mined_emb)
        self.optimizer.zero_grad(set_to_none=True)
        with tf32(self.cfg.train.precision == "tf32"):  # the backward's products too (autocast is forward-only)
            loss.backward()
        self.optimizer.step()
        model.clamp_logit_scale()
        model.queue.push(gps)
        return loss.detach()

    def _noisy_embeddings(self, emb: torch.Tensor, n_batch: int) -> torch.Tensor:
        noise = self.cfg.train.noise
        sigma = torch.full((len(emb), 1), noise.queue_sigma, device=emb.device)
        sigma[:n_batch] = noise.batch_sigma
        drawn = torch.randn(emb.shape, generator=self.device_generator, device=emb.device) * sigma
        return F.normalize(emb + drawn.to(emb.dtype), dim=-1)

    def _check_finite(self, losses: list[torch.Tensor]) -> None:
        """DivergenceError naming the first NaN or infinite loss among ``losses`` (this epoch's)."""
        stacked = torch.stack(losses)
        bad = torch.nonzero(~torch.isfinite(stacked))
        if len(bad):
            value = stacked[bad[0, 0]].item()
            raise DivergenceError(f"training loss is {value} at epoch {self.epoch + 1}; the trial diverged", self.epoch)

    def train_one_epoch(self, progress: bool = False) -> dict[str, float]:
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        losses, start = [], time.perf_counter()
        n_steps = -(-len(self.data.train) // self.cfg.train.batch_size)
        rows: deque[np.ndarray] = deque()  # the feed yields batches in the order it takes them: a FIFO pairs them

        def noted():
            for idx, views in self.batches():
                rows.append(idx)
                yield idx, views

        batches = self.feed.epoch(noted())
        bar = tqdm(batches, total=n_steps, desc=f"epoch {self.epoch + 1}", disable=not progress, leave=False)
        for step, (features, gps) in enumerate(bar, start=1):
            losses.append(self.train_step(features, gps, rows.popleft()))
            if step % DIVERGENCE_CHECK_STEPS == 0:
                self._check_finite(losses[-DIVERGENCE_CHECK_STEPS:])
                bar.set_postfix(loss=f"{losses[-1].item():.3f}")
        self._check_finite(losses)
        self.scheduler.step()
        self.epoch += 1
        return {
            "train_loss": float(np.mean(torch.stack(losses).double().cpu().numpy())),
            "lr": lr,
            "temperature": self.model.temperature,
            **self.distances.result(),
            "train_s": time.perf_counter() - start,
        }

    def evaluate(self) -> dict[str, float]:
        """Metrics of every evaluation set (the first set's keys plain, the others prefixed with their
        name) and the encoder's resolution; each set's fine error curve is kept in ``self.curves``."""
        start = time.perf_counter()
        metrics = {}
        results = evaluate_sets(self.model, list(self.evaluators.values()), self.precision)
        for i, (name, result) in enumerate(zip(self.evaluators, results, strict=True)):
            prefix = "" if i == 0 else f"{name}_"
            metrics.update({prefix + k: v for k, v in result.metrics.items()})
            self.curves[name] = accuracy_curve(result.errors_km, self.curve_km)
        if self.probe is not None:
            metrics[RESOLUTION] = self.probe(self.model)
        metrics["eval_s"] = time.perf_counter() - start
        return metrics

    def run_epoch(self, progress: bool = False) -> dict[str, float]:
        """Train one epoch and evaluate: the flat metrics dict that goes to every logger."""
        metrics = self.train_one_epoch(progress)
        metrics.update(self.evaluate())
        return {"epoch": self.epoch, **metrics}

    def evaluate_at_start(self) -> dict[str, float]:
        """The row of the model as it starts (``eval.at_start``): epoch 0, the temperature and every
        evaluation metric, no training keys. Evaluation draws from no training stream (the
        evaluator's and the probe's samples are fixed), so the epochs after it are unchanged."""
        return {"epoch": self.epoch, "temperature": self.model.temperature, **self.evaluate()}

    # -- resumable state -------------------------------------------------------------------------

    def signature(self) -> dict:
        """What a checkpoint must match to load: the model's shape, not the run's hyperparameters."""
        return {
            "model": self.cfg.model.model_dump(mode="json"),
            "feature_dim": self.data.train.feature_dim,
            "queue_size": self.cfg.train.queue_size,
        }

    def state_dict(self) -> dict:
        state = {
            "signature": self.signature(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
        }
        if sampler := self.sampler.state_dict():
            state["sampler"] = sampler
        if self.device_generator is not self.generator:
            state["device_generator"] = self.device_generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("signature") != self.signature():
            raise CheckpointMismatch(
                f"checkpoint was written for {state.get('signature')}, this run is {self.signature()}; "
                "refusing to load it partly"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        try:
            self.sampler.load_state_dict(state.get("sampler", {}))
        except ValueError as e:
            raise CheckpointMismatch(f"refusing to load the checkpoint: {e}") from None
        if self.device_generator is not self.generator and "device_generator" in state:
            # Only a checkpoint from a GPU has it; resumed on another kind of device, the
            # embedding noise continues from that device's seeded stream instead.
            self.device_generator.set_state(state["device_generator"])
        self.epoch = state["epoch"]

    def curve_rows(self, epoch: int) -> list[dict]:
        """The last evaluation's error curves as ``curves.jsonl`` rows."""
        km = self.curve_km.tolist()
        seed = self.cfg.train.seed
        return [
            {"epoch": epoch, "seed": seed, "set": name, "km": km, "acc": acc.tolist()}
            for name, acc in self.curves.items()
        ]


class LockStep(Resumable):
    """One configuration trained with several seeds (``train.seed``, ``train.seed + 1``, ...) epoch by
    epoch together, each a ``Trainer`` on the same data: what a trial with ``search.seeds`` > 1 runs.

    Its epoch row is the mean over the seeds of every metric (the time keys are summed: the
    epoch took that long); one seed's row is that seed's own, and its checkpoint is that
    ``Trainer``'s, so ``seeds=1`` is exactly a single run.
    """

    def __init__(self, cfg: JobConfig, seeds: int = 1, gpu_share: float = 1.0):
        data = load_data(cfg.data)
        self.seeds = [cfg.train.seed + i for i in range(seeds)]
        first = Trainer(with_seed(cfg, self.seeds[0]), data, gpu_share=gpu_share)
        # The seeds share the first one's feed: a cache resident on the GPU is held once.
        self.trainers = [first] + [Trainer(with_seed(cfg, s), data, first.feed, gpu_share) for s in self.seeds[1:]]
        self.registry = MetricRegistry.for_run(cfg)

    @property
    def epoch(self) -> int:
        return self.trainers[0].epoch

    def run_epoch(self, progress: bool = False) -> tuple[dict, list[dict], list[dict]]:
        """One epoch of every seed: (the mean row, each seed's row in ``self.seeds`` order, the curves' rows)."""
        return self._each(lambda trainer: trainer.run_epoch(progress))

    def evaluate_at_start(self) -> tuple[dict, list[dict], list[dict]]:
        """Every seed's epoch-0 row (``Trainer.evaluate_at_start``), in the shape of ``run_epoch``."""
        return self._each(Trainer.evaluate_at_start)

    def _each(self, step: Callable[[Trainer], dict]) -> tuple[dict, list[dict], list[dict]]:
        rows, curves = [], []
        for trainer in self.trainers:
            rows.append(step(trainer))
            curves += trainer.curve_rows(trainer.epoch)
        mean = {key: self._combine(key, [row[key] for row in rows]) for key in rows[0]}
        return mean, rows, curves

    def _combine(self, key: str, values: list[float]) -> float:
        metric = self.registry.get(key)
        if metric is not None and metric.kind == "time":
            return math.fsum(values)
        if all(v == values[0] for v in values):  # epoch, lr, one seed: exactly the value, not a rounded mean
            return values[0]
        return math.fsum(values) / len(values)

    def state_dict(self) -> dict:
        if len(self.trainers) == 1:
            return self.trainers[0].state_dict()
        return {"epoch": self.epoch, "seeds": [t.state_dict() for t in self.trainers]}

    def load_state_dict(self, state: dict) -> None:
        if len(self.trainers) == 1:
            self.trainers[0].load_state_dict(state)
            return
        saved = state.get("seeds") or []
        if len(saved) != len(self.trainers):
            raise CheckpointMismatch(
                f"checkpoint holds {len(saved) or 1} seed(s), this run trains {len(self.trainers)}; refusing to load it"
            )
        for trainer, seed_state in zip(self.trainers, saved, strict=True):
            trainer.load_state_dict(seed_state)


def prepare_sampling(cfg: JobConfig, data: Data) -> None:
    """Build what the run's sampler and miner keep beside the training cache (neighbour lists, near
    lists, the semivariogram's range) and check them against the data: the launcher calls it once
    before trials start, so they share the files and a bad combination is refused up front
    (ConfigError naming the key)."""
    BatchSampler(cfg.train.batches, cfg.train.batch_size, data.train, torch.Generator())
    if cfg.train.negatives.mined:
        NegativeMiner.for_run(cfg.train.negatives, data)


def with_seed(cfg: JobConfig, seed: int) -> JobConfig:
    """The same run configuration with another ``train.seed`` (validated again, as geoloc.config asks)."""
    return parse_job(set_path(cfg.model_dump(mode="json"), "train.seed", seed))


def checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint file holds; -1 for a missing, torn or foreign file."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return -1


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
    epoch it logs TensorBoard, appends ``metrics.jsonl`` and ``curves.jsonl``, saves
    ``checkpoint.pt``, then calls ``on_epoch(metrics, checkpoint)`` (a trial reports to Ray there).
    ``seeds`` > 1 trains that many seeds in lock-step (``LockStep``): the metrics are their mean,
    and each seed's own go to ``seeds.jsonl`` and its TensorBoard folder ``seed_<s>/``.
    ``resume`` continues from the folder's own checkpoint, so no epoch runs twice. ``hparams`` are
    what TensorBoard's HParams tab shows (default: the whole configuration, flattened); ``context``
    is added to every metrics row (the trial's node). ``gpu_share`` is the trial's share of its GPU (``Trainer``).

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
    logger = EventLogger(folder.path, hparams, runs.registry)
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
    """One epoch's line on the command line; the epoch-0 row (``eval.at_start``) has no training keys."""
    accs = " ".join(f"{k.removeprefix('acc_')}={m[k]:.3f}" for k in registry.accuracies())
    trained = "train_loss" in m
    loss = f"train_loss={m['train_loss']:.4f} " if trained else ""
    took = f"{m['train_s']:.1f}s + {m['eval_s']:.1f}s" if trained else f"before training, {m['eval_s']:.1f}s"
    return (
        f"epoch {m['epoch']}: {loss}val_loss={m['val_loss']:.4f} "
        f"acc {accs} median={m['median_km']:.0f}km score={m['score']:.4f} ({took})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoloc.train", description="Train GeoCLIP once, without Ray.")
    parser.add_argument("config", help="run configuration YAML (see geoloc/config.py for every key)")
    parser.add_argument("--out", required=True, help="output folder: metrics.jsonl, TensorBoard events, checkpoint.pt")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument(
        "--seeds", type=int, default=1, help="train K seeds (train.seed, +1, ...) in lock-step; metrics are their mean"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_job(args.config)
    except ConfigError as e:
        print(f"error: {args.config}: {e}" if not str(e).startswith(args.config) else f"error: {e}", file=sys.stderr)
        return 2
    try:
        registry = MetricRegistry.for_run(cfg)
        if args.seeds < 1:
            raise ConfigError(f"--seeds: must be >= 1, got {args.seeds}")
        metrics = train(
            cfg,
            args.out,
            seeds=args.seeds,
            resume=args.resume,
            progress=True,
            on_epoch=lambda m, _: print(format_metrics(m, registry), flush=True),
            on_start=lambda m: print(format_metrics(m, registry), flush=True),
        )
    except (ConfigError, DataError, DeviceError, CheckpointMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {args.out} (metrics.jsonl, checkpoint.pt; tensorboard --logdir {args.out})")
    return 0 if metrics else 1


if __name__ == "__main__":
    sys.exit(main())
