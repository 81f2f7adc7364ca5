"""The training losses of ``train.loss``: GeoCLIP's InfoNCE (published), a symmetric InfoNCE, a triplet loss.

Every loss sees the same columns: image i of the batch is scored against the location embeddings
of the batch and the queue (shared by all images; column i is its own GPS) and against its own
mined negatives (``geoloc.parts.negatives``), appended after them. ``val_loss`` stays the published
InfoNCE (``geoloc.tasks.geoclip.evaluate``), so it compares across losses.

``symmetric_infonce`` is the cross-view task's loss (Sample4Geo): pairs of a batch, query against
reference and reference against query, with no queue and no mined columns.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from geoloc.parts.config import LossConfig


def columns(image_emb: torch.Tensor, location_emb: torch.Tensor, mined_emb: torch.Tensor | None) -> torch.Tensor:
    """(B, B+Q[+M]) products of each image row with the shared location rows, then with its own mined rows."""
    shared = image_emb @ location_emb.T
    if mined_emb is None:
        return shared
    return torch.cat([shared, torch.einsum("bd,bmd->bm", image_emb, mined_emb.to(image_emb.dtype))], dim=1)


def training_loss(
    cfg: LossConfig,
    image_emb: torch.Tensor,
    location_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    mined_emb: torch.Tensor | None = None,
    masked: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of one step (a 0-d float32 tensor) from unit embeddings: images (B, D), batch and queue
    locations (B+Q, D), mined locations (B, M, D) or None; ``logit_scale`` is the model's log scale;
    ``masked`` (B, B+Q[+M]) booleans or None: columns left out of their row's loss (false negatives
    within ``train.negatives.mask_within_km``; never a row's own column).

    - infonce: ``cross_entropy(scale * columns, i)``, exactly the published step's arithmetic (the
      scale multiplies the image embeddings before the product, as ``GeoCLIP.logits`` does); masked
      logits are -inf, so they take no share of the softmax;
    - symmetric: the mean of that and the cross-entropy of each batch GPS against the batch's images
      (the transposed batch block), both with ``label_smoothing`` (spread over the columns left in);
    - triplet: the mean over every image and every column other than its own (and not masked) of
      ``relu(d(image, own GPS) - d(image, other) + margin)``; the logit scale takes no part.
    """
    target = torch.arange(len(image_emb), device=image_emb.device)
    if cfg.type == "triplet":
        similarity = columns(image_emb, location_emb, mined_emb).float()
        distance = 1 - similarity if cfg.distance == "cosine" else (2 - 2 * similarity).clamp_min(1e-12).sqrt()
        positive = distance[target, target]
        others = torch.ones_like(distance, dtype=torch.bool)
        others[target, target] = False
        if masked is not None:
            others &= ~masked
        return F.relu(positive[:, None] - distance + cfg.margin)[others].mean()
    logits = columns(logit_scale.exp() * image_emb, location_emb, mined_emb)
    if masked is not None:
        logits = logits.float().masked_fill(masked, -math.inf)
    loss = cross_entropy(logits.float(), target, cfg.label_smoothing, masked)
    if cfg.type == "symmetric":
        batch = len(target)
        gps_to_image = logits[:, :batch].T
        back = masked[:, :batch].T if masked is not None else None
        loss = (loss + cross_entropy(gps_to_image.float(), target, cfg.label_smoothing, back)) / 2
    return loss


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float, masked: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.cross_entropy`` with ``label_smoothing``; where ``masked`` (logits -inf there) and smoothing meet,
    the smoothing's uniform share goes to the columns left in (torch's would meet -inf and be infinite)."""
    if masked is None or label_smoothing == 0:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    log_p = logits.log_softmax(dim=-1).masked_fill(masked, 0.0)
    own = -log_p[torch.arange(len(target), device=target.device), target]
    uniform = -log_p.sum(dim=-1) / (~masked).sum(dim=-1)
    return ((1 - label_smoothing) * own + label_smoothing * uniform).mean()


def symmetric_infonce(
    query_emb: torch.Tensor, reference_emb: torch.Tensor, logit_scale: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Sample4Geo's symmetric InfoNCE of a batch of pairs (its ``InfoNCE``): query i's positive is
    reference i, every other reference of the batch a negative, and the other way round.

    ``(cross_entropy(L, i) + cross_entropy(L.T, i)) / 2`` with ``label_smoothing``, where
    ``L = logit_scale * normalize(query_emb) @ normalize(reference_emb).T``: the embeddings are
    normalised here, as Sample4Geo does, and ``logit_scale`` is the multiplier itself (Sample4Geo's
    trainer passes ``model.logit_scale.exp()``), not its log as ``training_loss`` takes it.
    A 0-d float32 tensor (the cross-entropies in fp32 whatever the embeddings' dtype).
    """
    logits = (logit_scale * F.normalize(query_emb, dim=-1) @ F.normalize(reference_emb, dim=-1).T).float()
    target = torch.arange(len(logits), device=logits.device)
    forward = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return (forward + F.cross_entropy(logits.T, target, label_smoothing=label_smoothing)) / 2
