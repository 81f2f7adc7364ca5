"""How sharp the location encoder is: ``encoder_resolution_km``, the distance at which it tells places apart.

For a fixed sample of gallery points x_i (``n_points`` of them, drawn once with ``PROBE_SEED``)
each with ``BEARINGS`` fixed random bearings b_ij, and e(x) the L2-normalised location embedding
(``GeoCLIP.encode_locations``), so that e(x) . e(y) is the cosine similarity:

    s(d)  = mean over i, j of e(x_i) . e(move(x_i, d, b_ij))        d in PROBE_KM
    s_far = mean over pairs i != k of e(x_i) . e(x_k)

where move(x, d, b) goes d km from x along the great circle of bearing b (``geoloc.geo.displace``).
s(0) = 1; s_far is the similarity of unrelated places (two different sample points).

``encoder_resolution_km`` is the smallest d at which s(d) has fallen halfway from 1 to s_far,
i.e. s(d) <= (1 + s_far) / 2: the first grid distance where that holds, linearly interpolated in
log d with the grid distance before it. Where s never falls that far within the grid it is the
largest grid distance, 5,000 km, read "at least 5,000 km"; where s is already below at the first
grid distance it is that distance, 0.01 km, read "at most 10 m". It is NaN when any similarity
is not finite. A collapsed encoder (s_far near 1) leaves nothing to resolve, and the number then
means nothing; ``similarity_curve`` gives s_far with the curve.

The sample is fixed by ``PROBE_SEED`` and the gallery, not by the trial seed, so every trial of a
study probes the same places and their numbers compare directly. As an absolute figure it
carries the sample's spread: for the published encoder, seeds 0-4 gave 14.0-22.4 km with 64
points (18.5 km with seed 0) and 19.0-20.2 km with 1,024 points. Equal Earth cuts the map at the
antimeridian, so a point moved across it lands on the far edge and looks unrelated to its start;
this lowers s(d) only for the few sample points within d of longitude 180.

Everything is computed in fp32 under ``torch.no_grad()``, with the model in eval mode, and draws
nothing from torch's random streams: switching the probe on or off leaves training bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from geoloc.geo import displace
from geoloc.parts.precision import exact_fp32
from geoloc.tasks.geoclip.model import GeoCLIP

PROBE_RANGE_KM = (0.01, 5_000.0)  # from well below the 1 km threshold to a continent
PROBE_POINTS_PER_DECADE = 3  # finds an exponential decay's halfway point within 2.4% (tests)
# One random bearing per point: the sample then averages over directions, and each more bearing
# would cost len(PROBE_KM) encodes per point (the probe must add at most ~10% to an evaluation,
# see bench/bench_eval.py).
BEARINGS = 1
PROBE_SEED = 0  # not the trial seed: every trial of a study probes the same points
CHUNK = 8192  # locations encoded at a time, as Evaluator's default gallery_chunk


def probe_distances() -> np.ndarray:
    """10^(k / PROBE_POINTS_PER_DECADE) km from 0.01 km (so 0.01, 0.1, 1, 10, ... are exact), then
    5,000 km; a grid point less than half a step below 5,000 km is left out (it would cost as
    much as any other and tell little). 18 distances: 0.01, 0.0215, 0.0464, 0.1, ..., 2154, 5000."""
    lo, hi = np.log10(PROBE_RANGE_KM) * PROBE_POINTS_PER_DECADE
    k = np.arange(round(lo), math.floor(hi - 0.5) + 1)
    return np.append(10.0 ** (k / PROBE_POINTS_PER_DECADE), PROBE_RANGE_KM[1])


PROBE_KM = probe_distances()


def half_decay_km(distances_km, similarity, far: float) -> float:
    """The smallest distance at which ``similarity`` falls to ``(1 + far) / 2`` (see the module docstring).

    ``distances_km`` ascending; ``similarity[i]`` is s at ``distances_km[i]``.
    """
    d, s = np.asarray(distances_km, dtype=float), np.asarray(similarity, dtype=float)
    if not (np.isfinite(s).all() and math.isfinite(far)):
        return math.nan
    half = (1 + far) / 2
    below = np.flatnonzero(s <= half)
    if len(below) == 0:
        return float(d[-1])
    i = below[0]
    if i == 0:
        return float(d[0])
    # s[i] <= half < s[i - 1]: np.interp needs its x ascending, so the pair goes in that order.
    return float(np.exp(np.interp(half, [s[i], s[i - 1]], np.log([d[i], d[i - 1]]))))


@dataclass(frozen=True)
class SimilarityCurve:
    """s(d) at ``distances_km`` and s_far, as defined in the module docstring."""

    distances_km: np.ndarray
    similarity: np.ndarray
    far: float

    @property
    def resolution_km(self) -> float:
        """``encoder_resolution_km``: where s(d) falls halfway from 1 to s_far."""
        return half_decay_km(self.distances_km, self.similarity, self.far)


class ResolutionProbe:
    """The fixed probe locations of one run; calling it on a model gives ``encoder_resolution_km``.

    ``gallery``: (N, 2) lat/lon degrees. The sample is ``min(n_points, N)`` distinct gallery
    points, which must be at least 2 (s_far needs a pair); a run switches the probe off by not
    building one (``eval.resolution_points: 0``).
    """

    def __init__(self, gallery: np.ndarray, n_points: int):
        n = min(n_points, len(gallery))
        if n < 2:
            raise ValueError(
                f"the resolution probe needs at least 2 points, got {n_points} of a {len(gallery)}-point gallery"
            )
        rng = np.random.default_rng(PROBE_SEED)
        points = torch.from_numpy(np.asarray(gallery, dtype=np.float64)[rng.choice(len(gallery), n, replace=False)])
        bearing = torch.from_numpy(rng.uniform(0, 2 * math.pi, (n, BEARINGS, 1)))
        km = torch.from_numpy(PROBE_KM)
        # (n, BEARINGS, len(PROBE_KM), 2), computed in float64: 10 m is 1.6e-6 of the earth's radius.
        moved = displace(points[:, None, None, :], km * torch.cos(bearing), km * torch.sin(bearing))
        self.points = points.float()
        self.moved = moved.float().reshape(-1, 2)

    def __call__(self, model: GeoCLIP) -> float:
        """``encoder_resolution_km`` of ``model``'s location encoder."""
        return self.similarity_curve(model).resolution_km

    @torch.no_grad()
    def similarity_curve(self, model: GeoCLIP) -> SimilarityCurve:
        """s(d) at every ``PROBE_KM`` and s_far of ``model``'s location encoder (on its device)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            # All of it, the similarities too: a caller's autocast (or TF32) would round them.
            with exact_fp32(device):
                return self._curve(model, device)
        finally:
            model.train(was_training)

    def _curve(self, model: GeoCLIP, device: torch.device) -> SimilarityCurve:
        locations = torch.cat([self.points, self.moved]).to(device)
        emb = torch.cat([model.encode_locations(locations[s : s + CHUNK]) for s in range(0, len(locations), CHUNK)])
        n = len(self.points)
        centre, moved = emb[:n], emb[n:].reshape(n, BEARINGS, len(PROBE_KM), -1)
        similarity = torch.einsum("nd,nbkd->k", centre, moved) / (n * BEARINGS)
        gram = centre @ centre.T
        far = (gram.sum() - gram.trace()) / (n * (n - 1))
        return SimilarityCurve(PROBE_KM, similarity.double().cpu().numpy(), float(far))
