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


def test_accuracy_by_region_is_the_hand_count_with_wilson_intervals():
    from types import SimpleNamespace

    import pandas as pd
    from scipy.stats import binomtest

    from analysis.sections.geoclip.regions import by_region, display
    from geoloc.tasks.geoclip.metrics import geoclip_registry

    study = SimpleNamespace(registry=geoclip_registry([1.0, 25.0], ["val"]), primary_set="val")
    places = [(48.8566, 2.3522), (45.764, 4.8357), (-33.8688, 151.2093), (0.0, -30.0)]  # FR, FR, AU, sea
    errors = {0: [0.5, 30.0, 0.2, 900.0], 1: [2.0, 10.0, 0.9, 900.0]}  # per seed, image by image
    rows = [
        {"trial_id": "t", "arm": "a", "seed": seed, "image": i, "true_lat": lat, "true_lon": lon, "error_km": e}
        for seed, errs in errors.items()
        for i, ((lat, lon), e) in enumerate(zip(places, errs, strict=True))
    ]
    table = by_region(study, None, pd.DataFrame(rows)).set_index(["level", "region", "threshold_km"])
    europe = table.loc[("continent", "Europe", 1.0)]
    # Europe at 1 km: seed 0 hits Paris (0.5), seed 1 neither: 1 hit of 2 runs x 2 images.
    assert (europe.n_images, europe.runs, europe.accuracy) == (2, 2, 0.25)
    low, high = binomtest(round(1 / 2), 2).proportion_ci(0.95, method="wilson")
    assert (europe.ci_low, europe.ci_high) == (low, high)
    assert table.loc[("continent", "Europe", 25.0)].accuracy == 3 / 4
    assert table.loc[("continent", "Oceania", 1.0)].accuracy == 1.0
    assert table.loc[("continent", "sea", 25.0)].accuracy == 0.0
    assert "country" not in set(table.index.get_level_values("level"))  # no country reaches 30 images
    assert list(display(by_region(study, None, pd.DataFrame(rows))).columns) == [
        "arm",
        "level",
        "region",
        "n",
        "acc_1km",
        "acc_25km",
    ]
