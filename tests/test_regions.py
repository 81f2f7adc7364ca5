"""Regions offline (``geoloc.data.regions``): planted coordinates in known countries, near a border and at
sea get the documented answer; region accuracy is the hand-counted share; answers are cached."""

import numpy as np

from geoloc.data.regions import SEA, cached_regions, regions_of
from geoloc.tasks.geoclip.evaluate import region_accuracy

PLANTED = {
    "Paris": ((48.8566, 2.3522), "FR", "Europe"),
    "Sydney": ((-33.8688, 151.2093), "AU", "Oceania"),
    "New York": ((40.7128, -74.0060), "US", "North America"),
    "Sao Paulo": ((-23.55, -46.63), "BR", "South America"),
    "Nairobi": ((-1.29, 36.82), "KE", "Africa"),
    "Tokyo": ((35.68, 139.69), "JP", "Asia"),
    # Either side of the Rhine at Strasbourg (FR) and Kehl (DE), 5 km apart: each town's own country.
    "Strasbourg": ((48.5734, 7.7521), "FR", "Europe"),
    "Kehl": ((48.5726, 7.8153), "DE", "Europe"),
    # Basel (CH) and Saint-Louis (FR), 4 km apart across the border.
    "Basel": ((47.5596, 7.5886), "CH", "Europe"),
    "Saint-Louis": ((47.5900, 7.5600), "FR", "Europe"),
    # Open sea: mid-Atlantic and the Southern Ocean, far beyond 150 km from any place.
    "Atlantic": ((0.0, -30.0), SEA, SEA),
    "Southern Ocean": ((-60.0, -120.0), SEA, SEA),
    # At sea but within 150 km of a coast: the coast's country (the documented rule).
    "off Marseille": ((43.0, 5.4), "FR", "Europe"),
}


def test_planted_places_get_their_country_and_continent():
    coords = np.array([c for c, _, _ in PLANTED.values()])
    country, continent = regions_of(coords)
    assert dict(zip(PLANTED, country, strict=True)) == {k: v[1] for k, v in PLANTED.items()}
    assert dict(zip(PLANTED, continent, strict=True)) == {k: v[2] for k, v in PLANTED.items()}


def test_region_accuracy_is_the_hand_counted_share():
    country = np.array(["FR", "FR", "AU", SEA])
    continent = np.array(["Europe", "Europe", "Oceania", SEA])
    # Predictions: right country; wrong country on the right continent; wrong continent; sea for sea.
    got = region_accuracy(country, continent, ["FR", "DE", "NZ", SEA], ["Europe", "Europe", "Asia", SEA])
    assert got == {"country_acc": 2 / 4, "continent_acc": 3 / 4}


def test_regions_are_kept_beside_the_cache_and_read_back(tmp_path):
    coords = np.array([[48.8566, 2.3522], [-33.8688, 151.2093]])
    first = cached_regions(tmp_path, coords)
    assert [f.name for f in (tmp_path / "derived").glob("regions-*.json")]
    again = cached_regions(tmp_path, coords)
    assert [list(a) for a in first] == [list(a) for a in again] == [["FR", "AU"], ["Europe", "Oceania"]]
