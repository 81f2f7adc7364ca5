"""The offline cross-view benchmark (geoloc/data/crossview/offline.py): CVUSA's layout on real MP-16
coordinates, the two projections of one field, built once and reproducibly, and its difficulty."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from geoloc.common.validation import ConfigError
from geoloc.data.crossview.offline import (
    OfflineCrossViewConfig,
    build_offline_crossview,
    difficulty,
    panorama_points,
    tile_points,
)
from geoloc.data.synthetic import geoclip_gallery_coords
from tests.crossviewutil import TINY, read_cvusa_layout, tiny_benchmark


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return tiny_benchmark(tmp_path_factory.mktemp("offline-crossview"))


def test_layout_is_cvusa_on_mp16_places(bench):
    cfg, folder = bench
    train, val = read_cvusa_layout(folder, "train"), read_cvusa_layout(folder, "val")
    assert (len(train), len(val)) == (TINY["n_train"], TINY["n_val"])
    first = (folder / "splits" / "train-19zl.csv").read_text().splitlines()[0]
    assert first == "bingmap/19/0000001.png,streetview/panos/0000001.png,streetview/annotations/0000001.png"
    # Real places: every coordinate is an MP-16 gallery point; the two views of a place share it;
    # validation places are held out from the training places.
    gallery = {tuple(c) for c in geoclip_gallery_coords().tolist()}
    for split in (train, val):
        assert all(tuple(c) in gallery for c in split.query_coords.tolist())
        np.testing.assert_array_equal(split.query_coords, split.reference_coords)
    assert not {tuple(c) for c in train.query_coords.tolist()} & {tuple(c) for c in val.query_coords.tolist()}
    with Image.open(train.references[0]) as tile, Image.open(train.queries[0]) as pano:
        assert (tile.mode, tile.size) == ("RGB", (cfg.tile_size, cfg.tile_size))
        assert (pano.mode, pano.size) == ("RGB", (cfg.panorama_width, cfg.panorama_height))


def test_read_split_reads_it_when_the_cvusa_reader_is_there(bench):
    pytest.importorskip("geoloc.data.crossview.cvusa")
    from geoloc.data.crossview import read_split

    _, folder = bench
    for split in ("train", "val"):
        mine, theirs = read_cvusa_layout(folder, split), read_split("offline", folder, split)
        assert [p.resolve() for p in theirs.queries] == [p.resolve() for p in mine.queries]
        np.testing.assert_array_equal(theirs.reference_coords[theirs.positive], mine.query_coords)


def test_sample_points_by_hand():
    # Tile 2 x 2 of side 2 km: pixel centres 0.5 km from the place; row 0 north, column 0 west.
    np.testing.assert_allclose(tile_points(2, 2.0)[0, 0], [-0.5, 0.5])
    np.testing.assert_allclose(tile_points(2, 2.0)[1, 1], [0.5, -0.5])
    # Panorama 2 x 4 seeing a disc of radius 1 km: azimuths -135, -45, 45, 135 degrees (north between
    # the two middle columns, east to the right of it); rows at 0.75 km (top, far) and 0.25 km.
    points = panorama_points(2, 4, 2.0)
    s = np.sqrt(0.5)
    np.testing.assert_allclose(points[0], 0.75 * np.array([[-s, -s], [-s, s], [s, s], [s, -s]]), atol=1e-12)
    np.testing.assert_allclose(points[1, 2], [0.25 * s, 0.25 * s])


def test_built_once_reproducible_and_keyed(bench, tmp_path):
    cfg, folder = bench
    done = (folder / "DONE").stat().st_mtime_ns
    assert build_offline_crossview(cfg) == folder and (folder / "DONE").stat().st_mtime_ns == done

    def digest(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    # The same configuration under another root: the same bytes (the folder name does not hold the root).
    again = build_offline_crossview(cfg.model_copy(update={"root": str(tmp_path)}))
    assert again.name == folder.name and digest(again) == digest(folder)
    other = build_offline_crossview(cfg.model_copy(update={"root": str(tmp_path), "seed": 1}))
    assert other != again and digest(other) != digest(again)


def test_config_errors_name_the_key(tmp_path):
    from geoloc.study.config import parse_job

    with pytest.raises(ConfigError, match=r"^data.offline.panorama_width: must be a multiple of 4, got 30"):
        parse_job({"task": "cross_view", "data": {"offline": {"root": str(tmp_path), "panorama_width": 30}}})
    with pytest.raises(ConfigError, match="n_train"):
        build_offline_crossview(OfflineCrossViewConfig(root=str(tmp_path), n_train=200_000))
    assert not [p for p in tmp_path.glob("crossview-*") if p.is_dir()]  # nothing built


def test_raw_pixels_near_chance_the_polar_transform_matches(bench):
    _, folder = bench
    found = difficulty(folder, "train")  # 40 pairs, chance 2.5 %
    assert found["polar"] == 1.0
    assert found["raw"] <= 0.15 and found["projected"] <= 0.15


BUILDER = """
import sys, time
from pathlib import Path
from geoloc.data.crossview.offline import OfflineCrossViewConfig, build_offline_crossview
root, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
cfg = OfflineCrossViewConfig(root=root, n_train=40, n_val=10)
ready.touch()
while not go.exists():
    time.sleep(0.001)
print(build_offline_crossview(cfg))
"""


@pytest.mark.slow  # two interpreters importing geoloc.data (torch, pandas): seconds on a busy machine
def test_two_processes_building_at_once_share_one_build(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(tmp_path / "root"), str(tmp_path / f"ready{k}"), str(go)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for k in range(2)
    ]
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
        time.sleep(0.01)
    go.touch()
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(outs) == 1
    assert [p.name for p in (tmp_path / "root").iterdir() if p.is_dir()] == [Path(outs.pop()).name]
