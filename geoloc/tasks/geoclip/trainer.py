"""One seed of a GeoCLIP run on cached features: one epoch, the queue, the loss, evaluation, resumable state.

``Trainer`` holds one run's model, optimiser and random streams (the task seam's ``TaskTrainer``);
``prepare_sampling`` builds, once per study, what its sampler and miner keep beside the cache.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from geoloc.common.devices import claim_device
from geoloc.common.validation import ConfigError
from geoloc.data import Data, load_data
from geoloc.geo import apply_gps_noise, draw_gps_noise
from geoloc.parts.feed import Feed
from geoloc.parts.graphs import CapturedSteps, GraphedModules
from geoloc.parts.losses import training_loss
from geoloc.parts.negatives import MinedBank, NegativeDistances, NegativeMiner, resolve_km
from geoloc.parts.precision import check_precision, precision, tf32
from geoloc.parts.resumable import (
    CheckpointMismatch,
    DivergenceError,
    Resumable,
    load_optimizer,
    portable_state,
)
from geoloc.parts.sampler import BatchSampler, embed_training_set
from geoloc.tasks.geoclip.config import GeoCLIPConfig
from geoloc.tasks.geoclip.evaluate import (
    Evaluation,
    Evaluator,
    Gallery,
    accuracy_curve,
    curve_thresholds,
    evaluate_sets,
)
from geoloc.tasks.geoclip.metrics import NOISE_BATCH_SIGMA, NOISE_QUEUE_SIGMA, RESOLUTION
from geoloc.tasks.geoclip.model import GeoCLIP
from geoloc.tasks.geoclip.resolution import ResolutionProbe

WARM_START_FEATURE_DIM = 768  # the published image head reads CLIP ViT-L/14 features
DIVERGENCE_CHECK_STEPS = 64  # steps between looks at the losses (each look waits for the GPU)


class Trainer(Resumable):
    """Model, optimiser, schedule, queue and random streams of one run; ``state_dict`` resumes it exactly.

    On a GPU a step waits for the GPU nowhere: losses stay on the device (looked at every
    ``DIVERGENCE_CHECK_STEPS`` steps), the queue's fill level is a host int, batches come from
    ``geoloc.parts.feed``. ``gpu_share`` is the trial's share of its card (Ray's ``resources.gpu``): the
    process may allocate that share of the card's memory, and the feed sizes itself to it.
    """

    def __init__(self, cfg: GeoCLIPConfig, data: Data | None = None, feed: Feed | None = None, gpu_share: float = 1.0):
        self.cfg = cfg
        self.data = data or load_data(cfg.data)
        self.device = claim_device(cfg.train.device, "train.device", cfg.train.threads, gpu_share)
        check_precision(cfg.train.precision, self.device)
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
        # The whole step as one CUDA graph (train.graph_step): Adam then reads its learning rate from a
        # device tensor, which the scheduler fills in place, and keeps its step count on the device.
        self.steps = CapturedSteps(cfg.train.graph_step and self.device.type == "cuda")
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=torch.tensor(cfg.train.lr, device=self.device) if self.steps.enabled else cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            fused=self.device.type == "cuda" or None,  # one kernel for all parameters; the CPU keeps its default
            capturable=self.steps.enabled,
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
        bank = mined and cfg.train.negatives.bank  # mined embeddings looked up, not encoded with the batch
        self.graphs = GraphedModules(
            {
                self.model.image_head: (batch, self.data.train.feature_dim),
                self.model.location_encoder: (batch + cfg.train.queue_size + batch * mined * (not bank), 2),
            },
            enabled=cfg.train.cuda_graphs and not self.steps.enabled,  # a captured step holds its modules
        )
        self.feed = feed or Feed.for_run(self.data.train, self.device, gpu_share)
        self.train_coords = self.feed.coords
        self.sampler = BatchSampler(cfg.train.batches, batch, self.data.train, self.generator)
        self.miner = NegativeMiner.for_run(cfg.train.negatives, self.data) if mined else None
        self.bank = MinedBank(self.miner.pool_t, cfg.train.negatives.bank_refresh_steps, self.device) if bank else None
        self.distances = NegativeDistances()
        self.mask_km = resolve_km(cfg.train.negatives.mask_within_km or 0.0, "mask_within_km", self.data.train)
        negatives = Evaluator.fixed_negatives(self.data.train.source.coords, cfg.eval.val_negatives)
        self.gallery = Gallery(self.data.gallery, self.device, cfg.eval.gallery_chunk, self.data.train.path)
        self.evaluators = {
            name: Evaluator(cfg.eval, cache, self.gallery, negatives, self.device)
            for name, cache in self.data.val.items()
        }
        self.curve_km = curve_thresholds(cfg.eval.thresholds_km)
        self.curves: dict[str, np.ndarray] = {}  # the last evaluation's error curve per set, at curve_km
        self.evaluations: dict[str, Evaluation] = {}  # the last evaluation's per-image result per set
        n_probe = cfg.eval.resolution_points
        self.probe = ResolutionProbe(self.data.gallery, n_probe) if n_probe else None

    # -- one epoch -------------------------------------------------------------------------------

    def precision(self):
        """The context of every step: ``train.precision`` (``geoloc.parts.precision``)."""
        return precision(self.cfg.train.precision, self.device)

    def eval_precision(self):
        """The context of every pass without gradient: ``train.precision``, but fp32 on a CPU."""
        return precision(self.cfg.train.precision, self.device, part="eval")

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor this trainer holds, by name: model, optimiser state, feed and evaluation."""
        yield from (("model." + k, v) for k, v in self.model.state_dict().items())
        for i, state in enumerate(self.optimizer.state.values()):
            yield from ((f"optimizer.{i}.{k}", v) for k, v in state.items() if isinstance(v, torch.Tensor))
        yield from self.feed.tensors()
        yield "gallery.coords", self.gallery.coords_t
        if self.bank is not None:
            yield "bank.coords", self.bank.coords
        for name, evaluator in self.evaluators.items():
            yield f"eval.{name}.coords", evaluator.coords_t
            yield f"eval.{name}.negatives", evaluator.negatives_t

    def batches(self):
        """(indices, views) of the next epoch's batches (``geoloc.parts.sampler``): one cached view per image,
        indices sorted within a batch so reads go forward."""
        embed = embed_training_set(self.model, self.data.train, self.device, self.eval_precision)
        return self.sampler.epoch(self.epoch + 1, embed)

    def train_step(self, features: torch.Tensor, gps: torch.Tensor, idx: np.ndarray | None = None) -> torch.Tensor:
        """One optimiser step on a batch (both on the device) of the training rows ``idx`` (needed to mine
        negatives); the loss, a 0-d tensor on the device. The host draws (mined rows, GPS noise, on the CPU
        generator in that order) come first; the device work is ``_device_step``, replayed from a CUDA graph
        where ``train.graph_step`` can hold it (a full batch and queue, no mined negatives, no mask, no
        embedding noise: ``geoloc.parts.graphs.CapturedSteps``)."""
        noise, queue = self.cfg.train.noise, self.model.queue
        sigmas = noise.sigmas(self.epoch + 1)
        drawn = None
        if self.miner is not None:
            if idx is None:
                raise ValueError("train.negatives.mined needs the batch's training rows (idx) to mine from")
            drawn = self.miner.draw(idx, self.generator)
        draws, n_queue = (None, None), len(queue.contents())
        if noise.target == "gps":
            draws = tuple(
                draw_gps_noise(n, sigma, self.generator, self.device)
                for n, sigma in zip((len(gps), n_queue), sigmas, strict=True)
            )
        step = functools.partial(self._device_step, sigmas=sigmas, drawn=drawn)
        full = len(gps) == self.cfg.train.batch_size and n_queue == queue.size
        if full and drawn is None and not self.mask_km and noise.target == "gps":
            loss, distances = self.steps.run(tuple(d is None for d in draws), step, features, gps, *draws)
        else:
            loss, distances = step(features, gps, *draws)
        self.distances.steps.append(distances)
        queue.advance(len(gps))
        return loss

    def _device_step(
        self, features, gps, batch_draw, queue_draw, *, sigmas, drawn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's device work: (the loss, the sampler's distances of ``NegativeDistances.measure``)."""
        noise, model = self.cfg.train.noise, self.model
        queue = model.queue.contents()
        mined = None if drawn is None else self.miner.coords(drawn, self.device)
        # The mask of negatives within train.negatives.mask_within_km, from the exact coordinates (None: off).
        distances, masked = self.distances.measure(gps, torch.cat([gps, queue]), mined, self.mask_km)
        locations = torch.cat([apply_gps_noise(gps, batch_draw), apply_gps_noise(queue, queue_draw)])
        n_shared = len(locations)
        if mined is not None and self.bank is None:
            locations = torch.cat([locations, mined.flatten(0, 1)])
        with self.precision():
            image_emb = model.encode_images(features, self.graphs.run)
            location_emb = model.encode_locations(locations, self.graphs.run)
            if mined is None:
                mined_emb = None
            elif self.bank is None:
                mined_emb = location_emb[n_shared:].unflatten(0, mined.shape[:2])
            else:  # looked up in the bank, without gradient (train.negatives.bank)
                mined_emb = self.bank.lookup(drawn, model.encode_locations)
            location_emb = location_emb[:n_shared]
            if noise.target == "embedding":
                location_emb = self._noisy_embeddings(location_emb, len(gps), *sigmas)
            loss = training_loss(self.cfg.train.loss, image_emb, location_emb, model.logit_scale, mined_emb, masked)
        self.optimizer.zero_grad(set_to_none=True)
        with tf32(self.cfg.train.precision == "tf32"):  # the backward's products too (autocast is forward-only)
            loss.backward()
        self.optimizer.step()
        model.clamp_logit_scale()
        model.queue.write(gps)
        return loss.detach(), distances

    def _noisy_embeddings(
        self, emb: torch.Tensor, n_batch: int, batch_sigma: float, queue_sigma: float
    ) -> torch.Tensor:
        sigma = torch.full((len(emb), 1), queue_sigma, device=emb.device)
        sigma[:n_batch] = batch_sigma
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
        if self.bank is not None:
            self.bank.start_epoch()
        lr = float(self.optimizer.param_groups[0]["lr"])
        batch_sigma, queue_sigma = self.cfg.train.noise.sigmas(self.epoch + 1)
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
            NOISE_BATCH_SIGMA: batch_sigma,
            NOISE_QUEUE_SIGMA: queue_sigma,
            **self.distances.result(),
            "train_s": time.perf_counter() - start,
        }

    def evaluate(self) -> dict[str, float]:
        """Metrics of every evaluation set (the first set's keys plain, the others prefixed with their
        name) and the encoder's resolution; each set's fine error curve is kept in ``self.curves``."""
        start = time.perf_counter()
        metrics = {}
        results = evaluate_sets(self.model, list(self.evaluators.values()), self.eval_precision)
        for i, (name, result) in enumerate(zip(self.evaluators, results, strict=True)):
            prefix = "" if i == 0 else f"{name}_"
            metrics.update({prefix + k: v for k, v in result.metrics.items()})
            self.curves[name] = accuracy_curve(result.errors_km, self.curve_km)
            self.evaluations[name] = result
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
            "optimizer": portable_state(self.optimizer.state_dict()),
            "scheduler": portable_state(self.scheduler.state_dict()),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
        }
        if sampler := self.sampler.state_dict():
            state["sampler"] = sampler
        if self.device_generator is not self.generator:
            state["device_generator"] = self.device_generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.check_signature(state)
        self.model.load_state_dict(state["model"])
        load_optimizer(self.optimizer, state["optimizer"])
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

    def prediction_rows(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The last evaluation's per-image predictions per set: (true (N, 2), predicted (N, 2) coordinates,
        predicted gallery index, error in km), for ``predictions/`` (``geoloc.study.predictions``);
        empty with ``eval.keep_predictions`` off."""
        if not self.cfg.eval.keep_predictions:
            return {}
        return {
            name: (self.evaluators[name].cache.coords, self.gallery.coords[e.predicted], e.predicted, e.errors_km)
            for name, e in self.evaluations.items()
        }


def prepare_sampling(cfg: GeoCLIPConfig, data: Data) -> None:
    """Build what the run's sampler and miner keep beside the training cache (neighbour lists, near
    lists, the semivariogram's range) and check them against the data: the launcher calls it once
    before trials start, so they share the files and a bad combination is refused up front
    (ConfigError naming the key)."""
    BatchSampler(cfg.train.batches, cfg.train.batch_size, data.train, torch.Generator())
    if cfg.train.negatives.mined:
        NegativeMiner.for_run(cfg.train.negatives, data)
    if cfg.train.negatives.mask_within_km:
        resolve_km(cfg.train.negatives.mask_within_km, "mask_within_km", data.train)
