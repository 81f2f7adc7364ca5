"""GeoCLIP's trainable parts: location encoder, image head, logit scale and the GPS queue.

The model knows nothing of data files, Ray or YAML. Parameter names follow the published
``geoclip`` package, so its ``location_encoder_weights.pth`` and ``image_encoder_mlp_weights.pth``
load strictly into ``LocationEncoder`` and ``ImageHead``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.data.synthetic import geoclip_package_dir
from geoloc.geo import equal_earth_projection
from geoloc.parts.precision import exact_fp32
from geoloc.tasks.geoclip.config import PUBLISHED_RFF_SCALES, ModelConfig

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: temperature never below 0.01
Runner = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # how a module is called on an input


def load_geoclip_weights(name: str) -> dict[str, torch.Tensor]:
    """One of the published weight files (``location_encoder``, ``image_encoder_mlp``, ``logit_scale``)."""
    return torch.load(geoclip_package_dir() / "weights" / f"{name}_weights.pth", map_location="cpu", weights_only=True)


class GaussianFourierFeatures(nn.Module):
    """cos and sin of 2*pi*B v with B ~ N(0, sigma^2), fixed (``b`` is a frozen parameter, as published)."""

    def __init__(self, sigma: float, n_features: int, input_dim: int = 2):
        super().__init__()
        self.b = nn.Parameter(torch.randn(n_features, input_dim) * sigma, requires_grad=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        # Always exact fp32: under bf16 autocast or TF32 the phases of the sigma=256 branch (|B v|
        # in the hundreds) would keep 2-3 significant digits, and cos/sin of them would be noise.
        with exact_fp32(v.device):
            vp = 2 * math.pi * v.float() @ self.b.T.float()
            return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class LocationBranch(nn.Module):
    """One RFF scale: Fourier features -> ``depth`` x (Linear, ReLU) -> linear head."""

    def __init__(self, sigma: float, n_features: int, hidden_dim: int, depth: int, embed_dim: int):
        super().__init__()
        layers: list[nn.Module] = [GaussianFourierFeatures(sigma, n_features)]
        width = 2 * n_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        self.capsule = nn.Sequential(*layers)  # names as published: capsule.0.b, capsule.1.weight, ...
        self.head = nn.Sequential(nn.Linear(hidden_dim, embed_dim))

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        return self.head(self.capsule(projected))


class LocationEncoder(nn.Module):
    """(N, 2) (lat, lon) degrees -> (N, embed_dim): Equal Earth projection, one branch per scale, summed."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.embed_dim = cfg.embed_dim
        self.scales = tuple(cfg.rff_scales)
        for i, sigma in enumerate(cfg.rff_scales):
            self.add_module(
                f"LocEnc{i}", LocationBranch(sigma, cfg.rff_features, cfg.hidden_dim, cfg.depth, cfg.embed_dim)
            )

    @classmethod
    def from_geoclip(cls) -> LocationEncoder:
        """The published architecture with the published weights of the installed ``geoclip`` package."""
        encoder = cls(ModelConfig())
        encoder.load_state_dict(load_geoclip_weights("location_encoder"), strict=True)
        return encoder

    def published_branches(self) -> list[LocationBranch]:
        """The branches of the published scales 1, 16, 256, in that order (the first branch of each
        scale); ValueError when a published scale is not among this encoder's scales."""
        missing = [s for s in PUBLISHED_RFF_SCALES if s not in self.scales]
        if missing:
            raise ValueError(f"the published scales {missing} are not among this encoder's {list(self.scales)}")
        return [getattr(self, f"LocEnc{self.scales.index(s)}") for s in PUBLISHED_RFF_SCALES]

    def load_published(self, state: dict[str, torch.Tensor]) -> None:
        """Warm start from the published state dict: its branch ``LocEnc<j>`` (the j-th published scale)
        loads strictly into this encoder's branch of that scale, wherever ``rff_scales`` lists it; every
        other branch gets a zero head (weight and bias), so it adds exactly 0 and the encoder's output
        is the published one until training moves that head. The branch's Fourier features and hidden
        layers keep their seeded random start (a branch zeroed throughout would get no gradient)."""
        published = self.published_branches()
        prefixes = [f"LocEnc{j}." for j in range(len(published))]
        unknown = [k for k in state if not k.startswith(tuple(prefixes))]
        if unknown:
            raise RuntimeError(f"unexpected keys in the published location encoder: {unknown}")
        for prefix, branch in zip(prefixes, published, strict=True):
            branch.load_state_dict(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}, strict=True
            )
        with torch.no_grad():
            for branch in self.children():
                if not any(branch is p for p in published):
                    branch.head[0].weight.zero_()
                    branch.head[0].bias.zero_()

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        projected = equal_earth_projection(latlon)
        branches = iter(self.children())
        out = next(branches)(projected)
        for branch in branches:
            out = out + branch(projected)
        return out


class ImageHead(nn.Sequential):
    """Trainable MLP over frozen backbone features: Linear, ReLU, Linear (published names 0.*, 2.*)."""

    def __init__(self, feature_dim: int, hidden_dim: int, embed_dim: int):
        super().__init__(nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, embed_dim))


class GPSQueue(nn.Module):
    """FIFO of past batch GPS, used as extra negatives. Any size >= 0; empty until filled.

    The write position and fill level are buffers (so checkpoints hold them) with a copy as Python
    ints, which is what the step reads: reading a GPU buffer's value waits for the GPU. A push writes
    at the position buffer and moves it on the device, so a step captured as one CUDA graph pushes
    where it should at every replay; ``advance`` keeps the host's copies along.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.register_buffer("coords", torch.zeros(size, 2))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self._ptr = self._count = 0

    def contents(self) -> torch.Tensor:
        """The filled part (order does not matter to the loss)."""
        return self.coords[: self._count]

    def push(self, gps: torch.Tensor) -> None:
        self.write(gps)
        self.advance(len(gps))

    @torch.no_grad()
    def write(self, gps: torch.Tensor) -> None:
        """A push's device work: the newest ``size`` of ``gps`` written at the position buffer, which moves on."""
        if self.size == 0:
            return
        gps = gps[-self.size :]
        idx = (self.ptr + torch.arange(len(gps), device=gps.device)) % self.size
        self.coords[idx] = gps.to(self.coords.dtype)
        self.ptr.copy_((self.ptr + len(gps)) % self.size)
        self.count.fill_(min(self.size, self._count + len(gps)))

    def advance(self, n: int) -> None:
        """The host's copies of position and fill after a write of ``n`` (a replayed write runs no Python)."""
        if self.size:
            self._ptr = (self._ptr + min(n, self.size)) % self.size
            self._count = min(self.size, self._count + n)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ptr, self._count = int(self.ptr), int(self.count)  # once per load, not per step


class GeoCLIP(nn.Module):
    """Image head + location encoder + logit scale + GPS queue, over precomputed image features."""

    def __init__(self, cfg: ModelConfig, feature_dim: int, queue_size: int):
        super().__init__()
        self.image_head = ImageHead(feature_dim, cfg.image_hidden_dim, cfg.embed_dim)
        self.location_encoder = LocationEncoder(cfg)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1 / cfg.init_temperature)),
            requires_grad=cfg.learn_temperature and "temperature" not in cfg.freeze,
        )
        self.queue = GPSQueue(queue_size)
        # Frozen parts take no gradient, and the trainer's optimiser takes only parameters that
        # do: they stay bitwise as they start (warm-started values are copied in later, in place).
        frozen: list[nn.Module] = []
        if "image_head" in cfg.freeze:
            frozen.append(self.image_head)
        if "published_branches" in cfg.freeze:
            frozen += self.location_encoder.published_branches()
        for part in frozen:
            part.requires_grad_(False)

    def encode_images(self, features: torch.Tensor, run: Runner = nn.Module.__call__) -> torch.Tensor:
        """Unit image embeddings; ``run(module, x)`` calls the head (the trainer's replays CUDA graphs)."""
        return F.normalize(run(self.image_head, features), dim=-1)

    def encode_locations(self, latlon: torch.Tensor, run: Runner = nn.Module.__call__) -> torch.Tensor:
        """Unit location embeddings; ``run`` as in ``encode_images``."""
        return F.normalize(run(self.location_encoder, latlon), dim=-1)

    def logits(self, image_emb: torch.Tensor, location_emb: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * image_emb @ location_emb.T

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        if self.logit_scale.requires_grad:  # a fixed scale stays as configured, even outside the clamp
            self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))

    def load_geoclip_weights(self) -> None:
        """Warm start from the published image head, location encoder and logit scale; branches of
        scales beyond the published ones start at zero output (``LocationEncoder.load_published``)."""
        self.location_encoder.load_published(load_geoclip_weights("location_encoder"))
        self.image_head.load_state_dict(load_geoclip_weights("image_encoder_mlp"), strict=True)
        with torch.no_grad():
            self.logit_scale.copy_(load_geoclip_weights("logit_scale").reshape(()))
