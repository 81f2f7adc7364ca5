"""``python -m geoloc.train CONFIG.yaml --out DIR [--resume] [--seeds K]``: one run of any task, without Ray.

Writes the run folder (``geoloc.study.folders.TrialFolder``: metrics.jsonl, curves.jsonl,
TensorBoard events, checkpoint.pt) into DIR through the one epoch loop, ``geoloc.run.loop.train``.
"""

from __future__ import annotations

import argparse
import sys

from geoloc.common.devices import DeviceError
from geoloc.common.validation import ConfigError
from geoloc.data import DataError
from geoloc.parts.resumable import CheckpointMismatch
from geoloc.run.loop import format_metrics, train
from geoloc.study.config import load_job, registry_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geoloc.train", description="Train one run configuration once, without Ray."
    )
    parser.add_argument("config", help="run configuration YAML (every key is documented in its task's config.py)")
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
        registry = registry_of(cfg)
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
