"""Training GeoCLIP on cached features: one epoch, the queue, the loss, resumable state.

``Trainer`` is what a Ray trial wraps; ``train(cfg, out_dir)`` is one run without Ray; ``main``
is the command line ``python -m geoloc.train CONFIG.yaml --out DIR [--resume]``, which writes
``metrics.jsonl`` (one line per epoch), TensorBoard events and ``checkpoint.pt`` into DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import ConfigError, RunConfig, load_config, to_dict
from .data import Data, DataError, load_data
from .evaluate import Evaluator
from .events import EventLogger, flatten
from .geo import gps_noise
from .model import GeoCLIP

CHECKPOINT = "checkpoint.pt"
WARM_START_FEATURE_DIM = 768  # the published image head reads CLIP ViT-L/14 features
METRICS = "metrics.jsonl"


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite: the trial stops with this reason instead of training on garbage."""


class CheckpointMismatch(ValueError):
    """A checkpoint from a different model configuration."""


def cpu_share() -> int:
    """CPUs this process was given: Ray sets OMP_NUM_THREADS to a trial's CPUs; else the affinity mask."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return int(omp) if omp.isdigit() and int(omp) > 0 else len(os.sched_getaffinity(0))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no GPU is visible")
    return torch.device(name)


class Trainer:
    """Model, optimiser, schedule, queue and random streams of one run; ``state_dict`` resumes it exactly."""

    def __init__(self, cfg: RunConfig, data: Data | None = None):
        self.cfg = cfg
        self.data = data or load_data(cfg.data)
        self.device = pick_device(cfg.train.device)
        torch.set_num_threads(cfg.train.threads or cpu_share())
        if cfg.train.precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            self.model = GeoCLIP(cfg.model, self.data.train.feature_dim, cfg.train.queue_size)
        if cfg.model.warm_start:
            if self.data.train.feature_dim != WARM_START_FEATURE_DIM:
                raise ConfigError(f"model.warm_start: needs {WARM_START_FEATURE_DIM}-d features (CLIP ViT-L/14), "
                                  f"the training cache {self.data.train.path} has {self.data.train.feature_dim}")
            self.model.load_geoclip_weights()
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=cfg.train.lr_gamma)
        # One CPU stream for shuffling, view choice and noise: the same seed gives the same run anywhere.
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.epoch = 0
        self.train_coords = torch.from_numpy(self.data.train.coords).float()
        negatives = Evaluator.fixed_negatives(self.data.train.coords, cfg.eval.val_negatives)
        self.evaluators = {
            name: Evaluator(cfg.eval, cache, self.data.gallery, negatives, self.device) for name, cache in self.data.val.items()
        }

    # -- one epoch -------------------------------------------------------------------------------

    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(self):
        """Seeded shuffle; one cached view per image per epoch; indices sorted within a batch so reads go forward."""
        n, bs = len(self.data.train), self.cfg.train.batch_size
        order = torch.randperm(n, generator=self.generator)
        views = torch.randint(self.data.train.views, (n,), generator=self.generator)
        for start in range(0, n, bs):
            idx = order[start : start + bs].sort().values
            yield idx.numpy(), views[idx].numpy()

    def train_step(self, features: torch.Tensor, gps: torch.Tensor) -> float:
        noise = self.cfg.train.noise
        model = self.model
        queue = model.queue.contents()
        if noise.target == "gps":
            locations = torch.cat([gps_noise(gps, noise.batch_sigma, self.generator), gps_noise(queue, noise.queue_sigma, self.generator)])
        else:
            locations = torch.cat([gps, queue])
        with self.autocast():
            image_emb = model.encode_images(features)
            location_emb = model.encode_locations(locations)
            if noise.target == "embedding":
                location_emb = self._noisy_embeddings(location_emb, len(gps))
            logits = model.logits(image_emb, location_emb)
        loss = F.cross_entropy(logits.float(), torch.arange(len(gps), device=self.device))
        if not torch.isfinite(loss):
            raise DivergenceError(f"training loss is {loss.item()} at epoch {self.epoch + 1}; the trial diverged")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        model.clamp_logit_scale()
        model.queue.push(gps)
        return loss.item()

    def _noisy_embeddings(self, emb: torch.Tensor, n_batch: int) -> torch.Tensor:
        noise = self.cfg.train.noise
        sigma = torch.full((len(emb), 1), noise.queue_sigma)
        sigma[:n_batch] = noise.batch_sigma
        drawn = torch.randn(emb.shape, generator=self.generator) * sigma
        return F.normalize(emb + drawn.to(emb.device, emb.dtype), dim=-1)

    def train_one_epoch(self, progress: bool = False) -> dict[str, float]:
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        losses, start = [], time.perf_counter()
        n_steps = -(-len(self.data.train) // self.cfg.train.batch_size)
        bar = tqdm(self.batches(), total=n_steps, desc=f"epoch {self.epoch + 1}", disable=not progress, leave=False)
        for idx, views in bar:
            features = torch.from_numpy(self.data.train.read(idx, views).astype(np.float32)).to(self.device)
            losses.append(self.train_step(features, self.train_coords[idx].to(self.device)))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        self.scheduler.step()
        self.epoch += 1
        return {
            "train_loss": float(np.mean(losses)),
            "lr": lr,
            "temperature": self.model.temperature,
            "train_s": time.perf_counter() - start,
        }

    def evaluate(self) -> dict[str, float]:
        """Metrics of every evaluation set; the first set's keys are plain, the others prefixed with their name."""
        start = time.perf_counter()
        metrics = {}
        for i, (name, evaluator) in enumerate(self.evaluators.items()):
            prefix = "" if i == 0 else f"{name}_"
            metrics.update({prefix + k: v for k, v in evaluator(self.model, self.autocast).items()})
        metrics["eval_s"] = time.perf_counter() - start
        return metrics

    def run_epoch(self, progress: bool = False) -> dict[str, float]:
        """Train one epoch and evaluate: the flat metrics dict that goes to every logger."""
        metrics = self.train_one_epoch(progress)
        metrics.update(self.evaluate())
        return {"epoch": self.epoch, **metrics}

    # -- resumable state -------------------------------------------------------------------------

    def signature(self) -> dict:
        """What a checkpoint must match to load: the model's shape, not the run's hyperparameters."""
        return {"model": to_dict(self.cfg.model), "feature_dim": self.data.train.feature_dim, "queue_size": self.cfg.train.queue_size}

    def state_dict(self) -> dict:
        return {
            "signature": self.signature(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
        }

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
        self.epoch = state["epoch"]

    def save(self, path: str | Path) -> None:
        """Atomic: a crash while saving leaves the previous checkpoint intact."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = False) -> dict[str, float]:
    """Train ``cfg.train.epochs`` epochs into ``out_dir``; returns the last epoch's metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)
    checkpoint, metrics_file = out_dir / CHECKPOINT, out_dir / METRICS
    if resume and checkpoint.exists():
        trainer.load(checkpoint)
        keep_epochs_up_to(metrics_file, trainer.epoch)
    elif metrics_file.exists():
        metrics_file.unlink()
    (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    logger = EventLogger(out_dir, flatten(to_dict(cfg)))
    metrics: dict[str, float] = {}
    try:
        for _ in range(trainer.epoch, cfg.train.epochs):
            metrics = trainer.run_epoch(progress)
            logger.log(metrics, metrics["epoch"])
            with metrics_file.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            trainer.save(checkpoint)
            if progress:
                print(format_metrics(metrics), flush=True)
    finally:
        logger.close(finished=trainer.epoch == cfg.train.epochs)
    return metrics


def keep_epochs_up_to(metrics_file: Path, epoch: int) -> None:
    """Drop lines of epochs after the checkpoint's, so a resumed run writes no duplicate epoch."""
    if metrics_file.exists():
        keep = [line for line in metrics_file.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] <= epoch]
        metrics_file.write_text("".join(line + "\n" for line in keep))


def checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint file holds; -1 for a torn or foreign file."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return -1


def format_metrics(m: dict) -> str:
    accs = " ".join(f"{k[4:]}={v:.3f}" for k, v in m.items() if k.startswith("acc_"))
    return (f"epoch {m['epoch']}: train_loss={m['train_loss']:.4f} val_loss={m['val_loss']:.4f} "
            f"acc {accs} median={m['median_km']:.0f}km score={m['score']:.4f} ({m['train_s']:.1f}s + {m['eval_s']:.1f}s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoloc.train", description="Train GeoCLIP once, without Ray.")
    parser.add_argument("config", help="run configuration YAML (see geoloc/config.py for every key)")
    parser.add_argument("--out", required=True, help="output folder: metrics.jsonl, TensorBoard events, checkpoint.pt")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {args.config}: {e}" if not str(e).startswith(args.config) else f"error: {e}", file=sys.stderr)
        return 2
    try:
        metrics = train(cfg, args.out, resume=args.resume, progress=True)
    except (ConfigError, DataError, CheckpointMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {args.out} (metrics.jsonl, checkpoint.pt; tensorboard --logdir {args.out})")
    return 0 if metrics else 1


if __name__ == "__main__":
    sys.exit(main())
