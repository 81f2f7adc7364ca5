"""Configuration sections of the shared training parts (loss, mined negatives, batch assembly), declared
beside the code that reads them and composed into each task's ``train`` section. Torch-free."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from geoloc.common.validation import FieldError, Float, Section


class LossConfig(Section):
    """The training loss (``geoloc.parts.losses``); ``val_loss`` is always the published InfoNCE, so it compares."""

    type: Literal["infonce", "symmetric", "triplet"] = "infonce"
    """infonce: GeoCLIP's, each image against batch, queue and mined GPS (published); symmetric: the mean
    of that and the GPS-to-image direction over the batch (Sample4Geo); triplet: each image's distance
    to its own GPS against every other GPS column, with ``margin``."""
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)
    """Label smoothing of the InfoNCE cross-entropies, as ``torch.nn.functional.cross_entropy`` does it
    (Sample4Geo uses 0.1); not for triplet."""
    margin: Float = Field(0.2, ge=0.0)
    """triplet: the margin by which a negative must be farther than the positive."""
    distance: Literal["cosine", "l2"] = "cosine"
    """triplet: 1 - cosine similarity, or the Euclidean distance of the unit embeddings."""

    @model_validator(mode="after")
    def _smoothing_of_a_cross_entropy(self) -> LossConfig:
        if self.type == "triplet" and self.label_smoothing > 0:
            raise FieldError("label_smoothing", "smooths a cross-entropy (infonce, symmetric); triplet has none")
        return self


SEMIVARIOGRAM = "semivariogram"
"""``train.negatives.min_km``'s keyword: the fitted range of the training cache's semivariogram."""


class NegativesConfig(Section):
    """Mined GPS negatives (``geoloc.parts.negatives``): per positive, besides the batch and the queue."""

    mined: StrictInt = Field(0, ge=0)
    """Negatives mined per positive; 0 trains the published recipe (nothing is mined or drawn)."""
    pool: Literal["gallery", "train"] = "gallery"
    """Where they are mined from: the GPS gallery (``data.gallery``) or the training coordinates."""
    near_share: Float = Field(0.5, ge=0.0, le=1.0)
    """Share of ``mined`` drawn from the positive's ``near_k`` nearest pool points (rounded to the nearest
    count, halves to even: 1 x 0.5 gives 0); the rest are drawn uniformly from the whole pool."""
    near_k: StrictInt = Field(128, ge=1)
    """How many of the nearest pool points (beyond ``min_km``) the near negatives are drawn from."""
    min_km: Float | Literal["semivariogram"] = 0.0
    """No mined negative lies within this many km of its positive (strictly farther; 0 still excludes
    the positive's own location), or "semivariogram": the fitted range of the training cache's
    semivariogram (``python -m analysis.semivariogram``), where image features stop being alike."""
    bank: StrictBool = False
    """Take the mined negatives' embeddings from a memory bank (MoCo-style): every pool point embedded
    by the location encoder without gradient at each epoch's first step and every ``bank_refresh_steps``
    steps after, and looked up (``geoloc.parts.negatives.MinedBank``). False: each mined point is encoded
    with the batch, with its gradient (the default; 64 mined per positive cost 7-9x the published step)."""
    bank_refresh_steps: StrictInt = Field(100, ge=1)
    """Steps between two refreshes of the bank within an epoch (``bank: true`` only)."""

    mask_within_km: Float | Literal["semivariogram"] | None = None
    """Every negative of a positive's loss (the batch's other GPS, the queue, its mined negatives) that lies
    within this many km of it (great-circle distance <= this, from the exact coordinates, before any GPS
    noise) is left out of that positive's loss: its logit is set to -inf before the cross-entropy (a
    triplet loss leaves its term out). The positive's own column never is. MP-16's coordinates repeat, so
    another photo of the positive's own place is often a "negative"; masking it stops the loss pushing
    them apart. "semivariogram": the fitted range, as for ``min_km``. null or 0: off (nothing is computed,
    training is the published recipe); to mask only exact repeats of the positive's place give a small
    distance such as 0.001. ``negative_min_km`` and ``negative_median_km`` then count only the negatives
    left in, so ``negative_min_km`` is above this distance."""

    @field_validator("min_km", "mask_within_km", mode="before")
    @classmethod
    def _km_or_keyword(cls, km: Any) -> Any:
        wrong = isinstance(km, str) and km != SEMIVARIOGRAM or isinstance(km, (int, float)) and km < 0
        if wrong or isinstance(km, bool):
            raise ValueError(f"must be a number of km >= 0 or {SEMIVARIOGRAM!r}, got {km!r}")
        return km

    @property
    def near(self) -> int:
        """Near negatives per positive (the rest of ``mined`` are far)."""
        return round(self.mined * self.near_share)

    @model_validator(mode="after")
    def _near_from_the_list(self) -> NegativesConfig:
        if self.near > self.near_k:
            raise FieldError(
                "near_k",
                f"{self.near} near negatives per positive (mined {self.mined} x near_share {self.near_share:g}) "
                f"are drawn without repeats from the near_k nearest; near_k must be >= {self.near}, got {self.near_k}",
            )
        return self


class BatchesConfig(Section):
    """How an epoch's batches are assembled (``geoloc.parts.sampler``); every image is in one batch per epoch."""

    type: Literal["random", "gps_neighbours", "similarity"] = "random"
    """random: a seeded shuffle (published); gps_neighbours: Sample4Geo's GPS sampling, each anchor with
    its geographic neighbours, so the in-batch negatives are close places; similarity: Sample4Geo's
    Dynamic Similarity Sampling, the same assembly from lists of the most similar locations by the
    model's own embeddings (GPS lists before ``similarity_from_epoch``)."""
    neighbours: StrictInt = Field(32, ge=0)
    """An anchor's nearest neighbours (list ranks 1..neighbours) placed in its batch."""
    draw: StrictInt = Field(32, ge=0)
    """More drawn at random from list ranks neighbours+1 .. range."""
    range: StrictInt = Field(128, ge=1)
    """Length of each image's neighbour list."""
    similarity_from_epoch: StrictInt = Field(2, ge=1)
    """similarity: the first epoch (1-based) whose batches come from similarity lists."""
    similarity_every: StrictInt = Field(1, ge=1)
    """similarity: rebuild the lists from the current model every this many epochs from then on."""

    @model_validator(mode="after")
    def _candidates_in_the_list(self) -> BatchesConfig:
        if self.neighbours + self.draw > self.range:
            raise FieldError(
                "draw",
                f"neighbours {self.neighbours} + draw {self.draw} = {self.neighbours + self.draw} candidates "
                f"come from lists of range {self.range}; lower them or raise range",
            )
        return self


SAMPLER_DISTANCES = ("batch_median_km", "negative_median_km", "negative_min_km")  # per epoch, in km
