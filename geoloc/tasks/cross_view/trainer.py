"""One seed of a cross-view run: an epoch of pair batches, the symmetric loss, retrieval evaluation, resumable state.

``CrossViewTrainer`` is the task seam's ``TaskTrainer`` for both modes. Cached: each epoch draws
one cached view per pair (the query's view and its reference's view were augmented together at
extraction, so a drawn pair stays consistent) and trains the two heads. End to end: images are
decoded and augmented per step (``geoloc.data.crossview.pairs``), with the augmentation of each
pair drawn from the trainer's generator, so a resumed run sees the same images. Evaluation embeds
every validation query and reference (unaugmented) and ranks the references per query
(``geoloc.tasks.cross_view.retrieval``).
"""

from __future__ import annotations

import math
import time

import torch
from tqdm import tqdm

from geoloc.common.devices import claim_device
from geoloc.parts.losses import symmetric_infonce
from geoloc.parts.precision import check_precision, precision, tf32
from geoloc.parts.resumable import CheckpointMismatch, DivergenceError, Resumable, load_optimizer, portable_state
from geoloc.tasks.cross_view.batches import PairSampler
from geoloc.tasks.cross_view.config import CrossViewConfig
from geoloc.tasks.cross_view.data import CrossViewData, lists_folder, load_crossview_data
from geoloc.tasks.cross_view.encode import Encoder
from geoloc.tasks.cross_view.metrics import weighted_score
from geoloc.tasks.cross_view.model import CrossViewModel
from geoloc.tasks.cross_view.retrieval import retrieval_metrics


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor of a step: linear from 0 to 1 over the warm-up, then a cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class CrossViewTrainer(Resumable):
    """Model, optimiser, schedule, sampler and random stream of one run; ``state_dict`` resumes it exactly."""

    def __init__(self, cfg: CrossViewConfig, data: CrossViewData | None = None, gpu_share: float = 1.0):
        self.cfg = cfg
        self.device = claim_device(cfg.train.device, "train.device", cfg.train.threads, gpu_share)
        check_precision(cfg.train.precision, self.device)
        self.data = data or load_crossview_data(cfg, self.device)
        feature_dim = self.data.features[self.data.train.name][0].feature_dim if cfg.cached else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            self.model = CrossViewModel(cfg.model, feature_dim).to(self.device)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
        )
        steps = -(-len(self.data.train) // cfg.train.batch_size)
        warmup, total = round(cfg.train.warmup_epochs * steps), cfg.train.epochs * steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, warmup, total)
        )
        # One CPU stream for batches, view choice and augmentation: the same seed gives the same run anywhere.
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.sampler = PairSampler(
            cfg.train.batches, cfg.train.batch_size, self.data.train, self.generator, lists_folder(cfg, self.data.train)
        )
        self.encoder = Encoder(cfg, self.data, self.device)
        self.epoch = 0

    def precision(self):
        return precision(self.cfg.train.precision, self.device)

    def eval_precision(self):
        """Passes without gradient: ``train.precision``, but fp32 on a CPU (``geoloc.parts.precision``)."""
        return precision(self.cfg.train.precision, self.device, part="eval")

    # -- one epoch -------------------------------------------------------------------------------

    def train_step(self, queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch of pairs (row i of both is one pair); the loss on the device."""
        model = self.model
        with self.precision():
            loss = symmetric_infonce(
                model.encode_queries(queries),
                model.encode_references(references),
                model.logit_scale.exp(),
                self.cfg.train.loss.label_smoothing,
            )
        self.optimizer.zero_grad(set_to_none=True)
        with tf32(self.cfg.train.precision == "tf32"):
            loss.backward()
        if self.cfg.train.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.train.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def train_one_epoch(self, progress: bool = False) -> dict[str, float]:
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        batches = self.sampler.epoch(
            self.epoch + 1, lambda: self.encoder.embed(self.model, self.data.train, self.eval_precision)
        )
        losses = []
        pairs = self.encoder.training_pairs(batches, self.data.train, self.generator)
        for queries, references in tqdm(
            pairs, total=len(batches), desc=f"epoch {self.epoch + 1}", disable=not progress
        ):
            losses.append(self.train_step(queries, references))
        stacked = torch.stack(losses).double().cpu()
        if not torch.isfinite(stacked).all():
            value = stacked[~torch.isfinite(stacked)][0].item()
            raise DivergenceError(f"training loss is {value} at epoch {self.epoch + 1}; the trial diverged", self.epoch)
        self.epoch += 1
        return {
            "train_loss": float(stacked.mean()),
            "lr": lr,
            "temperature": self.model.temperature,
            "train_s": time.perf_counter() - start,
        }

    def evaluate(self) -> dict[str, float]:
        """Retrieval metrics of the validation split, its ``val_loss`` and ``score``."""
        start = time.perf_counter()
        self.model.eval()
        val = self.data.val
        queries, references = self.encoder.embed(self.model, val, self.eval_precision)
        metrics = retrieval_metrics(
            queries,
            references,
            val.positive,
            val.semi_positives,
            val.query_coords,
            val.reference_coords,
            self.cfg.eval.recall_at,
            self.cfg.eval.thresholds_km,
        )
        metrics["val_loss"] = self.val_loss(queries, references)
        metrics["score"] = weighted_score(metrics, self.cfg)
        metrics["eval_s"] = time.perf_counter() - start
        return metrics

    def val_loss(self, queries: torch.Tensor, references: torch.Tensor) -> float:
        """The symmetric InfoNCE without label smoothing over the validation pairs in index order, in
        chunks of ``train.batch_size`` (each query against the true references of its chunk), at the
        current temperature: comparable across trials whatever their training loss's smoothing."""
        positive = torch.tensor(self.data.val.positive, device=references.device)
        scale, size, total = self.model.logit_scale.detach().exp(), self.cfg.train.batch_size, 0.0
        with torch.no_grad():
            for start in range(0, len(queries), size):
                q, r = queries[start : start + size], references[positive[start : start + size]]
                total += float(symmetric_infonce(q, r, scale, 0.0)) * len(q)
        return total / len(queries)

    def run_epoch(self, progress: bool = False) -> dict[str, float]:
        metrics = self.train_one_epoch(progress)
        metrics.update(self.evaluate())
        return {"epoch": self.epoch, **metrics}

    def evaluate_at_start(self) -> dict[str, float]:
        """Epoch 0 (``eval.at_start``): the temperature and every evaluation metric; no random stream is drawn."""
        return {"epoch": self.epoch, "temperature": self.model.temperature, **self.evaluate()}

    def curve_rows(self, epoch: int) -> list[dict]:
        return []

    # -- resumable state -------------------------------------------------------------------------

    def signature(self) -> dict:
        """What a checkpoint must match to load: the model's shape and the data it was trained on."""
        return {
            "model": self.cfg.model.model_dump(mode="json"),
            "train": self.data.train.name,
            "pairs": len(self.data.train),
        }

    def state_dict(self) -> dict:
        return {
            "signature": self.signature(),
            "model": self.model.state_dict(),
            "optimizer": portable_state(self.optimizer.state_dict()),
            "scheduler": portable_state(self.scheduler.state_dict()),
            "generator": self.generator.get_state(),
            "sampler": self.sampler.state_dict(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.check_signature(state)
        self.model.load_state_dict(state["model"])
        load_optimizer(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        try:
            self.sampler.load_state_dict(state["sampler"])
        except ValueError as e:
            raise CheckpointMismatch(f"refusing to load the checkpoint: {e}") from None
        self.epoch = state["epoch"]
