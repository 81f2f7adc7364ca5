"""GeoCLIP's run configuration: its model, training and evaluation sections.

Every field is documented where it is declared; the data section (``geoloc.data.config``) and the
shared training parts' sections (``geoloc.parts.config``: loss, negatives, batches) are declared
beside the code that reads them. Validation and its one-line errors are ``geoloc.common.validation``'s;
``geoloc.study.config.parse_job`` picks this class for ``task: geoclip`` (the default).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from geoloc.common.validation import FieldError, Float, Section
from geoloc.data.config import DataConfig
from geoloc.parts.config import BatchesConfig, LossConfig, NegativesConfig
from geoloc.tasks.seam import TaskConfig

PUBLISHED_RFF_SCALES = (2.0**0, 2.0**4, 2.0**8)
"""The published location encoder's scales; its branches ``LocEnc0/1/2`` belong to them in this order."""

WARM_START_ARCHITECTURE = ("rff_features", "hidden_dim", "depth", "embed_dim", "image_hidden_dim")
"""ModelConfig fields that must keep their published defaults for ``model.warm_start`` (``rff_scales``
only has to contain the published scales)."""

Frozen = Literal["published_branches", "image_head", "temperature"]
"""A part of the model that ``model.freeze`` can keep as it starts."""


class ModelConfig(Section):
    """GeoCLIP's trainable parts; the defaults are the published architecture."""

    rff_scales: tuple[Annotated[Float, Field(gt=0)], ...] = PUBLISHED_RFF_SCALES
    """Random-Fourier-feature sigma of each location-encoder branch; branch outputs are summed.
    With ``warm_start`` it must contain the published 1, 16 and 256 and may add others, in any
    order (``[1, 16, 256, 4096]`` adds a finer branch)."""
    rff_features: StrictInt = Field(256, ge=1)
    """Frequencies per branch (cos and sin give twice as many inputs)."""
    hidden_dim: StrictInt = Field(1024, ge=1)
    """Width of each branch's MLP."""
    depth: StrictInt = Field(3, ge=1)
    """Hidden layers per branch."""
    embed_dim: StrictInt = Field(512, ge=1)
    """Shared image/location embedding size."""
    image_hidden_dim: StrictInt = Field(768, ge=1)
    """Hidden width of the image head (frozen backbone features -> embedding)."""
    init_temperature: Float = Field(0.07, ge=0.01, le=10)
    """Initial softmax temperature; logit scale = log(1 / temperature)."""
    learn_temperature: StrictBool = True
    """Learn the logit scale (clamped to at most 100 like CLIP) or keep it fixed; false is the
    same as listing ``temperature`` in ``freeze``."""
    warm_start: StrictBool = False
    """Start the image head, location encoder and logit scale from the published GeoCLIP weights
    (the installed ``geoclip`` package) instead of a random initialisation; ``init_temperature``
    is then ignored. Needs the published architecture (the defaults above) and 768-d features
    (CLIP ViT-L/14). The branch of each published scale in ``rff_scales`` (the first, if one is
    listed twice) takes that scale's published weights; every other branch starts with a zero
    head (weight and bias), so before training the model scores exactly as the published one
    while its random Fourier features and hidden layers are seeded by ``train.seed``."""
    freeze: tuple[Frozen, ...] = ()
    """Parts kept exactly as they start (left out of the optimiser, so weight decay does not move
    them either): ``published_branches`` (the location-encoder branches of the published scales;
    needs ``warm_start``), ``image_head``, ``temperature`` (the logit scale, as
    ``learn_temperature: false``). Empty trains everything."""

    @field_validator("rff_scales")
    @classmethod
    def _some_scales(cls, scales: tuple[float, ...]) -> tuple[float, ...]:
        if not scales:
            raise ValueError("needs one or more positive scales, got []")
        return scales

    @model_validator(mode="after")
    def _published_for_warm_start(self) -> ModelConfig:
        if self.warm_start:
            published = ModelConfig()
            changed = [
                f"{k}={getattr(self, k)} (published {getattr(published, k)})"
                for k in WARM_START_ARCHITECTURE
                if getattr(self, k) != getattr(published, k)
            ]
            if changed:
                raise FieldError("warm_start", f"needs the published architecture; this model has {', '.join(changed)}")
            missing = [f"{s:g}" for s in PUBLISHED_RFF_SCALES if s not in self.rff_scales]
            if missing:
                listed = ", ".join(f"{s:g}" for s in self.rff_scales)
                raise FieldError(
                    "rff_scales",
                    f"warm_start needs the published scales 1, 16 and 256 (others may be added); "
                    f"{' and '.join(missing)} missing from [{listed}]",
                )
        if "published_branches" in self.freeze and not self.warm_start:
            raise FieldError("freeze", "published_branches needs warm_start: true (no branch is published without it)")
        return self

    @model_validator(mode="after")
    def _something_trains(self) -> ModelConfig:
        new_branches = len(self.rff_scales) > len(PUBLISHED_RFF_SCALES)  # duplicates count as new branches
        temperature_frozen = "temperature" in self.freeze or not self.learn_temperature
        if {"published_branches", "image_head"} <= set(self.freeze) and temperature_frozen and not new_branches:
            fixed = " with learn_temperature false" if not self.learn_temperature else ""
            raise FieldError(
                "freeze",
                f"{list(self.freeze)}{fixed} leaves nothing to train; add a scale to rff_scales or unfreeze a part",
            )
        return self


class NoiseSchedule(Section):
    """How the noise's sigmas change over the epochs (``train.noise.schedule``).

    Each noisy part (``batch_sigma``, ``queue_sigma``; a part at 0 stays off) goes from its configured
    sigma at epoch 1 to ``sigma_end_km`` at ``until_epoch`` and stays there, in the unit of its
    ``target`` (km for ``gps``, embedding units for ``embedding``). For epoch e (1-based), with
    t = (e - 1) / (until_epoch - 1) capped at 1 (t = 1 throughout when until_epoch is 1), a part
    configured at s has sigma s + (sigma_end_km - s) w, where w is

    - constant: 0 at every epoch (the default; training is exactly as without a schedule);
    - linear: t;
    - cosine: (1 - cos(pi t)) / 2;
    - step: 0 before until_epoch, 1 from it on.

    Example: batch_sigma 5 (km), linear, sigma_end_km 0, until_epoch 5 gives 5, 3.75, 2.5, 1.25, 0, 0,
    ... km. An epoch whose sigma is 0 draws no noise (``geoloc.geo.gps_noise``). Each epoch's sigmas
    are logged as ``noise_batch_sigma`` and ``noise_queue_sigma``.
    """

    type: Literal["constant", "linear", "cosine", "step"] = "constant"
    """The shape of the schedule (above)."""
    sigma_end_km: Float = Field(0.0, ge=0.0)
    """The sigma each noisy part reaches at ``until_epoch`` and keeps (0: no noise from then on); in
    embedding units for ``target: embedding``. Constant ignores it and ``until_epoch``, so a study can
    vary ``type`` alone over a base that sets both."""
    until_epoch: StrictInt | None = Field(None, ge=1)
    """The first epoch (1-based) at ``sigma_end_km``; needed by every type but constant."""

    @model_validator(mode="after")
    def _end_where_needed(self) -> NoiseSchedule:
        if self.type != "constant" and self.until_epoch is None:
            raise FieldError("until_epoch", f"a {self.type} schedule needs the epoch at which it ends")
        return self

    def weight(self, epoch: int) -> float:
        """How far ``epoch`` (1-based) is from the configured sigmas (0) to ``sigma_end_km`` (1)."""
        if self.type == "constant":
            return 0.0
        until = self.until_epoch
        if self.type == "step":
            return 0.0 if epoch < until else 1.0
        t = min(1.0, (epoch - 1) / (until - 1)) if until > 1 else 1.0
        return t if self.type == "linear" else (1.0 - math.cos(math.pi * t)) / 2


class NoiseConfig(Section):
    """Gaussian noise on the GPS side of the contrastive loss (0 switches a part off).

    The paper's recipe: ``{target: gps, batch_sigma: 0.15, queue_sigma: 1.0}`` (150 m on the batch's
    coordinates, 1 km on the queue's), at every epoch (the constant schedule).
    """

    target: Literal["gps", "embedding"] = "gps"
    """"gps": displace coordinates on the sphere (sigmas in km); "embedding": add noise to the
    L2-normalised location embeddings and renormalise (sigmas in embedding units), as the thesis
    described it."""
    batch_sigma: Float = Field(0.0, ge=0.0)
    """Noise on the batch's own GPS (the positives). The paper quotes 0.15 km."""
    queue_sigma: Float = Field(0.0, ge=0.0)
    """Noise on the queue GPS (negatives). The paper quotes 1.0 km."""
    schedule: NoiseSchedule = Field(default_factory=NoiseSchedule)
    """How both sigmas change over the epochs (``NoiseSchedule``); constant keeps them."""

    def sigmas(self, epoch: int) -> tuple[float, float]:
        """(batch, queue) sigma of ``epoch`` (1-based) under the schedule (``NoiseSchedule``): exactly the
        configured ones under the constant schedule; a part configured at 0 stays off."""
        if self.schedule.type == "constant":
            return self.batch_sigma, self.queue_sigma
        w, end = self.schedule.weight(epoch), self.schedule.sigma_end_km
        return tuple(s + (end - s) * w if s > 0 else 0.0 for s in (self.batch_sigma, self.queue_sigma))


class TrainConfig(Section):
    """The optimisation; defaults follow published reimplementations."""

    epochs: StrictInt = Field(10, ge=1)
    """Epochs to train."""
    batch_size: StrictInt = Field(512, ge=1)
    """Images per step."""
    queue_size: StrictInt = Field(4096, ge=0)
    """GPS queue length (FIFO of past batch GPS, any size >= 0; 0 disables it)."""
    lr: Float = Field(3e-5, gt=0)
    """Adam learning rate."""
    weight_decay: Float = Field(1e-6, ge=0.0)
    """Adam weight decay."""
    lr_gamma: Float = Field(0.87, ge=1e-6, le=1.0)
    """StepLR decay per epoch."""
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    """GPS noise (on the batch and the queue; mined negatives keep their exact places)."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """The training loss."""
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    """Mined GPS negatives."""
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    """Batch assembly (random, or Sample4Geo's samplers)."""
    seed: StrictInt = 0
    """Seed of initialisation, shuffling, view choice and noise."""
    precision: Literal["fp32", "bf16", "tf32"] = "fp32"
    """fp32; bf16 autocast (CPU and GPU); tf32 matmuls (GPU only, else fp32)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto takes a GPU when one is visible."""
    cuda_graphs: StrictBool = True
    """On a GPU, replay the image head's and the location encoder's forward and backward at the
    step's full shape as CUDA graphs (``geoloc/parts/graphs.py``): the same arithmetic, launched at once
    instead of kernel by kernel. No effect on the CPU."""
    graph_step: StrictBool = False
    """On a GPU, capture the whole step at its full shape (full batch and queue; not with mined
    negatives, ``negatives.mask_within_km`` or embedding noise, which run as before) as one CUDA graph:
    noise, forward, loss, backward, a capturable fused Adam whose learning rate is a device tensor, and
    the queue's push (``CapturedSteps`` in ``geoloc/parts/graphs.py``); replaces ``cuda_graphs``. Off
    until measured on a GPU (``make gpu-check``'s "graph step = eager"). No effect on the CPU."""
    threads: StrictInt | None = Field(None, ge=1)
    """Torch CPU threads; null uses the CPUs this process was given (Ray's share in a trial)."""

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


class EvalConfig(Section):
    """Gallery retrieval and the objective."""

    thresholds_km: tuple[Annotated[Float, Field(gt=0)], ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
    """Accuracy thresholds; each gives a metric ``acc_<t>km``."""
    score_weights: tuple[Float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    """Weight of each threshold's accuracy in ``score`` (their weighted mean)."""
    val_negatives: StrictInt = Field(1024, ge=1)
    """Training GPS drawn once (seed 0) as the fixed negatives of ``val_loss``."""
    batch_size: StrictInt = Field(256, ge=1)
    """Validation images per similarity chunk (also the batch of ``val_loss``)."""
    gallery_chunk: StrictInt = Field(8192, ge=1)
    """Gallery points encoded and scored per chunk, so a 100K gallery fits in memory."""
    resolution_points: StrictInt = Field(64, ge=0)
    """Gallery points (seeded sample) of the location-encoder sharpness probe that gives
    ``encoder_resolution_km`` each evaluation (``geoloc.tasks.geoclip.resolution``); 0 switches it off."""
    regions: StrictBool = True
    """Report ``country_acc`` and ``continent_acc``: the share of images whose predicted gallery point
    lies in their true country (continent), each found offline from its coordinates
    (``geoloc.data.regions``: nearest GeoNames place, "sea" beyond 150 km), once per set and gallery
    and kept beside the caches."""
    keep_predictions: StrictBool = True
    """Keep every evaluation's per-image predictions (true and predicted coordinates, error) in the
    trial folder's ``predictions/`` (``geoloc.study.predictions``): what the analysis's regions, maps
    and density tables read. About 0.02 MB per 1,000 images, seed and epoch."""
    at_start: StrictBool = False
    """Also evaluate before the first epoch and record it as epoch 0 (metrics.jsonl, TensorBoard step
    0): the baseline row, e.g. the published model's accuracies under ``model.warm_start``. It has
    no training keys, is not reported to the scheduler or the sampler, and draws from no training
    random stream, so the trained epochs are the same with it or without."""

    @field_validator("thresholds_km")
    @classmethod
    def _some_thresholds(cls, thresholds: tuple[float, ...]) -> tuple[float, ...]:
        if not thresholds:
            raise ValueError("needs at least one threshold")
        return thresholds

    @field_validator("resolution_points")
    @classmethod
    def _off_or_a_pair(cls, n: int) -> int:
        if n == 1:
            raise ValueError("must be 0 (off) or >= 2 (the far-field similarity needs a pair), got 1")
        return n

    @field_validator("score_weights")
    @classmethod
    def _usable_weights(cls, weights: tuple[float, ...]) -> tuple[float, ...]:
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"must be >= 0 with a positive sum, got {list(weights)}")
        return weights

    @model_validator(mode="after")
    def _weight_per_threshold(self) -> EvalConfig:
        if len(self.score_weights) != len(self.thresholds_km):
            raise FieldError(
                "score_weights",
                f"needs one weight per threshold ({len(self.thresholds_km)}), got {len(self.score_weights)}",
            )
        return self


class GeoCLIPConfig(TaskConfig):
    """One GeoCLIP training run: what ``python -m geoloc.train CONFIG.yaml`` reads."""

    task: Literal["geoclip"] = "geoclip"
    """GeoCLIP: image features against GPS embeddings (the default task)."""

    data: DataConfig = Field(default_factory=DataConfig)
    """Training features, evaluation sets and the GPS gallery."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The trainable model."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """The optimisation."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation and the ``score``."""
