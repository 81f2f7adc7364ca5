"""The semivariogram of a feature cache: known correlation lengths recovered, cached on disk, the command line."""

from __future__ import annotations

import math

import gstools
import numpy as np
import pandas as pd
import pytest

from analysis.semivariogram import CSV, PNG, main
from geoloc.data.cache import CacheWriter, open_cache
from geoloc.data.derived import FOLDER
from geoloc.parts import semivariogram as sv

LENGTHS_KM = (100.0, 300.0)  # two known lengths, so that an estimator with a constant answer fails
NUGGET_STD = 0.5  # white noise per feature: a nugget of 0.25 on a field of variance 1
FIELD_DIMS = 16  # independent fields, one per feature dimension (fewer: one realisation's quirks show)
FIELD_MODES = 500  # Fourier modes per field (gstools' default 1000 takes longer and changes nothing here)
N_POINTS = 2000


def uniform_box(rng: np.random.Generator, n: int, half_width_deg: float = 30.0) -> np.ndarray:
    """Points uniform in area on lat, lon in [-w, w]: 6,700 km across, over 20 times the longer length."""
    s = np.sin(np.radians(half_width_deg))
    lat = np.degrees(np.arcsin(rng.uniform(-s, s, n)))
    return np.stack([lat, rng.uniform(-half_width_deg, half_width_deg, n)], axis=1)


def write_cache(path, coords: np.ndarray, features: np.ndarray):
    writer = CacheWriter(path, len(coords), 1, features.shape[1])
    writer.coords[:] = coords
    writer.features[:, 0] = features
    return open_cache(writer.commit({"backbone": "test"}))


def field_cache(path, length_km: float, seed: int):
    """Features: FIELD_DIMS independent Gaussian random fields on the sphere with covariance
    exp(-h / length_km) (gstools, h the chordal distance, which differs from the great-circle one by
    under 1% below 1,500 km) plus white noise."""
    rng = np.random.default_rng(seed)
    coords = uniform_box(rng, N_POINTS)
    model = gstools.Exponential(latlon=True, geo_scale=gstools.KM_SCALE, var=1.0, len_scale=length_km)
    latlon = (coords[:, 0], coords[:, 1])
    fields = [gstools.SRF(model, seed=seed * 100 + d, mode_no=FIELD_MODES)(latlon) for d in range(FIELD_DIMS)]
    features = np.stack(fields, axis=1) + rng.normal(scale=NUGGET_STD, size=(N_POINTS, FIELD_DIMS))
    return write_cache(path, coords, features)


@pytest.fixture(scope="module")
def field_caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    return {length: field_cache(root / f"exp{length:.0f}", length, seed) for seed, length in enumerate(LENGTHS_KM, 1)}


@pytest.mark.parametrize("length_km", LENGTHS_KM)
def test_recovers_a_known_correlation_length(field_caches, length_km):
    """An exponential covariance exp(-h/L) reaches 95% of its partial sill at h = ln(20) L, so the reported
    (practical) range must be ln(20) * L, about 3 L; within 20%. The sill is the fields' variance plus the
    noise's (1.25)."""
    result = sv.estimate_semivariogram(field_caches[length_km])
    assert result.range_km == pytest.approx(math.log(20) * length_km, rel=0.2)
    assert result.sill == pytest.approx(1 + NUGGET_STD**2, rel=0.1)
    assert 0 < result.nugget < result.sill / 2


def test_bins_are_log_spaced_and_count_every_binned_pair(field_caches):
    result = sv.estimate_semivariogram(field_caches[LENGTHS_KM[0]])
    bins = result.bins
    assert tuple(bins.columns) == sv.BIN_COLUMNS
    edges = np.append(bins["lower_km"].to_numpy(), bins["upper_km"].iloc[-1])
    assert edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(20_000)
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))  # equal ratios: log-spaced
    assert np.allclose(bins["centre_km"], np.sqrt(bins["lower_km"] * bins["upper_km"]))
    assert bins["pairs"].sum() == result.pairs > 100_000
    empty = bins["pairs"] == 0
    assert empty.any() and bins.loc[empty, "gamma"].isna().all() and bins.loc[~empty, "gamma"].notna().all()


def test_fitted_range_is_kept_on_disk_and_the_same_every_time(field_caches, monkeypatch):
    cache = field_caches[LENGTHS_KM[1]]
    first = sv.fitted_range_km(cache)
    assert first == sv.estimate_semivariogram(cache).range_km  # seeded: recomputing gives the same float
    assert len(list((cache.path / FOLDER).glob("semivariogram-*.json"))) == 1

    def fail(_cache, progress=False):
        raise AssertionError("recomputed instead of read from disk")

    monkeypatch.setattr(sv, "estimate_semivariogram", fail)
    assert sv.fitted_range_km(open_cache(cache.path)) == first


def small_cache(path, n: int, coords: np.ndarray | None = None):
    rng = np.random.default_rng(0)
    coords = uniform_box(rng, n) if coords is None else coords
    return write_cache(path, coords, rng.normal(size=(n, 8)))


def test_too_small_a_cache_raises_and_is_not_kept(tmp_path):
    cache = small_cache(tmp_path / "tiny", sv.MIN_IMAGES - 1)
    with pytest.raises(sv.SemivariogramError, match=str(cache.path)):
        sv.estimate_semivariogram(cache)
    with pytest.raises(sv.SemivariogramError, match=str(cache.path)):
        sv.fitted_range_km(cache)
    assert not list((cache.path / FOLDER).glob("*.json"))  # a failure is not cached


def test_too_few_distances_raise(tmp_path):
    """Enough images, but at two places only: one non-empty bin (pairs at distance 0 are left out)."""
    coords = np.repeat([[10.0, 10.0], [20.0, 20.0]], sv.MIN_IMAGES, axis=0)
    cache = small_cache(tmp_path / "two-places", len(coords), coords)
    with pytest.raises(sv.SemivariogramError, match="distance bins"):
        sv.estimate_semivariogram(cache)


@pytest.mark.parametrize("what", ["missing", "not a cache", "too small"])
def test_command_line_bad_input_exits_2_with_one_line(tmp_path, capsys, what):
    path = tmp_path / "input"
    if what == "not a cache":
        path.mkdir()
    elif what == "too small":
        small_cache(path, 50)
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and str(path) in captured.err
    assert not out.exists()


def test_command_line_writes_csv_and_png_and_prints_the_range(field_caches, tmp_path, capsys):
    cache = field_caches[LENGTHS_KM[0]]
    out = tmp_path / "out"
    assert main([str(cache.path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    bins = pd.read_csv(out / CSV)
    assert tuple(bins.columns) == sv.BIN_COLUMNS and len(bins) == sv.N_BINS
    assert np.allclose(np.append(bins["lower_km"], bins["upper_km"].iloc[-1]), np.geomspace(0.1, 20_000, sv.N_BINS + 1))
    assert (out / PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([CSV, PNG])  # no temporary left
    assert f"range {sv.fitted_range_km(cache):.4g} km" in printed and str(out / CSV) in printed
