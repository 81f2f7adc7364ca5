"""The cross-view encoders: a timm backbone (shared by both views or one per view) and a learned logit scale.

End to end the backbone's pooled features, L2-normalised, are the embeddings (Sample4Geo). In
cached mode the backbone is frozen and runs once, at extraction (``geoloc.data.crossview.extract``);
the model is then one trainable head per view on the cached features. Weights come only from a
local file (``model.backbone.weights``); without one the backbone is randomly initialised from the
run's seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.common.validation import ConfigError
from geoloc.tasks.cross_view.config import BackboneConfig, ModelConfig

WEIGHTS_KEY = "model.backbone.weights"


def weights_file(cfg: BackboneConfig) -> Path | None:
    """The local weights file, None for a random initialisation; ConfigError naming the key when it is no file."""
    if cfg.weights is None:
        return None
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"{WEIGHTS_KEY}: {path} is not a file")
    return path


def create_backbone(cfg: BackboneConfig) -> nn.Module:
    """The timm architecture with its classifier removed (``num_classes=0``: pooled features out), and
    the local weights loaded strictly: a missing file, an unreadable one, or one that does not fit the
    architecture (missing, unexpected or differently shaped tensors) is a ConfigError naming the key."""
    import timm

    try:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=0)
    except RuntimeError as e:  # timm's "Unknown model"
        raise ConfigError(f"model.backbone.name: {e}") from None
    path = weights_file(cfg)
    if path is None:
        return model
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:  # a torn or foreign file: safetensors, pickle and zip readers raise their own types
        raise ConfigError(f"{WEIGHTS_KEY}: {path} is not a readable weights file ({type(e).__name__}: {e})") from None
    classifier = model.pretrained_cfg.get("classifier") or "head.fc"
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    own = model.state_dict()
    # The file's classifier has no place in a model without one (num_classes=0); every other tensor must fit.
    state = {k: v for k, v in state.items() if k in own or not any(k.startswith(c + ".") for c in classifiers)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        first = (missing or unexpected or misshapen)[0]
        what = "lacks" if missing else "has an unexpected" if unexpected else "has a differently shaped"
        raise ConfigError(
            f"{WEIGHTS_KEY}: {path} does not fit {cfg.name}: it {what} tensor {first!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(misshapen)} misshapen)"
        )
    model.load_state_dict(state)
    return model


class Head(nn.Module):
    """Cached mode: a view's trainable map from frozen features to the shared embedding space."""

    def __init__(self, feature_dim: int, embed_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(), nn.Linear(feature_dim, embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class CrossViewModel(nn.Module):
    """``encode_queries`` / ``encode_references``: L2-normalised embeddings of ground and aerial inputs
    (images end to end, cached features in cached mode); ``logit_scale`` is log(1 / temperature)."""

    def __init__(self, cfg: ModelConfig, feature_dim: int | None = None):
        super().__init__()
        self.cached = feature_dim is not None
        if self.cached:
            self.query_encoder: nn.Module = Head(feature_dim, cfg.head_dim)
            self.reference_encoder: nn.Module = Head(feature_dim, cfg.head_dim)
        else:
            self.query_encoder = create_backbone(cfg.backbone)
            self.reference_encoder = self.query_encoder if cfg.shared else create_backbone(cfg.backbone)
            if cfg.backbone.grad_checkpointing:
                for encoder in {id(e): e for e in (self.query_encoder, self.reference_encoder)}.values():
                    encoder.set_grad_checkpointing(True)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def encode_queries(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.query_encoder(x).float(), dim=-1)

    def encode_references(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.reference_encoder(x).float(), dim=-1)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))
