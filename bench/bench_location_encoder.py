"""Location encoder: ours versus the published one, and bf16 autocast versus fp32.

1. Forward + backward of batch + queue coordinates at the published sizes (512 + 4096 = 4608
   coordinates, drawn from the published 100K gallery) through ``geoloc.tasks.geoclip.model.LocationEncoder``
   and ``geoclip.LocationEncoder``, both with the published weights. In fp32 the outputs must
   agree to 1e-5 (and the weight gradients closely).
2. The same for ours under ``torch.autocast("cpu", dtype=torch.bfloat16)``, as the trainer runs
   it with ``train.precision: bf16`` (the random Fourier features stay in fp32), and, to show
   what that rule buys, with the Fourier features in bf16 as ``geoloc.tasks.geoclip.model`` computed them
   before (patched in by ``common.bf16_fourier_features``).
3. (Full mode only.) The accuracy cost: the quickstart-size model trained on the offline
   benchmark for 3 seeds per precision.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from geoloc.data.synthetic import geoclip_gallery_coords
from geoloc.study.config import parse_job
from geoloc.tasks.geoclip.model import LocationEncoder

from .common import Result, bf16_fourier_features, interleave, log, median, paired_speedup, spread, table

PRECISIONS = {  # name -> (train.precision, patch)
    "fp32": ("fp32", contextlib.nullcontext),
    "bf16": ("bf16", contextlib.nullcontext),
    "bf16, Fourier features in bf16 (before the fix)": ("bf16", bf16_fourier_features),
}
ACCURACIES = ["acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km"]


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def forward_backward(
    encoder, coords: torch.Tensor, grad: torch.Tensor, autocast=contextlib.nullcontext, patch=contextlib.nullcontext
) -> torch.Tensor:
    """One forward and backward pass (a fixed upstream gradient); returns the output in fp32."""
    encoder.zero_grad(set_to_none=True)
    with patch(), autocast():
        out = encoder(coords)
    out.float().backward(grad)
    return out.detach().float()


def _grad_deviation(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest gradient difference, relative to the largest gradient of that parameter."""
    grads_b = dict(b.named_parameters())
    return max(
        float((p.grad - grads_b[name].grad).abs().max() / grads_b[name].grad.abs().max())
        for name, p in a.named_parameters()
        if p.grad is not None
    )


OLD = "ours, bf16 autocast, Fourier features in bf16 (before the fix)"


def speed(
    n_coords: int = 4608, repeats: int = 5, threads: tuple[int, ...] = (1, 2), seed: int = 0
) -> tuple[str, bool, dict]:
    """Every way timed with each torch thread count in ``threads`` (interleaved within a count)."""
    import geoclip

    rng = np.random.default_rng(seed)
    gallery = geoclip_gallery_coords()
    coords = torch.from_numpy(gallery[rng.choice(len(gallery), n_coords, replace=False)]).float()
    grad = torch.from_numpy(rng.standard_normal((n_coords, 512))).float()
    ours = LocationEncoder.from_geoclip()
    published = geoclip.LocationEncoder(from_pretrained=True)

    ways = {
        "published, fp32": lambda: forward_backward(published, coords, grad),
        "ours, fp32": lambda: forward_backward(ours, coords, grad),
        "ours, bf16 autocast": lambda: forward_backward(ours, coords, grad, _bf16),
        OLD: lambda: forward_backward(ours, coords, grad, _bf16, bf16_fourier_features),
    }
    previous, timings = torch.get_num_threads(), {}
    try:
        for n in threads:
            torch.set_num_threads(n)
            log(f"location encoder: {len(ways)} ways x {repeats} repeats, {n_coords} coordinates, {n} thread(s)")
            timings[n], outs = interleave(ways, repeats)
    finally:
        torch.set_num_threads(previous)

    forward_backward(ours, coords, grad)
    forward_backward(published, coords, grad)
    out_dev = float((outs["ours, fp32"] - outs["published, fp32"]).abs().max())
    grad_dev = _grad_deviation(ours, published)
    agreed = out_dev <= 1e-5 and grad_dev <= 1e-4

    reference = outs["ours, fp32"]
    rows, speedups = [], {}
    for n, times in timings.items():
        speedups[n] = {name: paired_speedup(times["ours, fp32"], values) for name, values in times.items()}
        for name, values in times.items():
            out = outs[name]
            cosine = F.cosine_similarity(out, reference, dim=-1)
            rows.append(
                [
                    n,
                    name,
                    spread(values),
                    f"{speedups[n][name]:.2f}x",
                    f"{(out - reference).abs().max():.1e}",
                    f"{cosine.min():.4f}",
                ]
            )
    summary = "; ".join(
        f"{n} thread(s): ours runs at {1 / s['published, fp32']:.2f}x the published speed, bf16 autocast "
        f"{s['ours, bf16 autocast']:.2f}x ours fp32 (Fourier features in bf16: {s[OLD]:.2f}x)"
        for n, s in speedups.items()
    )
    body = f"""
Forward + backward of {n_coords} coordinates (batch + queue; drawn from the published gallery),
published weights, a fixed random upstream gradient; {repeats} interleaved repeats after one
warm-up round per thread count, median (min-max); speed: the median of the per-round ratios to
ours fp32. Output scale: max |output| = {reference.abs().max():.3f}.

{
        table(
            [
                "threads",
                "way",
                "time",
                "speed vs ours fp32",
                "max abs deviation from ours fp32",
                "min cosine to ours fp32",
            ],
            rows,
        )
    }

fp32, ours vs published: max abs output difference {out_dev:.1e} (limit 1e-5), largest relative
weight-gradient difference {grad_dev:.1e}. {summary}.

Under bf16 autocast `geoloc.tasks.geoclip.model` keeps the Fourier features (`v @ b.T`, cos, sin) in fp32. The
last row of each group shows why: computed in bf16, the sigma=256 branch's phases (|b| up to
~1000, so ~2*pi*1000 rad) lose whole radians to bf16's 8-bit mantissa and its cos/sin become noise
(the large deviation and low cosine). Keeping them in fp32 costs one {n_coords} x 2 x 256 product per branch.
"""
    last = speedups[threads[-1]]
    figures = {
        "out_dev": out_dev,
        "grad_dev": grad_dev,
        "speedups": speedups,
        "ours_vs_published": 1 / last["published, fp32"],
        "bf16_speedup": last["ours, bf16 autocast"],
        "bf16_dev": float((outs["ours, bf16 autocast"] - reference).abs().max()),
        "bf16_old_dev": float((outs[OLD] - reference).abs().max()),
    }
    return body, agreed, figures


QUICKSTART = {
    "model": {"hidden_dim": 256},
    "train": {"batch_size": 128, "queue_size": 1024, "lr": 3e-4, "device": "cpu"},
}


def accuracy_cost(seeds: int = 3, epochs: int = 3, overrides: dict | None = None) -> tuple[str, dict]:
    """Train the quickstart-size model per precision and seed (interleaved by seed); final-epoch metrics."""
    from geoloc.common.validation import deep_merge
    from geoloc.tasks.geoclip.trainer import Trainer

    runs: dict[str, list[dict]] = {name: [] for name in PRECISIONS}
    for seed in range(seeds):
        for name, (precision, patch) in PRECISIONS.items():
            data = deep_merge(QUICKSTART, {"train": {"precision": precision, "seed": seed, "epochs": epochs}})
            cfg = parse_job(deep_merge(data, overrides or {}))
            log(f"location encoder: training {name}, seed {seed} ({epochs} epochs)")
            start = time.perf_counter()
            with patch():
                trainer = Trainer(cfg)
                for _ in range(epochs):
                    metrics = trainer.run_epoch()
            runs[name].append({**metrics, "run_s": time.perf_counter() - start})

    def mean_std(name, key):
        values = np.array([m[key] for m in runs[name]])
        return values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0

    rows, verdicts = [], {}
    for name in PRECISIONS:
        cells = [name]
        for key in ACCURACIES:
            mean, std = mean_std(name, key)
            cells.append(f"{mean:.3f} ± {std:.3f}")
        cells.append(f"{median([m['run_s'] for m in runs[name]]):.0f} s")
        rows.append(cells)
    diff_rows = []
    for name in list(PRECISIONS)[1:]:
        cells = [f"{name} - fp32"]
        within = True
        for key in ACCURACIES:
            (ma, sa), (mb, sb) = mean_std(name, key), mean_std("fp32", key)
            noise = 2 * np.sqrt((sa**2 + sb**2) / seeds)  # two standard errors of the difference
            ok = abs(ma - mb) <= noise
            within &= ok
            cells.append(f"{ma - mb:+.3f} (noise ±{noise:.3f}){'' if ok else ' **outside**'}")
        verdicts[name] = within
        diff_rows.append(cells + ["yes" if within else "no"])
    body = f"""
Accuracy cost of bf16: the quickstart-size model (offline benchmark defaults, hidden_dim 256,
batch 128, queue 1024, lr 3e-4, no warm start) trained {epochs} epochs from scratch per precision
and seed ({seeds} seeds, runs interleaved by seed), final-epoch validation accuracies, mean ± std
over seeds; run time per run (median) for reference, measured under whatever load the machine had.
The last row trains and evaluates with the Fourier features in bf16, as before the fp32 rule.

{table(["precision", *ACCURACIES, "time per run"], rows)}

Difference of means against fp32, with seed noise taken as two standard errors of the difference:

{table(["", *ACCURACIES, "within seed noise"], diff_rows)}
"""
    return body, {"runs": runs, "within_noise": verdicts}


def run(
    n_coords: int = 4608,
    repeats: int = 4,
    threads: tuple[int, ...] = (1, 2),
    train: bool = True,
    seeds: int = 3,
    epochs: int = 3,
    train_overrides: dict | None = None,
) -> Result:
    body, agreed, figures = speed(n_coords, repeats, threads)
    if train:
        accuracy_body, accuracy_figures = accuracy_cost(seeds, epochs, train_overrides)
        body += accuracy_body
        figures.update(accuracy_figures)
    else:
        body += "\n(The bf16 accuracy cost is measured in the full run only.)\n"
    return Result("Location encoder: ours vs published, bf16 vs fp32", body, agreed, figures)


def main(quick: bool = False) -> Result:
    return run(n_coords=256, repeats=2, threads=(1,), train=False) if quick else run()


if __name__ == "__main__":
    print(main().markdown())
