"""The offline cross-view benchmark: SYNTHETIC ground/aerial image pairs on real coordinates, in CVUSA's layout.

Nothing here is a photograph. The places are real (the published 100K MP-16 gallery shipped in the
``geoclip`` wheel, as for the offline GeoCLIP benchmark, with its clustering in cities); the images
are rendered from smooth random colour fields on the sphere, so that studies of the cross-view
task run anywhere, in seconds, without downloads:

    colour(point) = sigmoid(region(place) + texture(point))     RGB in (0, 1)

``region`` is the sum of fields of correlation length 1500 km and 30 km, evaluated at the place
(constant over an image: the "look" of a region, shared by neighbouring places, so a batch of
geographic neighbours holds confusable negatives as in Sample4Geo's GPS sampling); ``texture``
is the sum of fields of correlation length 1/2 and 1/8 of the tile extent, evaluated per pixel
(the content that tells two places of one region apart). Every field is random Fourier features
of the 3-D unit vector (a sum of ``FOURIER_FEATURES`` cosines) mapped to the three channels,
so overlapping tiles show the same ground.

The two views share that content through different projections (``tile_points``,
``panorama_points``):

- the aerial tile (``reference``): a square top-down patch of side ``tile_km`` around the place,
  north up, east right;
- the ground panorama (``query``): a polar unwrap of the disc of radius ``tile_km / 2`` inscribed
  in the tile: column = azimuth, clockwise from north, north at the middle of the image (between
  the two central columns), south at both edges; row = distance from the place, far at the top, near
  at the bottom. So rotating the tile by k * 90 degrees counter-clockwise is rolling the panorama
  left by k quarters of its width, and mirroring the tile left-right is mirroring the panorama
  (Sample4Geo's paired augmentation, ``geoloc.data.crossview.pairs``);
- the panorama has its own nuisance: a brightness gain (uniform in 1 +- ``GAIN``), a colour cast
  (a normal offset per channel, std ``CAST``) and pixel noise (std ``NOISE``), so a panorama's
  colours are not its tile's and raw pixels barely match.

Difficulty (default configuration; measured by ``difficulty`` below): matching each panorama
against all tiles of its split, recall@1 of flattened raw pixels, L2-normalised (both views have
3072 values), is 1.6 % on the 500 validation pairs (chance 0.2 %) and 0.45 % on the 2000 training
pairs (chance 0.05 %): near chance, though not at it (a weaker colour cast, std 0.1, gave
3 % on validation). Each view through its own fixed
Gaussian random projection to 256 dimensions: 0.2 % and 0.05 %, chance. A learnable match
exists: the tile resampled at the panorama's sample points (the known polar transform, nearest
pixel) and both views standardised per image and channel: 100 % on both splits.

At most one place per cell of about a tile's side (a grid in latitude and longitude) is kept, so
no two pairs are copies (places in neighbouring cells may overlap, as neighbouring tiles do), then
the validation places are held out from the training places. Layout
(what ``geoloc.data.crossview.read_split("offline", folder, split)`` reads, via the CVUSA reader)::

    splits/train-19zl.csv, splits/val-19zl.csv   no header: bingmap/19/0000001.png,streetview/panos/0000001.png,
                                                  streetview/annotations/0000001.png  (annotations not written:
                                                  Sample4Geo never reads them)
    split_locations/all.csv                       no header: aerial lat, aerial lon, ground lat, ground lon; row id - 1
    bingmap/19/NNNNNNN.png                        aerial tiles, tile_size x tile_size RGB
    streetview/panos/NNNNNNN.png                  panoramas, panorama_height x panorama_width RGB
    config.json, DONE

Build time of the default configuration (2000 train + 500 val pairs, 32 x 32 tiles, 16 x 64
panoramas): 3.0 to 4.2 s on the development machine (2 cores shared with other work, Python
3.11), reading the MP-16 coordinates included; 2 * 2500 PNG files, 21 MB on disk. Built once per
configuration, keyed and published like ``geoloc.data.synthetic`` (hash of the configuration and
``GENERATOR_VERSION``, a file lock, a temporary folder renamed into place), so concurrent trials
share one build. The same configuration gives the same bytes on one machine (another CPU's
float32 cosines may round a rare pixel the other way). The module imports no torch (the task's
configuration imports it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import Field, StrictInt, StrictStr, field_validator

from geoloc.common.atomic import build_once
from geoloc.common.validation import ConfigError, Float, Section

EARTH_RADIUS_KM = 6371.0088  # as geoloc.geo (not imported: it imports torch)
REGION_SCALES_KM = (1500.0, 30.0)
REGION_AMPLITUDE = 0.8  # per region field, in logits
TEXTURE_SCALES = (0.5, 0.125)  # correlation lengths as fractions of the tile's side
TEXTURE_AMPLITUDE = 1.0  # per texture field, in logits
FOURIER_FEATURES = 48  # cosines per field
GAIN, CAST, NOISE = 0.3, 0.2, 0.04  # panorama nuisance: brightness gain +-, colour cast std, pixel noise std
CHUNK = 64  # places rendered at a time
GENERATOR_VERSION = 1  # bump when anything above or the rendering changes: built benchmarks are keyed by it
TILE_DIR, PANO_DIR, ANNOTATION_DIR = "bingmap/19", "streetview/panos", "streetview/annotations"
SPLIT_FILES = {"train": "splits/train-19zl.csv", "val": "splits/val-19zl.csv"}
LOCATIONS = "split_locations/all.csv"


class OfflineCrossViewConfig(Section):
    """The bundled synthetic cross-view benchmark (geoloc.data.crossview.offline)."""

    n_train: StrictInt = Field(2_000, ge=1)
    """Training pairs (one aerial tile and one panorama per place), on MP-16 gallery coordinates."""
    n_val: StrictInt = Field(500, ge=1)
    """Validation pairs, on places held out from the training places."""
    tile_size: StrictInt = Field(32, ge=4)
    """Side of an aerial tile in pixels (square, north up)."""
    panorama_height: StrictInt = Field(16, ge=2)
    """Rows of a panorama (distance from the place, far at the top)."""
    panorama_width: StrictInt = Field(64, ge=4)
    """Columns of a panorama (azimuth); a multiple of 4 so that a 90-degree rotation is an exact roll."""

    @field_validator("panorama_width")
    @classmethod
    def _quarter_turns(cls, width: int) -> int:
        if width % 4:
            raise ValueError(f"must be a multiple of 4, got {width}")
        return width

    tile_km: Float = Field(0.4, gt=0.0, le=50.0)
    """Side of an aerial tile on the ground, km; the panorama sees the inscribed disc."""
    seed: StrictInt = 0
    """Seed of the benchmark itself (fields, places, nuisance), independent of the trial seed."""
    root: StrictStr = "~/.cache/geoloc-study/offline-crossview"
    """Folder where built benchmarks are kept, one subfolder per distinct configuration."""


def benchmark_dir(cfg: OfflineCrossViewConfig) -> Path:
    """Where the benchmark of this configuration lives (one folder per distinct configuration)."""
    key = {k: v for k, v in cfg.model_dump().items() if k != "root"} | {"generator": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.root).expanduser() / f"crossview-{digest}"


def build_offline_crossview(cfg: OfflineCrossViewConfig, progress: bool = False) -> Path:
    """Build (once, safe from several processes at once: ``geoloc.common.atomic.build_once``) and return
    the benchmark folder, in CVUSA's layout."""
    return build_once(benchmark_dir(cfg), lambda tmp: _build(cfg, tmp), "the offline cross-view benchmark", progress)


def _build(cfg: OfflineCrossViewConfig, tmp: Path) -> None:
    """The benchmark's files, written into the folder ``tmp``."""
    from PIL import Image

    rng = np.random.default_rng(cfg.seed)
    coords = _places(rng, cfg)
    field = ColourField(rng, cfg.tile_km)
    for folder in (TILE_DIR, PANO_DIR, "splits", "split_locations"):
        (tmp / folder).mkdir(parents=True)
    tile_xy = tile_points(cfg.tile_size, cfg.tile_km)
    pano_xy = panorama_points(cfg.panorama_height, cfg.panorama_width, cfg.tile_km)
    for start in range(0, len(coords), CHUNK):
        chunk = coords[start : start + CHUNK]
        tiles = field.render(chunk, tile_xy)
        panoramas = add_nuisance(rng, field.render(chunk, pano_xy))
        for k, (tile, panorama) in enumerate(zip(_to_uint8(tiles), _to_uint8(panoramas), strict=True)):
            name = f"{start + k + 1:07d}.png"  # the id is the row of all.csv plus one, as in CVUSA
            Image.fromarray(tile).save(tmp / TILE_DIR / name, compress_level=1)
            Image.fromarray(panorama).save(tmp / PANO_DIR / name, compress_level=1)
    ids = np.arange(1, len(coords) + 1)
    for split, rows in (("train", ids[: cfg.n_train]), ("val", ids[cfg.n_train :])):
        lines = [f"{TILE_DIR}/{i:07d}.png,{PANO_DIR}/{i:07d}.png,{ANNOTATION_DIR}/{i:07d}.png\n" for i in rows]
        (tmp / SPLIT_FILES[split]).write_text("".join(lines))
    (tmp / LOCATIONS).write_text("".join(f"{lat!r},{lon!r},{lat!r},{lon!r}\n" for lat, lon in coords.tolist()))
    described = {k: v for k, v in cfg.model_dump().items() if k != "root"} | {"generator": GENERATOR_VERSION}
    (tmp / "config.json").write_text(json.dumps(described, indent=1))  # without the root: moved, it is the same
    (tmp / "DONE").write_text("synthetic offline cross-view benchmark; see geoloc/data/crossview/offline.py\n")


def _places(rng: np.random.Generator, cfg: OfflineCrossViewConfig) -> np.ndarray:
    """(n_train + n_val, 2) MP-16 gallery coordinates, at most one per cell of about a tile's side; train first."""
    from geoloc.data.synthetic import geoclip_gallery_coords

    coords = geoclip_gallery_coords()
    coords = coords[rng.permutation(len(coords))]
    cell_deg = cfg.tile_km / (np.pi * EARTH_RADIUS_KM / 180.0)
    _, first = np.unique(np.floor(coords / cell_deg).astype(np.int64), axis=0, return_index=True)
    coords = coords[np.sort(first)]  # the first place of each cell, in the permuted order
    wanted = cfg.n_train + cfg.n_val
    if wanted > len(coords):
        raise ConfigError(f"n_train: n_train + n_val = {wanted}, but only {len(coords)} distinct places exist")
    return coords[:wanted]


def tile_points(size: int, tile_km: float) -> np.ndarray:
    """(size, size, 2) ground offsets (east, north) in km of the aerial tile's pixel centres; row 0 is north."""
    centre = ((np.arange(size) + 0.5) / size - 0.5) * tile_km
    north, east = np.meshgrid(-centre, centre, indexing="ij")
    return np.stack([east, north], axis=-1)


def panorama_points(height: int, width: int, tile_km: float) -> np.ndarray:
    """(height, width, 2) ground offsets (east, north) in km that the panorama's pixels see.

    Column c looks at azimuth 2 pi (c + 1/2) / width - pi, clockwise from north (north between the
    two central columns); row r at distance tile_km / 2 * (height - r - 1/2) / height (far at the top).
    """
    azimuth = 2 * np.pi * (np.arange(width) + 0.5) / width - np.pi
    distance = tile_km / 2 * (height - np.arange(height) - 0.5) / height
    return np.stack([np.outer(distance, np.sin(azimuth)), np.outer(distance, np.cos(azimuth))], axis=-1)


class ColourField:
    """The random colour field on the sphere: region fields at the place, texture fields per point."""

    def __init__(self, rng: np.random.Generator, tile_km: float):
        scales = [*REGION_SCALES_KM, *(s * tile_km for s in TEXTURE_SCALES)]
        self.omega = [rng.normal(scale=EARTH_RADIUS_KM / s, size=(FOURIER_FEATURES, 3)) for s in scales]
        self.phase = [rng.uniform(0, 2 * np.pi, size=FOURIER_FEATURES) for _ in scales]
        amplitude = [REGION_AMPLITUDE] * len(REGION_SCALES_KM) + [TEXTURE_AMPLITUDE] * len(TEXTURE_SCALES)
        # Each field has variance amplitude**2 per channel.
        self.mix = [rng.normal(size=(FOURIER_FEATURES, 3)) * a * np.sqrt(2 / FOURIER_FEATURES) for a in amplitude]
        self.regions = len(REGION_SCALES_KM)

    def _field(self, i: int, u: np.ndarray) -> np.ndarray:
        return np.cos(u @ self.omega[i].T + self.phase[i]) @ self.mix[i]

    def render(self, latlon: np.ndarray, offsets_km: np.ndarray) -> np.ndarray:
        """(n, *offsets.shape[:-1], 3) colours in (0, 1) at the ground offsets (east, north) around each place.

        The texture fields are evaluated in the tangent plane at the place (offsets of a few km move
        a point off the sphere by (d / R)**2 / 2 of the radius: far below a pixel), their phase at the
        place in float64 and the rest in float32, which makes the build fast.
        """
        u0 = _unit_vectors(latlon)  # (n, 3)
        lat, lon = np.radians(latlon).T
        east = np.stack([-np.sin(lon), np.cos(lon), np.zeros_like(lon)], axis=1) / EARTH_RADIUS_KM
        north = np.stack([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)], axis=1)
        north /= EARTH_RADIUS_KM
        flat = offsets_km.reshape(1, -1, 2).astype(np.float32)  # (1, p, 2)
        logits = sum(self._field(i, u0) for i in range(self.regions))[:, None, :].astype(np.float32)
        for i in range(self.regions, len(self.omega)):
            # The phase at the place, reduced modulo 2 pi in float64; across a tile it changes by a few radians.
            at_place = np.mod(u0 @ self.omega[i].T + self.phase[i], 2 * np.pi).astype(np.float32)  # (n, F)
            gradient = np.stack([east @ self.omega[i].T, north @ self.omega[i].T], axis=1).astype(np.float32)
            phase = at_place[:, None, :] + flat @ gradient  # (n, p, F)
            logits = logits + np.cos(phase) @ self.mix[i].astype(np.float32)
        return (1 / (1 + np.exp(-logits))).reshape(len(latlon), *offsets_km.shape[:-1], 3)


def add_nuisance(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """The panoramas' own brightness gain, colour cast and pixel noise, clipped to [0, 1]."""
    n = len(images)
    gain = rng.uniform(1 - GAIN, 1 + GAIN, size=(n, 1, 1, 1))
    cast = rng.normal(scale=CAST, size=(n, 1, 1, 3))
    return np.clip(images * gain + cast + rng.normal(scale=NOISE, size=images.shape), 0.0, 1.0)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(images * 255).astype(np.uint8)


def _unit_vectors(latlon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(np.asarray(latlon, dtype=np.float64)).T
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def difficulty(folder: Path, split: str = "val", projection_dim: int = 256, seed: int = 0) -> dict:
    """Recall@1 of simple matchers on a built benchmark (the numbers quoted in the module's docstring).

    ``raw``: flattened pixels, L2-normalised, panorama against tile; ``projected``: each view through
    its own fixed Gaussian random projection first; ``polar``: the tile resampled (nearest pixel) at
    the panorama's sample points, both standardised per image (a learnable match exists). Reads the
    split files itself (not the CVUSA reader) so it checks the layout independently.
    """
    from PIL import Image

    cfg = OfflineCrossViewConfig(
        **{k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "generator"}
    )
    rows = [line.split(",") for line in (folder / SPLIT_FILES[split]).read_text().splitlines()]
    tiles = np.stack([np.asarray(Image.open(folder / r[0]), np.float64) / 255 for r in rows])
    panos = np.stack([np.asarray(Image.open(folder / r[1]), np.float64) / 255 for r in rows])
    rng = np.random.default_rng(seed)

    def recall(q: np.ndarray, r: np.ndarray) -> float:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        return float(np.mean(np.argmax(q @ r.T, axis=1) == np.arange(len(q))))

    def standardise(x: np.ndarray) -> np.ndarray:  # per image and channel
        x = x.reshape(len(x), -1, 3)
        return ((x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)).reshape(len(x), -1)

    q, r = panos.reshape(len(rows), -1), tiles.reshape(len(rows), -1)
    xy = panorama_points(cfg.panorama_height, cfg.panorama_width, cfg.tile_km)
    col = np.clip(np.floor((xy[..., 0] / cfg.tile_km + 0.5) * cfg.tile_size), 0, cfg.tile_size - 1).astype(int)
    row = np.clip(np.floor((0.5 - xy[..., 1] / cfg.tile_km) * cfg.tile_size), 0, cfg.tile_size - 1).astype(int)
    polar = tiles[:, row, col].reshape(len(rows), -1)
    return {
        "pairs": len(rows),
        "chance": 1 / len(rows),
        "raw": recall(q, r) if q.shape[1] == r.shape[1] else None,
        "projected": recall(
            q @ rng.normal(size=(q.shape[1], projection_dim)), r @ rng.normal(size=(r.shape[1], projection_dim))
        ),
        "polar": recall(standardise(q), standardise(polar)),
    }
