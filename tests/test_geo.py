import math

import numpy as np
import pytest
import torch

from geoloc.geo import EARTH_RADIUS_KM, check_coordinates, displace, gps_noise, haversine_km, invalid_coordinate_rows


def test_haversine_known_distances_numpy_and_torch_agree():
    london, paris = (51.5074, -0.1278), (48.8566, 2.3522)
    d_np = haversine_km(np.array(london), np.array(paris))
    assert d_np == pytest.approx(343.5, abs=1.0)
    d_t = haversine_km(torch.tensor([london], dtype=torch.float64), torch.tensor([paris], dtype=torch.float64))
    assert float(d_t[0]) == pytest.approx(float(d_np), rel=1e-12)
    # antipodes: half the circumference; across the date line: short way round
    assert haversine_km(np.array([0.0, 0.0]), np.array([0.0, 180.0])) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert haversine_km(np.array([0.0, 179.5]), np.array([0.0, -179.5])) == pytest.approx(111.2, abs=0.1)


def test_haversine_broadcasts_like_a_pairwise_matrix():
    a = np.random.default_rng(0).uniform([-90, -180], [90, 180], size=(5, 2))
    b = np.random.default_rng(1).uniform([-90, -180], [90, 180], size=(7, 2))
    m = haversine_km(a[:, None, :], b[None, :, :])
    assert m.shape == (5, 7)
    assert m[3, 4] == pytest.approx(haversine_km(a[3], b[4]))


@pytest.mark.parametrize("sigma_km", [0.15, 1.0, 25.0, 500.0])
def test_noise_has_the_requested_sigma_in_km(sigma_km):
    rng = torch.Generator().manual_seed(0)
    start = torch.tensor([[48.0, 11.0]], dtype=torch.float64).repeat(20000, 1)
    moved = gps_noise(start, sigma_km, rng)
    d = haversine_km(start, moved).numpy()
    # 2-D Gaussian with sigma per component: E[d^2] = 2 sigma^2
    measured_sigma = np.sqrt(np.mean(d**2) / 2)
    assert measured_sigma == pytest.approx(sigma_km, rel=0.03)
    # north component alone (latitude change) also has the requested sigma
    north_km = (moved[:, 0] - start[:, 0]).numpy() * math.pi / 180 * EARTH_RADIUS_KM
    assert np.std(north_km) == pytest.approx(sigma_km, rel=0.03)


def test_noise_keeps_coordinates_valid_at_poles_and_date_line():
    rng = torch.Generator().manual_seed(1)
    edge = torch.tensor(
        [[90.0, 0.0], [-90.0, 45.0], [89.999, 179.999], [0.0, -180.0], [-89.99, -179.99]], dtype=torch.float64
    )
    moved = gps_noise(edge.repeat(5000, 1), 50.0, rng)
    assert len(invalid_coordinate_rows(moved.numpy())) == 0
    assert torch.isfinite(moved).all()


def test_displacement_crosses_the_date_line_and_a_pole():
    east = displace(torch.tensor([[0.0, 179.9]], dtype=torch.float64), torch.tensor([0.0]), torch.tensor([22.24]))
    assert east[0, 1] == pytest.approx(-179.9, abs=1e-3)
    over_pole = displace(torch.tensor([[89.9, 10.0]], dtype=torch.float64), torch.tensor([22.24]), torch.tensor([0.0]))
    assert over_pole[0, 0] == pytest.approx(89.9, abs=1e-3) and over_pole[0, 1] == pytest.approx(-170.0, abs=1e-3)


def test_zero_sigma_is_identity_and_draws_nothing():
    rng = torch.Generator().manual_seed(3)
    x = torch.tensor([[10.0, 20.0]])
    assert gps_noise(x, 0.0, rng) is x
    assert torch.equal(rng.get_state(), torch.Generator().manual_seed(3).get_state())


@pytest.mark.parametrize("bad", [[91.0, 0.0], [0.0, 180.5], [float("nan"), 0.0], [0.0, float("inf")]])
def test_check_coordinates_names_the_row(bad):
    coords = np.array([[0.0, 0.0], [1.0, 1.0], bad])
    with pytest.raises(ValueError, match="where: row 2"):
        check_coordinates(coords, "where")


def test_nearest_gallery_distance_equals_the_brute_force_minimum():
    from geoloc.tasks.geoclip.evaluate import nearest_distance_km

    rng = np.random.default_rng(2)
    gallery = rng.uniform([-90, -180], [90, 180], size=(3000, 2))
    points = np.concatenate(
        [
            gallery[:200] + rng.normal(scale=0.001, size=(200, 2)),  # metres away
            rng.uniform([-90, -180], [90, 180], size=(300, 2)),
        ]
    )
    points = np.clip(points, [-90, -180], [90, 180])
    brute = haversine_km(points[:, None, :], gallery[None, :, :]).min(axis=1)
    np.testing.assert_allclose(nearest_distance_km(points, gallery), brute, rtol=1e-9, atol=1e-6)
