"""Typed configuration of one training run, loaded from YAML and validated before any work.

Every field is documented where it is declared. ``load_config(path)`` and ``from_dict`` reject
unknown keys, wrong types and impossible values with a ``ConfigError`` whose message starts
with the key path (``train.batch_size: must be >= 1, got 0``); command-line entries turn it
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A user's configuration mistake; the message names the key path or file."""


@dataclass
class OfflineBenchmarkConfig:
    """The bundled synthetic stand-in for a CLIP feature data set (geoloc.data.synthetic)."""

    n_train: int = 10_000
    """Training images, drawn from the published 100K MP-16 coordinates."""
    n_val: int = 1_000
    """Validation images, held out from the training coordinates."""
    n_gallery: int = 10_000
    """Gallery points, drawn from the training coordinates as in GeoCLIP."""
    feature_dim: int = 768
    """Width of an image feature (ViT-L/14 gives 768)."""
    views: int = 4
    """Augmented views cached per training image; each epoch draws one."""
    landmark_share: float = 0.3
    """Share of images whose features carry the fine (25 km and 1 km) location signal strongly."""
    seed: int = 0
    """Seed of the benchmark itself (fields, splits, nuisance), independent of the trial seed."""
    root: str = "~/.cache/geoloc-study/offline"
    """Folder where built benchmarks are kept, one subfolder per distinct configuration."""

    def validate(self, path: str) -> None:
        for name in ("n_train", "n_val", "n_gallery", "feature_dim", "views"):
            at_least(self, name, 1, path)
        _in_range(self, "landmark_share", 0.0, 1.0, path)


@dataclass
class DataConfig:
    """Where features, coordinates and the gallery come from."""

    train: str = "offline"
    """Feature cache folder of the training set, or "offline" for the synthetic benchmark."""
    val: list[str] = field(default_factory=lambda: ["offline"])
    """Evaluation caches; the first drives ``score``. "offline" is the benchmark's validation split."""
    gallery: str = "offline"
    """GPS gallery: "offline" (the benchmark's), "geoclip" (published 100K MP-16), "train"
    (the training coordinates) or a CSV file with LAT and LON columns."""
    gallery_size: int | None = None
    """Thin the gallery to this many points (seeded); null keeps all."""
    offline: OfflineBenchmarkConfig = field(default_factory=OfflineBenchmarkConfig)
    """Parameters of the synthetic benchmark, used wherever "offline" is named."""

    def validate(self, path: str) -> None:
        if not self.val:
            raise ConfigError(f"{path}.val: needs at least one evaluation set")
        if self.gallery_size is not None:
            at_least(self, "gallery_size", 1, path)


WARM_START_ARCHITECTURE = ("rff_scales", "rff_features", "hidden_dim", "depth", "embed_dim", "image_hidden_dim")
"""ModelConfig fields that must keep their published defaults for ``model.warm_start``."""


@dataclass
class ModelConfig:
    """GeoCLIP's trainable parts; the defaults are the published architecture."""

    rff_scales: list[float] = field(default_factory=lambda: [2.0**0, 2.0**4, 2.0**8])
    """Random-Fourier-feature sigma of each location-encoder branch; branch outputs are summed."""
    rff_features: int = 256
    """Frequencies per branch (cos and sin give twice as many inputs)."""
    hidden_dim: int = 1024
    """Width of each branch's MLP."""
    depth: int = 3
    """Hidden layers per branch."""
    embed_dim: int = 512
    """Shared image/location embedding size."""
    image_hidden_dim: int = 768
    """Hidden width of the image head (frozen backbone features -> embedding)."""
    init_temperature: float = 0.07
    """Initial softmax temperature; logit scale = log(1 / temperature)."""
    learn_temperature: bool = True
    """Learn the logit scale (clamped to at most 100 like CLIP) or keep it fixed."""
    warm_start: bool = False
    """Start the image head, location encoder and logit scale from the published GeoCLIP weights
    (the installed ``geoclip`` package) instead of a random initialisation; ``init_temperature``
    is then ignored. Needs the published architecture (the defaults above) and 768-d features
    (CLIP ViT-L/14)."""

    def validate(self, path: str) -> None:
        if not self.rff_scales or any(not s > 0 for s in self.rff_scales):
            raise ConfigError(f"{path}.rff_scales: needs one or more positive scales, got {self.rff_scales}")
        for name in ("rff_features", "hidden_dim", "depth", "embed_dim", "image_hidden_dim"):
            at_least(self, name, 1, path)
        if not 0.01 <= self.init_temperature <= 10:
            raise ConfigError(f"{path}.init_temperature: must lie in [0.01, 10], got {self.init_temperature}")
        if self.warm_start:
            published = ModelConfig()
            changed = [f"{k}={getattr(self, k)} (published {getattr(published, k)})"
                       for k in WARM_START_ARCHITECTURE if getattr(self, k) != getattr(published, k)]
            if changed:
                raise ConfigError(f"{path}.warm_start: needs the published architecture; this model has {', '.join(changed)}")


@dataclass
class NoiseConfig:
    """Gaussian noise on the GPS side of the contrastive loss (0 switches a part off)."""

    target: Literal["gps", "embedding"] = "gps"
    """"gps": displace coordinates on the sphere (sigmas in km); "embedding": add noise to the
    L2-normalised location embeddings and renormalise (sigmas in embedding units), as the thesis
    described it."""
    batch_sigma: float = 0.0
    """Noise on the batch's own GPS (the positives). The paper quotes 0.15 km."""
    queue_sigma: float = 0.0
    """Noise on the queue GPS (negatives). The paper quotes 1.0 km."""

    def validate(self, path: str) -> None:
        at_least(self, "batch_sigma", 0.0, path)
        at_least(self, "queue_sigma", 0.0, path)


@dataclass
class TrainConfig:
    """The optimisation; defaults follow published reimplementations."""

    epochs: int = 10
    """Epochs to train."""
    batch_size: int = 512
    """Images per step."""
    queue_size: int = 4096
    """GPS queue length (FIFO of past batch GPS, any size >= 0; 0 disables it)."""
    lr: float = 3e-5
    """Adam learning rate."""
    weight_decay: float = 1e-6
    """Adam weight decay."""
    lr_gamma: float = 0.87
    """StepLR decay per epoch."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """GPS noise."""
    seed: int = 0
    """Seed of initialisation, shuffling, view choice and noise."""
    precision: Literal["fp32", "bf16", "tf32"] = "fp32"
    """fp32; bf16 autocast (CPU and GPU); tf32 matmuls (GPU only, else fp32)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto takes a GPU when one is visible."""
    threads: int | None = None
    """Torch CPU threads; null uses the CPUs this process was given (Ray's share in a trial)."""

    def validate(self, path: str) -> None:
        for name in ("epochs", "batch_size"):
            at_least(self, name, 1, path)
        at_least(self, "queue_size", 0, path)
        if not self.lr > 0:
            raise ConfigError(f"{path}.lr: must be > 0, got {self.lr}")
        at_least(self, "weight_decay", 0.0, path)
        _in_range(self, "lr_gamma", 1e-6, 1.0, path)
        if self.threads is not None:
            at_least(self, "threads", 1, path)


@dataclass
class EvalConfig:
    """Gallery retrieval and the objective."""

    thresholds_km: list[float] = field(default_factory=lambda: [1.0, 25.0, 200.0, 750.0, 2500.0])
    """Accuracy thresholds; each gives a metric ``acc_<t>km``."""
    score_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 1.0])
    """Weight of each threshold's accuracy in ``score`` (their weighted mean)."""
    val_negatives: int = 1024
    """Training GPS drawn once (seed 0) as the fixed negatives of ``val_loss``."""
    batch_size: int = 256
    """Validation images per similarity chunk (also the batch of ``val_loss``)."""
    gallery_chunk: int = 8192
    """Gallery points encoded and scored per chunk, so a 100K gallery fits in memory."""

    def validate(self, path: str) -> None:
        if not self.thresholds_km:
            raise ConfigError(f"{path}.thresholds_km: needs at least one threshold")
        if any(not t > 0 for t in self.thresholds_km):
            raise ConfigError(f"{path}.thresholds_km: thresholds must be > 0, got {self.thresholds_km}")
        if len(self.score_weights) != len(self.thresholds_km):
            raise ConfigError(
                f"{path}.score_weights: needs one weight per threshold "
                f"({len(self.thresholds_km)}), got {len(self.score_weights)}"
            )
        if any(w < 0 for w in self.score_weights) or sum(self.score_weights) <= 0:
            raise ConfigError(f"{path}.score_weights: must be >= 0 with a positive sum, got {self.score_weights}")
        for name in ("val_negatives", "batch_size", "gallery_chunk"):
            at_least(self, name, 1, path)


@dataclass
class RunConfig:
    """One training run: what ``python -m geoloc.train CONFIG.yaml`` reads."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)



def metric_name(threshold_km: float) -> str:
    """``acc_1km``, ``acc_2500km``, ``acc_0.5km``: the metric key of one threshold."""
    return f"acc_{threshold_km:g}km"


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with ``safe_load``; file problems become ConfigError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """A validated RunConfig from a YAML file, with optional nested overrides applied on top.

    A study file is accepted too: its ``base`` section is the run (so ``python -m geoloc.train
    studies/quickstart.yaml`` trains the quickstart's base configuration once).
    """
    data = load_yaml(path)
    if "base" in data and "search_space" in data:
        data = data["base"] or {}
    if overrides:
        data = deep_merge(data, overrides)
    return from_dict(RunConfig, data)


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in recursively (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def set_path(data: dict, dotted: str, value: Any) -> dict:
    """Return a copy of ``data`` with ``a.b.c = value`` set, creating mappings on the way."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    out[head] = set_path(out.get(head) if isinstance(out.get(head), dict) else {}, rest, value) if rest else value
    return out


def get_path(tree: dict, dotted: str) -> Any:
    """``tree["a"]["b"]["c"]`` for ``"a.b.c"``; KeyError when a part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from plain data, checking keys, types and each ``validate``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<top>'}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
    values = {name: _convert(hints[name], data[name], _join(path, name)) for name in fields if name in data}
    obj = cls(**values)
    for f in fields.values():
        if dataclasses.is_dataclass(hints[f.name]) and f.name not in data:
            # defaults of nested sections are validated too (they may be overridden elsewhere)
            _validate(getattr(obj, f.name), _join(path, f.name))
    _validate(obj, path or "<top>")
    return obj


def _validate(obj, path: str) -> None:
    if hasattr(obj, "validate"):
        obj.validate(path)


def to_dict(obj) -> dict:
    """Plain data (for YAML, JSON, checkpoints and HParams) from a config dataclass."""
    return dataclasses.asdict(obj)


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML reads 3e-5 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {_describe(value)}")
        return float(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported configuration type {tp} at {path}")


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def at_least(obj, name: str, low, path: str) -> None:
    """ConfigError naming ``path.name`` unless ``obj.name >= low``."""
    value = getattr(obj, name)
    if value < low:
        raise ConfigError(f"{path}.{name}: must be >= {low}, got {value}")


def _in_range(obj, name: str, low, high, path: str) -> None:
    value = getattr(obj, name)
    if not low <= value <= high:
        raise ConfigError(f"{path}.{name}: must lie in [{low}, {high}], got {value}")
