"""Training step: steps per second of ``Trainer.train_step`` and where its time goes.

Two sizes: the published one (768-d features, batch 512, queue 4096, the published
architecture) and the quickstart one (batch 128, queue 1024, location-encoder width 256). The
queue is full, as it is after the first few steps of a run.

Two ways are timed side by side, interleaved: the whole ``train_step`` and the same operations
split by manual timers (image head; location encoder on the batch; on the queue; logits + loss;
backward + optimizer step + queue push). The split encodes batch and queue in two calls where
``train_step`` encodes them in one, so its sum may differ slightly from the whole step.
Agreement: from the same saved state both ways must give the same loss and the same weights
after the step. Everything runs on the CPU, where operations are synchronous, so wall-clock
timers around them are exact; bf16 autocast whole steps are timed too.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoloc.data import Data
from geoloc.data.cache import FeatureCache
from geoloc.data.synthetic import geoclip_gallery_coords
from geoloc.study.config import parse_job
from geoloc.tasks.geoclip.trainer import Trainer

from .common import Result, interleave, log, median, paired_speedup, spread, table

PARTS = ["image head", "location encoder, batch", "location encoder, queue", "logits + loss", "backward + optimizer"]

SIZES = {
    "published": {"feature_dim": 768, "train": {"batch_size": 512, "queue_size": 4096}, "model": {}},
    "quickstart": {"feature_dim": 768, "train": {"batch_size": 128, "queue_size": 1024}, "model": {"hidden_dim": 256}},
    "tiny": {"feature_dim": 64, "train": {"batch_size": 32, "queue_size": 64}, "model": {"hidden_dim": 64}},  # --quick
}


def _in_memory_cache(features: np.ndarray, coords: np.ndarray) -> FeatureCache:
    return FeatureCache(Path("in-memory"), features[:, None, :], coords, {"backbone": "random"})


def make_trainer(feature_dim: int, train: dict, model: dict, precision: str = "fp32", seed: int = 0):
    """A Trainer on in-memory random features, with a full queue, and one fixed batch."""
    rng = np.random.default_rng(seed)
    gallery = geoclip_gallery_coords()
    batch, queue = train["batch_size"], train["queue_size"]
    coords = gallery[rng.choice(len(gallery), batch + queue + 256, replace=False)]
    features = rng.standard_normal((len(coords), feature_dim)).astype(np.float16)
    data = Data(
        train=_in_memory_cache(features[:batch], coords[:batch]),
        val={"val": _in_memory_cache(features[-256:], coords[-256:])},
        gallery=coords[-256:],
    )
    cfg = parse_job({"model": model, "train": {**train, "precision": precision, "device": "cpu", "seed": seed}})
    trainer = Trainer(cfg, data)
    trainer.model.queue.push(torch.from_numpy(coords[batch : batch + queue]).float())
    feats = torch.from_numpy(features[:batch].astype(np.float32))
    gps = torch.from_numpy(coords[:batch]).float()
    return trainer, feats, gps


def step_in_parts(trainer: Trainer, features: torch.Tensor, gps: torch.Tensor) -> tuple[float, dict[str, float]]:
    """The operations of ``Trainer.train_step`` (no noise), each timed; returns the loss and seconds per part."""
    model, seconds = trainer.model, {}
    last = time.perf_counter()

    def lap(name):
        nonlocal last
        now = time.perf_counter()
        seconds[name], last = now - last, now

    queue = model.queue.contents()
    with trainer.precision():
        image_emb = model.encode_images(features)
        lap("image head")
        batch_emb = model.encode_locations(gps)
        lap("location encoder, batch")
        queue_emb = model.encode_locations(queue)
        lap("location encoder, queue")
        logits = model.logits(image_emb, torch.cat([batch_emb, queue_emb]))
    loss = F.cross_entropy(logits.float(), torch.arange(len(gps)))
    lap("logits + loss")
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    model.clamp_logit_scale()
    model.queue.push(gps)
    lap("backward + optimizer")
    return loss.item(), seconds


def _agreement(trainer, features, gps) -> tuple[float, float]:
    """|loss difference| and max weight difference after one step, whole vs in parts, from the same state."""
    state = copy.deepcopy(trainer.state_dict())
    whole_loss = float(trainer.train_step(features, gps))
    whole_weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.load_state_dict(copy.deepcopy(state))
    parts_loss, _ = step_in_parts(trainer, features, gps)
    weight_dev = max(
        float((v - whole_weights[k]).abs().max())
        for k, v in trainer.model.state_dict().items()
        if v.is_floating_point()
    )
    trainer.load_state_dict(state)
    return abs(whole_loss - parts_loss), weight_dev


def measure(size: str, repeats: int, steps: int) -> tuple[list, bool, dict]:
    spec = SIZES[size]
    trainer, feats, gps = make_trainer(spec["feature_dim"], spec["train"], spec["model"])
    bf16, bf16_feats, bf16_gps = make_trainer(spec["feature_dim"], spec["train"], spec["model"], precision="bf16")
    loss_dev, weight_dev = _agreement(trainer, feats, gps)
    agreed = loss_dev <= 1e-4 and weight_dev <= 1e-5

    parts: dict[str, list[float]] = {p: [] for p in PARTS}

    def in_parts():
        for _ in range(steps):
            for name, s in step_in_parts(trainer, feats, gps)[1].items():
                parts[name].append(s)

    ways = {
        "train_step, fp32": lambda: [trainer.train_step(feats, gps) for _ in range(steps)],
        "in parts, fp32": in_parts,
        "train_step, bf16 autocast": lambda: [bf16.train_step(bf16_feats, bf16_gps) for _ in range(steps)],
    }
    log(f"train step ({size}): {len(ways)} ways x {repeats} repeats x {steps} steps")
    times, _ = interleave(ways, repeats)
    per_step = {name: [t / steps for t in values] for name, values in times.items()}
    for name in parts:  # drop the warm-up round's laps
        parts[name] = parts[name][steps:]
    return (
        _rows(size, spec, per_step, parts),
        agreed,
        {
            "loss_dev": loss_dev,
            "weight_dev": weight_dev,
            "steps_per_s": 1 / median(per_step["train_step, fp32"]),
            "bf16_speedup": paired_speedup(per_step["train_step, fp32"], per_step["train_step, bf16 autocast"]),
            "parts_s": {p: median(v) for p, v in parts.items()},
        },
    )


def _rows(size, spec, per_step, parts):
    whole = median(per_step["train_step, fp32"])
    step_rows = [
        [
            f"{size}: {name}",
            spread(values),
            f"{1 / median(values):.2f}",
            f"{paired_speedup(per_step['train_step, fp32'], values):.2f}x",
        ]
        for name, values in per_step.items()
    ]
    total = sum(median(v) for v in parts.values())
    part_rows = [[f"{size}: {name}", spread(values), f"{median(values) / total:.0%}"] for name, values in parts.items()]
    part_rows.append([f"{size}: sum of parts", f"{total * 1e3:.1f} ms", f"{total / whole:.2f} of the whole step"])
    return [step_rows, part_rows]


def run(sizes: dict[str, tuple[int, int]] | None = None) -> Result:
    """``sizes``: name -> (repeats, steps per repeat)."""
    sizes = sizes or {"published": (3, 1), "quickstart": (5, 5)}
    step_rows, part_rows, agreed, figures = [], [], True, {}
    for size, (repeats, steps) in sizes.items():
        (s_rows, p_rows), ok, figs = measure(size, repeats, steps)
        step_rows += s_rows
        part_rows += p_rows
        agreed &= ok
        figures[size] = figs
    described = "; ".join(
        f"{size}: {SIZES[size]['feature_dim']}-d features, batch {SIZES[size]['train']['batch_size']}, "
        f"queue {SIZES[size]['train']['queue_size']}, "
        f"location-encoder width {SIZES[size]['model'].get('hidden_dim', 1024)}, {r} interleaved repeats of {s} step(s)"
        for size, (r, s) in sizes.items()
    )
    checks = "; ".join(
        f"{size}: loss {f['loss_dev']:.1e}, weights {f['weight_dev']:.1e}" for size, f in figures.items()
    )
    body = f"""
Random features, coordinates from the published gallery, full queue, no noise, Adam, fp32 unless named.
{described}; per-step times, median (min-max) over repeats, after one warm-up round; speed: the
median of the per-round ratios to `train_step` fp32.

{table(["size: way", "time per step", "steps/s", "speed vs train_step fp32"], step_rows)}

Where the time of an fp32 step goes (medians per part, share of their sum):

{table(["size: part", "time", "share"], part_rows)}

Whole step vs the same step in parts, from the same saved state (max abs difference): {checks}.
"""
    return Result("Training step: steps per second and where the time goes", body, agreed, figures)


def main(quick: bool = False) -> Result:
    return run({"tiny": (2, 2)} if quick else None)


if __name__ == "__main__":
    print(main().markdown())
