"""The frozen open_clip backbone of a feature extraction: check a model name and its weights, load it.

``--model`` is an open_clip model name or a JSON file in open_clip's model-config format
(registered under its file name). The weights are an open_clip pretrained tag (``--pretrained``),
a local checkpoint (``--checkpoint``, named in the manifest by its SHA-256), or a seeded random
initialisation (``--pretrained random``). Every mistake raises ``DataError`` naming the option.

Only the image tower is kept: extraction calls ``encode_image``, which runs ``model.visual`` alone,
so the text tower (123 M of ViT-L/14's 428 M parameters) is dropped after loading, before the
model is moved to its device; it never takes GPU memory.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from geoloc.data.cache import DataError
from geoloc.data.images import file_sha256

RANDOM_WEIGHTS = "random"


@dataclass
class Backbone:
    """A loaded backbone and what the manifest records of it."""

    model: torch.nn.Module  # the open_clip model, image tower only (see drop_text_tower), frozen, eval, on its device
    name: str
    config: dict  # the open_clip model config
    preprocess: dict  # size, mean, std, interpolation, resize_mode
    quick_gelu: bool
    checkpoint: str | None = None  # the resolved checkpoint path, when loaded from one

    @property
    def feature_dim(self) -> int:
        return int(self.model.visual.output_dim)


def check_weights(pretrained: str | None, checkpoint: str | Path | None) -> Path | None:
    """Exactly one source of weights, and an existing checkpoint file; returns the checkpoint's path."""
    if (pretrained is None) == (checkpoint is None):
        raise DataError("weights: give exactly one of --pretrained TAG (or 'random') and --checkpoint FILE")
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise DataError(f"--checkpoint {checkpoint}: file not found")
    return path


def weights_id(pretrained: str | None, checkpoint: str | Path | None, seed: int) -> str:
    """How the manifest names the weights: the tag, the checkpoint's SHA-256, or the random seed."""
    path = check_weights(pretrained, checkpoint)
    if path is not None:
        return f"sha256:{file_sha256(path)}"
    return f"random(seed={seed})" if pretrained == RANDOM_WEIGHTS else pretrained


def backbone_name(model: str) -> str:
    """The name the manifest records: the model name, or a model-config file's stem."""
    return Path(model).stem if model.endswith(".json") else model


def resolve_backbone(
    name: str, pretrained: str | None = None, checkpoint: str | Path | None = None, quick_gelu: bool = False
) -> tuple[str, dict, str | None, bool]:
    """Check a model name and its weights without loading anything: (name, config, source, quick_gelu)."""
    import open_clip

    path = check_weights(pretrained, checkpoint)
    if name.endswith(".json"):
        config_file = Path(name).expanduser()
        if not config_file.is_file():
            raise DataError(f"--model {name}: model-config file not found")
        open_clip.add_model_config(config_file)
        name = config_file.stem
    config = open_clip.get_model_config(name)
    if config is None:
        raise DataError(
            f"--model {name}: not an open_clip model (e.g. ViT-L-14, ViT-B-32; see open_clip.list_models())"
        )
    if path is not None:
        return name, config, str(path.resolve()), quick_gelu
    if pretrained == RANDOM_WEIGHTS:
        return name, config, None, quick_gelu
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise DataError(
            f"--pretrained {pretrained}: not a pretrained tag of {name} (tags: {tags}; or pass --checkpoint FILE)"
        )
    # OpenAI weights were trained with QuickGELU; open_clip's plain names use GELU.
    return name, config, pretrained, quick_gelu or bool(tag_cfg.get("quick_gelu", False))


def load_backbone(
    name: str,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    quick_gelu: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Backbone:
    """An open_clip model, frozen and in eval mode; DataError for unknown names, tags and bad files.

    ``seed`` seeds the initialisation of ``pretrained="random"``.
    """
    import open_clip

    name, config, source, quick_gelu = resolve_backbone(name, pretrained, checkpoint, quick_gelu)
    with torch.random.fork_rng(devices=[]), quiet_open_clip():
        torch.manual_seed(seed)  # random initialisation is seeded too: reruns give the same bytes
        try:
            model = open_clip.create_model(name, pretrained=source, force_quick_gelu=quick_gelu)
        except RuntimeError as e:
            what = f"--checkpoint {checkpoint}" if checkpoint else f"--pretrained {pretrained}"
            hint = "" if checkpoint else " (no network? download it once, or pass --checkpoint FILE)"
            raise DataError(f"{what}: could not load weights for {name}: {str(e).splitlines()[0]}{hint}") from None
    drop_text_tower(model)  # before the move: the text tower never reaches the device
    model.requires_grad_(False)
    model.eval().to(device)
    return Backbone(model, name, config, dict(model.visual.preprocess_cfg), quick_gelu, source if checkpoint else None)


def drop_text_tower(model: torch.nn.Module) -> torch.nn.Module:
    """Keep only the image tower ``model.visual`` of an open_clip model (in place; returns it).

    Every other submodule, parameter and buffer of the model itself goes: for ``CLIP`` the text
    transformer, ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``
    and ``attn_mask``; for ``CustomTextCLIP`` and ``CoCa`` ``text`` (and ``text_decoder``); and the
    ``logit_scale`` / ``logit_bias`` of the contrastive loss. Their memory is freed with them.
    ``encode_image`` and ``visual`` work as before (they use ``visual`` alone), giving the same
    bytes; ``encode_text`` no longer does.
    """
    if not isinstance(getattr(model, "visual", None), torch.nn.Module):
        raise TypeError(f"{type(model).__name__}: not an open_clip model with an image tower 'visual'")
    for name in [*model._modules, *model._parameters, *model._buffers]:
        if name != "visual":
            delattr(model, name)
    return model


@contextlib.contextmanager
def quiet_open_clip():
    """open_clip logs 'initialized randomly' on the root logger; that is intended here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
