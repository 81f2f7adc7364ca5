"""The cross-view task's run configuration (Sample4Geo, "SampleGeo" in the thesis): data, model, train, eval.

Every field is documented where it is declared; the defaults are Sample4Geo's training scripts
(``../shared/REFERENCE.md``) except where a field says otherwise. The mode follows from
``model.backbone.trainable``: **end to end** (the backbone trains on decoded, augmented images; for
GPUs) or **cached** (a frozen backbone's features are extracted once per view and data set into the
project's feature-cache format, and a trainable head per view learns the match; cheap sweeps on a
laptop CPU). ``train.batches`` is the shared batch-assembly section (``geoloc.parts.config``):
random, GPS neighbours or Dynamic Similarity Sampling.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from geoloc.common.metrics import accuracy_key
from geoloc.common.validation import FieldError, Float, Section
from geoloc.data.crossview.offline import OfflineCrossViewConfig
from geoloc.parts.config import BatchesConfig
from geoloc.tasks.seam import TaskConfig

Size = tuple[Annotated[StrictInt, Field(ge=8)], Annotated[StrictInt, Field(ge=8)]]


class VigorConfig(Section):
    """VIGOR's split (``data.layout: vigor`` only)."""

    area: Literal["same", "cross"] = "same"
    """same: train and evaluate on the same four cities; cross: train on NewYork and Seattle, evaluate
    on Chicago and SanFrancisco."""


class DataConfig(Section):
    """The data set, as its publishers ship it, and where derived files are kept."""

    layout: Literal["cvusa", "cvact", "vigor", "offline"] = "offline"
    """The published layout of ``root`` (``geoloc.data.crossview``), or the bundled synthetic benchmark."""
    root: StrictStr | None = None
    """The data set's folder, untouched; ignored by ``offline`` (built under ``offline.root``)."""
    vigor: VigorConfig = Field(default_factory=VigorConfig)
    """VIGOR's same-area or cross-area split."""
    offline: OfflineCrossViewConfig = Field(default_factory=OfflineCrossViewConfig)
    """Parameters of the synthetic cross-view benchmark (``layout: offline``)."""
    cache_root: StrictStr = "~/.cache/geoloc-study/crossview"
    """Where cached mode's feature caches are kept, one folder per data set, split, backbone and sizes."""
    views: StrictInt = Field(4, ge=1)
    """Cached mode: views extracted per training pair (view 0 unaugmented, the rest with Sample4Geo's
    paired flips and rotations); each epoch draws one per pair. Evaluation uses view 0."""

    @model_validator(mode="after")
    def _root_of_a_published_layout(self) -> DataConfig:
        if self.layout != "offline" and self.root is None:
            raise FieldError("root", f"the folder of the {self.layout} data set is required")
        return self


class BackboneConfig(Section):
    """The image encoder: a timm architecture, weights only from a local file (nothing is downloaded)."""

    name: StrictStr = "convnext_base.fb_in22k_ft_in1k_384"
    """timm model name (Sample4Geo's ConvNeXt-B); its pooled features are the embedding (end to end)
    or the cached features (cached)."""
    weights: StrictStr | None = None
    """A local weights file (.safetensors, .pth, .bin) of that architecture; null: random
    initialisation (seeded by ``train.seed``; tests use it with a tiny architecture)."""
    trainable: StrictBool = True
    """true: end to end; false: cached mode (frozen backbone, a trainable head per view)."""
    grad_checkpointing: StrictBool = False
    """End to end: recompute activations in the backward (timm's ``set_grad_checkpointing``) to fit
    larger batches in GPU memory, at about a third more compute."""


class ModelConfig(Section):
    """The encoders of both views."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    """The image backbone."""
    shared: StrictBool = True
    """One backbone for both views (Sample4Geo) or one per view (each initialised alike from ``weights``)."""
    query_size: Size = (384, 768)
    """Ground panoramas are resized to (height, width)."""
    reference_size: Size = (384, 384)
    """Aerial tiles are resized to (height, width)."""
    head_dim: StrictInt = Field(512, ge=1)
    """Cached mode: the embedding size of each view's trainable head (a two-layer MLP)."""
    init_temperature: Float = Field(0.07, ge=0.01, le=10)
    """Initial softmax temperature; the logit scale log(1 / temperature) is learned (Sample4Geo)."""


class LossConfig(Section):
    """The symmetric InfoNCE (query-to-reference plus reference-to-query cross-entropy)."""

    type: Literal["symmetric"] = "symmetric"
    """Sample4Geo's loss; the only one so far."""
    label_smoothing: Float = Field(0.1, ge=0.0, lt=1.0)
    """Label smoothing of both cross-entropies (``torch.nn.functional.cross_entropy``)."""


class TrainConfig(Section):
    """The optimisation: AdamW with a warm-up and a cosine schedule, per step."""

    epochs: StrictInt = Field(40, ge=1)
    """Epochs to train; an epoch places every training pair once."""
    batch_size: StrictInt = Field(128, ge=2)
    """Pairs per step (in-batch negatives: batch_size - 1 per query)."""
    lr: Float = Field(1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: Float = Field(0.01, ge=0.0)
    """AdamW's decoupled weight decay (torch's default, which Sample4Geo keeps)."""
    warmup_epochs: Float = Field(1.0, ge=0.0)
    """Linear warm-up from 0 to ``lr`` over this many epochs, then a cosine decay to 0 at the end."""
    clip_grad: Float | None = Field(100.0, gt=0)
    """Gradient norm clipping; null: none."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """The training loss."""
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    """Batch assembly: random, GPS neighbours or similarity lists (Sample4Geo: 32 + 32 of 128, lists
    from similarity from epoch 5, rebuilt every 4)."""
    seed: StrictInt = 0
    """Seed of initialisation, batches, view choice and augmentation."""
    precision: Literal["fp32", "bf16", "tf32"] = "fp32"
    """fp32; bf16 autocast (Sample4Geo's AMP; GPU); tf32 matmuls (GPU only, else fp32)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto takes a GPU when one is visible."""
    threads: StrictInt | None = Field(None, ge=1)
    """Torch CPU threads; null uses the CPUs this process was given (Ray's share in a trial)."""
    workers: StrictInt = Field(0, ge=0)
    """End to end: processes decoding and augmenting images (torch DataLoader workers); 0 decodes in the
    trainer's own process."""

    @model_validator(mode="after")
    def _anchor_groups_fit(self) -> TrainConfig:
        group = 1 + self.batches.neighbours + self.batches.draw
        if self.batches.type != "random" and self.batch_size < group:
            raise FieldError(
                "batch_size",
                f"{self.batch_size} cannot hold one anchor with its {self.batches.neighbours} neighbours and "
                f"{self.batches.draw} drawn ({group}); raise it or lower train.batches.neighbours/draw",
            )
        return self


RECALL_TOP1PCT = "recall_top1pct"
HIT_RATE = "hit_rate"


def recall_key(k: int) -> str:
    """``recall_1``: the share of queries whose true reference ranks among the k most similar."""
    return f"recall_{k}"


class EvalConfig(Section):
    """Retrieval of every validation query among all validation references, and the objective."""

    recall_at: tuple[Annotated[StrictInt, Field(ge=1)], ...] = (1, 5, 10)
    """Recall@k for each k (``recall_<k>``); Recall at the top 1 % of the references is always reported."""
    thresholds_km: tuple[Annotated[Float, Field(gt=0)], ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
    """Great-circle distance from the query to its top-1 reference: ``acc_<t>km`` for each threshold,
    the same scale as GeoCLIP's."""
    score_weights: dict[StrictStr, Float] = Field(default_factory=lambda: {"recall_1": 1.0})
    """``score`` is the weighted mean of these metrics (``recall_<k>``, ``recall_top1pct``,
    ``hit_rate`` on VIGOR, ``acc_<t>km``)."""
    batch_size: StrictInt = Field(256, ge=1)
    """Images per forward pass when embedding, and queries per similarity chunk."""
    at_start: StrictBool = False
    """Also evaluate before the first epoch (epoch 0 in metrics.jsonl and TensorBoard), drawing from no
    training random stream."""

    @field_validator("recall_at")
    @classmethod
    def _some_k(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        if not ks or len(set(ks)) != len(ks):
            raise ValueError(f"needs at least one k, each once, got {list(ks)}")
        return tuple(sorted(ks))

    @field_validator("score_weights")
    @classmethod
    def _usable_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"must be >= 0 with a positive sum, got {weights}")
        return weights

    def score_candidates(self, vigor: bool) -> list[str]:
        """The keys ``score_weights`` may name."""
        keys = [recall_key(k) for k in self.recall_at] + [RECALL_TOP1PCT]
        return keys + ([HIT_RATE] if vigor else []) + [accuracy_key(t) for t in self.thresholds_km]


class CrossViewConfig(TaskConfig):
    """One cross-view training run: what ``python -m geoloc.train CONFIG.yaml`` reads for ``task: cross_view``."""

    task: Literal["cross_view"] = "cross_view"
    """Sample4Geo's ground-to-aerial retrieval."""

    data: DataConfig = Field(default_factory=DataConfig)
    """The data set."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Backbone and heads."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """The optimisation."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation and the ``score``."""

    @model_validator(mode="after")
    def _weights_of_reported_metrics(self) -> CrossViewConfig:
        known = self.eval.score_candidates(self.data.layout == "vigor")
        unknown = [key for key in self.eval.score_weights if key not in known]
        if unknown:
            raise FieldError(
                "eval.score_weights", f"{unknown[0]!r} is not a metric of this run (known: {', '.join(known)})"
            )
        return self

    @property
    def cached(self) -> bool:
        """Cached mode (frozen backbone, heads per view) rather than end to end."""
        return not self.model.backbone.trainable
