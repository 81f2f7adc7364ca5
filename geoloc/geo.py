"""Geography on the sphere: distances, the Equal Earth projection, coordinate checks, GPS noise.

Coordinates are ``(lat, lon)`` in degrees, in the last axis; distances and noise sigmas are km.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius; great-circle distances differ from the
# ellipsoidal geodesic by at most ~0.5%, which is the tolerance band used against geopy.

# Equal Earth constants exactly as the published GeoCLIP location encoder uses them.
A1, A2, A3, A4 = 1.340264, -0.081106, 0.000893, 0.003796
SF = 66.50336


def _torch_if_tensor(*values):
    """torch when one of ``values`` is a tensor, else None. torch is imported by whoever made a tensor,
    so the numpy paths (validating a study, reading coordinates, ``tune_main.py status``) never load it."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and any(isinstance(v, torch.Tensor) for v in values) else None


def haversine_km(a, b):
    """Great-circle distance in km between ``a`` and ``b`` of shape (..., 2), (lat, lon) degrees.

    Works on numpy arrays (float64 math) and torch tensors (in their own dtype and device);
    shapes broadcast.
    """
    if torch := _torch_if_tensor(a, b):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        lat1, lon1 = torch.deg2rad(a[..., 0]), torch.deg2rad(a[..., 1])
        lat2, lon2 = torch.deg2rad(b[..., 0]), torch.deg2rad(b[..., 1])
        h = torch.sin((lat2 - lat1) / 2) ** 2 + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
        return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(h.clamp(0, 1)))
    a, b = np.radians(np.asarray(a, dtype=np.float64)), np.radians(np.asarray(b, dtype=np.float64))
    lat1, lon1, lat2, lon2 = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def unit_vectors(latlon):
    """(N, 3) points on the unit sphere for (N, 2) (lat, lon) degrees: float64 numpy, or a tensor in
    the input's dtype and device."""
    if torch := _torch_if_tensor(latlon):
        lat, lon = torch.deg2rad(latlon).unbind(-1)
        return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)
    lat, lon = np.radians(np.asarray(latlon, dtype=np.float64)).T
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def chord_of_km(km: float) -> float:
    """The chord between two unit vectors ``km`` of great circle apart (2, the diameter, from half the
    earth's circumference on): ``chord_km``'s inverse for one distance."""
    return 2 * math.sin(min(km / EARTH_RADIUS_KM, math.pi) / 2)


def chord_km(squared_chord):
    """Great-circle km of the squared chord between two unit vectors (numpy or torch): the chord is
    monotonic in the distance, so a median or minimum of chords is that of the distances."""
    if torch := _torch_if_tensor(squared_chord):
        return 2 * EARTH_RADIUS_KM * torch.asin(squared_chord.clamp(0, 4).sqrt() / 2)
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(squared_chord, 0, 4)) / 2)


def equal_earth_projection(latlon):
    """Equal Earth projection of (N, 2) degrees, scaled by SF / 180, as published GeoCLIP computes it.

    The operation order follows the published code so that its weights see the same inputs
    (embeddings agree to 1e-5, see tests/test_parity.py). A numpy array gives the same formula in
    numpy float64 (the analysis' maps draw in it without loading torch); a tensor, the published code.
    """
    xp = _torch_if_tensor(latlon) or np  # one formula for both: torch's arcsin and stack(axis=) are numpy's
    if xp is np:
        latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    lat, lon = xp.deg2rad(latlon[:, 0]), xp.deg2rad(latlon[:, 1])
    # A Python float, not a tensor made on the device each call (a host-to-device copy per step):
    # as a scalar operand it is rounded to the tensor's dtype, which gives the published values bitwise.
    sqrt3 = math.sqrt(3.0)
    theta = xp.arcsin(sqrt3 / 2 * xp.sin(lat))
    denominator = 3 * (9 * A4 * theta**8 + 7 * A3 * theta**6 + 3 * A2 * theta**2 + A1)
    x = (2 * sqrt3 * lon * xp.cos(theta)) / denominator
    y = A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta
    return (xp.stack((x, y), axis=1) * SF) / 180


def invalid_coordinate_rows(latlon) -> np.ndarray:
    """Indices of rows that are not finite or lie outside lat [-90, 90], lon [-180, 180]."""
    c = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(c).all(axis=1) | (np.abs(c[:, 0]) > 90) | (np.abs(c[:, 1]) > 180)
    return np.flatnonzero(bad)


def check_coordinates(latlon, where: str) -> None:
    """Raise ValueError naming ``where`` and the first bad row when any coordinate is invalid."""
    bad = invalid_coordinate_rows(latlon)
    if len(bad):
        lat, lon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)[bad[0]]
        raise ValueError(
            f"{where}: row {bad[0]}: invalid coordinate (lat={lat}, lon={lon}); "
            f"need finite lat in [-90, 90] and lon in [-180, 180] ({len(bad)} bad rows)"
        )


def displace(latlon: torch.Tensor, north_km: torch.Tensor, east_km: torch.Tensor) -> torch.Tensor:
    """Move each point by a (north, east) displacement along the great circle of that bearing.

    The destination-point formula keeps latitude in [-90, 90] (a path over a pole comes down
    the other side) and wraps longitude into [-180, 180), so the result is always valid and
    its great-circle distance from the start equals hypot(north, east) exactly.
    """
    import torch  # here, not at the top: see _torch_if_tensor

    lat, lon = torch.deg2rad(latlon[..., 0]), torch.deg2rad(latlon[..., 1])
    delta = torch.hypot(north_km, east_km) / EARTH_RADIUS_KM
    bearing = torch.atan2(east_km, north_km)
    sin_lat2 = torch.sin(lat) * torch.cos(delta) + torch.cos(lat) * torch.sin(delta) * torch.cos(bearing)
    lat2 = torch.asin(sin_lat2.clamp(-1, 1))
    lon2 = lon + torch.atan2(
        torch.sin(bearing) * torch.sin(delta) * torch.cos(lat),
        torch.cos(delta) - torch.sin(lat) * sin_lat2,
    )
    lon2 = torch.remainder(lon2 + math.pi, 2 * math.pi) - math.pi
    return torch.stack((torch.rad2deg(lat2), torch.rad2deg(lon2)), dim=-1).to(latlon.dtype)


def gps_noise(latlon: torch.Tensor, sigma_km: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise of ``sigma_km`` per component (north, east), applied on the sphere.

    ``sigma_km == 0`` returns the input unchanged and draws nothing, so switching noise off
    does not shift the random stream of anything else. The same as ``apply_gps_noise`` of
    ``draw_gps_noise``: the two halves, which a captured step takes apart (the draw on the host).
    """
    return apply_gps_noise(latlon, draw_gps_noise(len(latlon), sigma_km, generator, latlon.device))


def draw_gps_noise(
    n: int, sigma_km: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor | None:
    """(2, n) float64 (north, east) displacements in km of ``n`` points, on ``device``; None for sigma 0
    (nothing drawn)."""
    if sigma_km == 0:
        return None
    import torch  # here, not at the top: see _torch_if_tensor

    # Drawn on the CPU so that a seed gives the same noise on every device; copied to a GPU from
    # pinned memory, asynchronously (a pageable copy would wait for the GPU's queue).
    drawn = torch.randn((2, n), generator=generator, dtype=torch.float64) * sigma_km
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return (drawn.pin_memory() if on_gpu else drawn).to(device or "cpu", non_blocking=True)


def apply_gps_noise(latlon: torch.Tensor, drawn: torch.Tensor | None) -> torch.Tensor:
    """``latlon`` (N, 2) moved by ``drawn`` (``draw_gps_noise``), in float64: a 150 m step is 1e-6 of the
    earth's radius, near float32's resolution. None: unchanged."""
    if drawn is None:
        return latlon
    north, east = drawn
    return displace(latlon.to(drawn.dtype), north, east).to(latlon.dtype)
