"""The data section of a GeoCLIP run (``data``) and the offline benchmark's parameters; the names of
evaluation sets. Torch-free: validating a study file imports it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, StrictInt, StrictStr, field_validator

from geoloc.common.validation import Float, Section


class OfflineBenchmarkConfig(Section):
    """The bundled synthetic stand-in for a CLIP feature data set (geoloc.data.synthetic)."""

    n_train: StrictInt = Field(10_000, ge=1)
    """Training images, drawn from the published 100K MP-16 coordinates."""
    n_val: StrictInt = Field(1_000, ge=1)
    """Validation images, held out from the training coordinates."""
    n_gallery: StrictInt = Field(10_000, ge=1)
    """Gallery points, drawn from the training coordinates as in GeoCLIP."""
    feature_dim: StrictInt = Field(768, ge=1)
    """Width of an image feature (ViT-L/14 gives 768)."""
    views: StrictInt = Field(4, ge=1)
    """Augmented views cached per training image; each epoch draws one."""
    landmark_share: Float = Field(0.3, ge=0.0, le=1.0)
    """Share of images whose features carry the fine (25 km and 1 km) location signal strongly."""
    seed: StrictInt = 0
    """Seed of the benchmark itself (fields, splits, nuisance), independent of the trial seed."""
    root: StrictStr = "~/.cache/geoloc-study/offline"
    """Folder where built benchmarks are kept, one subfolder per distinct configuration."""


OFFLINE = "offline"
"""The data keyword for the bundled synthetic benchmark (``geoloc.data.synthetic``)."""


class DataConfig(Section):
    """Where features, coordinates and the gallery come from."""

    train: StrictStr = OFFLINE
    """Feature cache folder of the training set, or "offline" for the synthetic benchmark."""
    val: tuple[StrictStr, ...] = (OFFLINE,)
    """Evaluation caches; the first drives ``score``. "offline" is the benchmark's validation split."""
    gallery: StrictStr = OFFLINE
    """GPS gallery: "offline" (the benchmark's), "geoclip" (published 100K MP-16), "train"
    (the training coordinates), "union" (the training coordinates and the published 100K,
    deduplicated) or a CSV file with LAT and LON columns. Its density bounds what top-1 retrieval
    can reach (``ceiling_<t>km``, reported each evaluation); it is no key of ``score``, so a search
    space may vary it (issue 27's "eval.gallery": kept here, beside the data it is made of)."""
    gallery_size: StrictInt | None = Field(None, ge=1)
    """Thin the gallery to this many points (a seeded subsample, the same for every trial); null keeps all."""
    train_fraction: Float = Field(1.0, gt=0.0, le=1.0)
    """Train on this share of the training cache: a subset drawn with a fixed seed, so every trial of a
    study (and every study on that cache) gets the same images; 1.0 keeps all. ``gallery: train`` and
    the mined pool ``train`` are the subset's coordinates; the ``val_loss`` candidates and the
    semivariogram come from the whole cache, so they compare across fractions."""
    offline: OfflineBenchmarkConfig = Field(default_factory=OfflineBenchmarkConfig)
    """Parameters of the synthetic benchmark, used wherever "offline" is named."""

    @field_validator("val")
    @classmethod
    def _some_val(cls, val: tuple[str, ...]) -> tuple[str, ...]:
        if not val:
            raise ValueError("needs at least one evaluation set")
        return val


UNION = "union"
"""The gallery keyword for the training coordinates together with the published 100K."""

OFFLINE_VAL_SET = "val"  # the name of the offline benchmark's validation split


def eval_set_name(spec: str) -> str:
    """The name of an entry of ``data.val``: "val" for the offline benchmark, else the cache's folder name."""
    return OFFLINE_VAL_SET if spec == OFFLINE else Path(spec).expanduser().resolve().name
