"""Mined GPS negatives (``train.negatives``): per positive, near and far pool points, never too close.

Per training image, ``near`` = round(mined x near_share) negatives are drawn without repeats from
its ``near_k`` nearest pool points that lie farther than ``min_km``, and the other ``mined - near``
uniformly from the whole pool, redrawn while one lies within ``min_km`` (after
``FAR_REDRAWS`` rounds the rest are drawn among the qualifying points exactly). The near lists
are built once per (training set, pool, near_k, min_km) and kept beside the training cache
(``geoloc.data.derived``), so the trials of a study share them.

Draws come from the trainer's CPU generator inside the step, before the GPS noise, so a seed
gives the same negatives on every device and a resumed trial continues exactly; with ``mined: 0``
nothing is drawn and training is the published recipe.

``NegativeDistances.add`` also gives the mask of ``train.negatives.mask_within_km``: the loss's columns
within that distance of their positive, from the same product of unit vectors as the diagnostics.
With ``bank: true`` the mined points' embeddings come from a ``MinedBank`` (every pool point embedded
without gradient, refreshed every ``bank_refresh_steps`` steps and at each epoch's start) instead of
going through the location encoder with the batch: the draws are the same, the gradient reaches the
encoder through the batch and the queue only, as in MoCo's key bank.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from geoloc.common.validation import ConfigError
from geoloc.data.cache import FeatureCache
from geoloc.data.derived import cached_array, fingerprint
from geoloc.geo import chord_km, chord_of_km, haversine_km, unit_vectors
from geoloc.parts.config import SAMPLER_DISTANCES, SEMIVARIOGRAM, NegativesConfig
from geoloc.parts.neighbours import nearest
from geoloc.parts.precision import exact_fp32

FAR_REDRAWS = 16  # rounds of redrawing far negatives that fell within min_km before drawing exactly


def resolve_km(km: float | str, key: str, train: FeatureCache) -> float:
    """A distance of ``train.negatives`` (``key``: min_km, mask_within_km) in km: the number, or the fitted
    semivariogram range of the (whole) training cache."""
    if km != SEMIVARIOGRAM:
        return float(km)
    from geoloc.parts.semivariogram import SemivariogramError, fitted_range_km

    try:
        return fitted_range_km(train.source)
    except SemivariogramError as e:
        raise ConfigError(f"train.negatives.{key}: semivariogram: {e}") from None


def resolve_min_km(cfg: NegativesConfig, train: FeatureCache) -> float:
    """``min_km`` in km: the number, or the fitted semivariogram range of the (whole) training cache."""
    return resolve_km(cfg.min_km, "min_km", train)


class NegativeMiner:
    """Draws each positive's mined negatives as indices into ``pool`` (coordinates, float64)."""

    def __init__(self, cfg: NegativesConfig, train: FeatureCache, pool: np.ndarray, min_km: float):
        self.cfg, self.min_km = cfg, min_km
        self.pool = np.asarray(pool, dtype=np.float64)
        self.queries = train.coords
        self.pool_t = torch.from_numpy(self.pool).float()  # what the location encoder sees, as the feed's coords
        self.near_lists = self._near_lists(train) if cfg.near else None  # memory-mapped: shared by seeds and trials

    @classmethod
    def for_run(cls, cfg: NegativesConfig, data) -> NegativeMiner:
        """The miner of a run's data (``geoloc.data.Data``): its pool, its ``min_km`` resolved."""
        pool = data.gallery if cfg.pool == "gallery" else data.train.coords
        return cls(cfg, data.train, pool, resolve_min_km(cfg, data.train))

    def _near_lists(self, train: FeatureCache) -> np.ndarray:
        k = self.cfg.near_k
        key = fingerprint(self.queries, self.pool, k, self.min_km)
        try:
            return cached_array(
                train.source.path, "near", key, lambda: nearest(self.queries, self.pool, k, beyond_km=self.min_km)
            )
        except ValueError as e:  # too few pool points beyond min_km for some positive
            raise ConfigError(f"train.negatives.min_km: {self.min_km:g} km with near_k {k}: {e}") from None

    def draw(self, idx: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """(len(idx), mined) pool indices for the training rows ``idx``: near ones first, then far ones."""
        n_near, n_far = self.cfg.near, self.cfg.mined - self.cfg.near
        parts = []
        if n_near:
            ranks = torch.rand(len(idx), self.cfg.near_k, generator=generator).argsort(dim=1)[:, :n_near]
            parts.append(torch.from_numpy(self.near_lists[idx].astype(np.int64)).gather(1, ranks))
        if n_far:
            parts.append(self._far(idx, n_far, generator))
        return torch.cat(parts, dim=1)

    def _far(self, idx: np.ndarray, n_far: int, generator: torch.Generator) -> torch.Tensor:
        drawn = torch.randint(len(self.pool), (len(idx), n_far), generator=generator)
        for _ in range(FAR_REDRAWS):
            close = self._too_close(idx, drawn)
            if not close.any():
                return drawn
            drawn[close] = torch.randint(len(self.pool), (int(close.sum()),), generator=generator)
        for row, col in zip(*np.nonzero(self._too_close(idx, drawn).numpy()), strict=True):
            # Rare: a positive with almost the whole pool within min_km; draw among the points beyond exactly.
            beyond = np.flatnonzero(haversine_km(self.queries[idx[row]], self.pool) > self.min_km)
            if not len(beyond):
                raise ConfigError(
                    f"train.negatives.min_km: no pool point lies farther than {self.min_km:g} km from training "
                    f"row {idx[row]}; lower it"
                )
            drawn[row, col] = int(beyond[torch.randint(len(beyond), (1,), generator=generator)])
        return drawn

    def _too_close(self, idx: np.ndarray, drawn: torch.Tensor) -> torch.Tensor:
        km = haversine_km(self.queries[idx][:, None], self.pool[drawn.numpy()])
        return torch.from_numpy(km <= self.min_km)

    def coords(self, mined: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, M, 2) float32 coordinates of mined pool indices, on ``device`` (from pinned memory to a GPU,
        asynchronously, as the GPS noise: a pageable copy would wait for the GPU's queue)."""
        coords = self.pool_t[mined]
        return coords.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else coords


class MinedBank:
    """The mined negatives' embeddings as a memory bank (``train.negatives.bank``, MoCo-style): every pool
    point's embedding, computed without gradient, refreshed at each epoch's first step and every
    ``refresh_steps`` steps after it; mined negatives are looked up (detached) instead of encoded with
    their gradient.

    Refreshing at each epoch's start makes the bank a function of the weights at that step alone, so
    a trial resumed from an epoch's checkpoint rebuilds the same bank: nothing is checkpointed.
    """

    def __init__(self, pool_t: torch.Tensor, refresh_steps: int, device: torch.device, chunk: int = 8192):
        self.coords = pool_t.to(device)
        self.refresh_steps, self.chunk = refresh_steps, chunk
        self.embeddings: torch.Tensor | None = None  # (pool, D) float32 on the device
        self.step = 0  # steps taken this epoch
        self.refreshed_at: list[int] = []  # steps of this epoch (0-based) at which the bank was refreshed

    def start_epoch(self) -> None:
        self.step, self.refreshed_at = 0, []

    @torch.no_grad()
    def refresh(self, encode) -> None:
        """Every pool point through ``encode`` (coordinates -> unit embeddings), chunk by chunk, no gradient,
        written into the bank's one buffer: a 1M-point pool is 1.9 GiB of embeddings, which a list of
        chunks, their concatenation and the bank they replace held three times (``bench.scale``'s
        10.24 GiB peak at 4.65M rows)."""
        for start in range(0, len(self.coords), self.chunk):
            chunk = encode(self.coords[start : start + self.chunk]).float()
            if self.embeddings is None:
                self.embeddings = chunk.new_empty((len(self.coords), chunk.shape[1]))
            self.embeddings[start : start + len(chunk)] = chunk
        self.refreshed_at.append(self.step)

    def lookup(self, mined: torch.Tensor, encode) -> torch.Tensor:
        """(B, M, D) embeddings of the mined pool indices (B, M) for this step, refreshed first when due."""
        if self.step % self.refresh_steps == 0 or self.embeddings is None:
            self.refresh(encode)
        self.step += 1
        return self.embeddings[mined.to(self.coords.device)]


class NegativeDistances:
    """What a sampler did, per epoch: ``batch_median_km`` (the median great-circle distance between two
    images of a batch, averaged over the epoch's batches), ``negative_median_km`` (the median distance
    from a positive to its negatives: the batch's other GPS, the queue and its mined negatives; averaged
    over the epoch's steps) and ``negative_min_km`` (the smallest such distance of the epoch).

    Taken from the exact coordinates (before GPS noise), in float64 on the step's device, kept there
    until the epoch ends (no wait for the GPU in a step). Medians are torch's (the lower of the two
    middle values for an even count). A batch of one image has no pair: its batch median is left out.
    Negatives masked out of the loss (``train.negatives.mask_within_km``) are not counted.
    """

    KEYS = SAMPLER_DISTANCES

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def add(
        self, gps: torch.Tensor, shared: torch.Tensor, mined: torch.Tensor | None = None, mask_within_km: float = 0.0
    ) -> torch.Tensor | None:
        """One step (``measure``'s arguments), kept; the mask of the loss's left-out columns or None."""
        distances, masked = self.measure(gps, shared, mined, mask_within_km)
        self.steps.append(distances)
        return masked

    @staticmethod
    @torch.no_grad()
    def measure(
        gps: torch.Tensor, shared: torch.Tensor, mined: torch.Tensor | None = None, mask_within_km: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step's three distances in km (a (3,) float64 tensor on the step's device) from the batch GPS
        (B, 2), the shared negatives' GPS (batch then queue, (B+Q, 2)) and mined (B, M, 2); device work only,
        so a captured step can hold it.

        With ``mask_within_km`` > 0 the second value is the (B, B+Q[+M]) boolean mask of the loss's columns
        (``geoloc.parts.losses.columns``) that lie within that distance of their row's positive (the
        positive's own column never): the negatives ``training_loss`` leaves out. None when 0.
        """
        # Squared chords of unit vectors (one matrix product, 7x cheaper than haversine per pair), turned
        # into km after the median and minimum; the mask compares them with the distance's chord. No
        # boolean-mask indexing: on a GPU its result's size would make the step wait for the device.
        n, positives = len(gps), unit_vectors(gps.double())
        with exact_fp32(gps.device):  # whatever precision the trial trains in
            chords = 2 - 2 * positives @ unit_vectors(shared.double()).T
        first, second = torch.triu_indices(n, n, offset=1, device=gps.device)
        within = chords[first, second]  # each pair of the batch once
        chords[:, :n].diagonal().fill_(float("nan"))  # a positive is not its own negative
        if mined is not None:
            to_mined = 2 - 2 * (positives[:, None] * unit_vectors(mined.double())).sum(-1)
            chords = torch.cat([chords, to_mined], dim=1)
        masked = None
        nan = torch.full((), float("nan"), dtype=torch.float64, device=gps.device)
        if mask_within_km > 0:
            masked = chords <= chord_of_km(mask_within_km) ** 2  # NaN (the positive) compares False
            chords = chords.masked_fill(masked, nan)
        chords = chords.flatten()
        some = len(chords) > n  # a batch of one image with an empty queue has no negative
        nearest = chords.nan_to_num(nan=math.inf).min() if some else nan
        medians = [
            within.median() if len(within) else nan,
            chords.nanmedian() if some else nan,
            nearest if masked is None else torch.where(nearest.isinf(), nan, nearest),  # all masked: none
        ]
        return chord_km(torch.stack(medians)), masked

    def result(self) -> dict[str, float]:
        """The epoch's three values (NaN where no step had any), and a fresh start for the next epoch."""
        steps, self.steps = torch.stack(self.steps).cpu().numpy(), []
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch of one-image batches: NaN, said above
            batch_median, negative_median, negative_min = (
                np.nanmean(steps[:, 0]),
                np.nanmean(steps[:, 1]),
                np.nanmin(steps[:, 2]),
            )
        return dict(zip(self.KEYS, map(float, (batch_median, negative_median, negative_min)), strict=True))
