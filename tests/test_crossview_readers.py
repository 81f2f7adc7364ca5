"""The cross-view readers (CVUSA, CVACT, VIGOR) on tiny fixture folders in the published layouts.

Known answers: the fixtures (``tests/crossview_fixtures.py``) write coordinates, names and labels
by small formulas; the tests state what each reader must return for them, mostly as literals.
Every broken variant must be a DataError whose message names the file and the line or row.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.io import loadmat, savemat

from geoloc.data.cache import DataError
from geoloc.data.crossview import read_split
from geoloc.data.crossview.check import main as check_main
from geoloc.data.crossview.cvact import read_cvact, utm_to_latlon
from geoloc.data.crossview.cvusa import read_cvusa
from geoloc.data.crossview.vigor import read_vigor
from tests.crossview_fixtures import cvact_utm, vigor_tile, write_cvact, write_cvusa, write_vigor

ROOT = Path(__file__).resolve().parents[1]


def replace_line(path: Path, line: int, text: str | None) -> None:
    """Line ``line`` (1-based) of a text file replaced by ``text`` (None: removed)."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    path.write_text("".join(x + "\n" for x in lines))


# --------------------------------------------------------------------------------------------- CVUSA


def test_cvusa_reads_pairs_with_coordinates_by_aerial_id(tmp_path):
    root = write_cvusa(tmp_path / "cvusa", n_train=3, n_val=2)
    train = read_cvusa(root, "train")
    assert train.name == "cvusa/train"
    assert train.queries == tuple(root / f"streetview/panos/{i:07d}.jpg" for i in (1, 3, 5))
    assert train.references == tuple(root / f"bingmap/19/{i:07d}.jpg" for i in (1, 3, 5))
    # all.csv line id: aerial (40 + id/100, -90 - id/100), the ground 0.0001 degrees further
    np.testing.assert_array_equal(train.reference_coords, [[40.01, -90.01], [40.03, -90.03], [40.05, -90.05]])
    np.testing.assert_array_equal(train.query_coords, [[40.0101, -90.0101], [40.0301, -90.0301], [40.0501, -90.0501]])
    np.testing.assert_array_equal(train.positive, [0, 1, 2])
    assert train.semi_positives.shape == (3, 0)
    val = read_cvusa(root, "val")
    assert val.queries == (root / "streetview/panos/0000002.jpg", root / "streetview/panos/0000004.jpg")
    np.testing.assert_array_equal(val.reference_coords, [[40.02, -90.02], [40.04, -90.04]])


def test_cvusa_paths_are_absolute_from_a_relative_root(tmp_path, monkeypatch):
    write_cvusa(tmp_path / "cvusa", n_train=2, n_val=1)
    monkeypatch.chdir(tmp_path)
    data = read_split("cvusa", "cvusa", "train")
    assert all(p.is_absolute() and p.is_file() for p in data.queries + data.references)


def _remove(path: Path) -> None:
    path.unlink()


CVUSA_BROKEN = {
    "missing panorama": (
        lambda r: _remove(r / "streetview/panos/0000003.jpg"),
        r"train-19zl.csv: line 2: ground panorama .*0000003.jpg not found \(1 of 3",
    ),
    "missing tile": (lambda r: _remove(r / "bingmap/19/0000005.jpg"), r"train-19zl.csv: line 3: aerial tile .*0000005"),
    "missing split file": (
        lambda r: _remove(r / "splits/train-19zl.csv"),
        r"train-19zl.csv: CVUSA train split .*not found",
    ),
    "empty split file": (lambda r: (r / "splits/train-19zl.csv").write_text("\n"), r"train-19zl.csv: empty file"),
    "two columns": (
        lambda r: replace_line(r / "splits/train-19zl.csv", 2, "bingmap/19/0000003.jpg,streetview/panos/0000003.jpg"),
        r"train-19zl.csv: line 2: 2 columns, expected 3",
    ),
    "aerial not numbered": (
        lambda r: replace_line(r / "splits/train-19zl.csv", 1, "bingmap/19/abc.jpg,streetview/panos/0000001.jpg,a.png"),
        r"train-19zl.csv: line 1: aerial file 'bingmap/19/abc.jpg' is not named by a positive number",
    ),
    "repeated pair": (
        lambda r: replace_line(r / "splits/train-19zl.csv", 3, (r / "splits/train-19zl.csv").read_text().split()[0]),
        r"train-19zl.csv: line 3: aerial tile bingmap/19/0000001.jpg repeats .*train-19zl.csv: line 1",
    ),
    "coordinate not a number": (
        lambda r: replace_line(r / "split_locations/all.csv", 3, "40.03,-90.03,abc,-90.0301,0"),
        r"all.csv: line 3: ground latitude 'abc' is not a finite number",
    ),
    "latitude out of range": (
        lambda r: replace_line(r / "split_locations/all.csv", 5, "95.0,-90.05,40.0501,-90.0501,0"),
        r"all.csv: line 5: aerial latitude 95.0 out of range",
    ),
    "too few coordinate columns": (
        lambda r: replace_line(r / "split_locations/all.csv", 1, "40.01,-90.01,40.0101"),
        r"all.csv: line 1: 3 columns, expected at least 4",
    ),
    "id past the coordinates": (
        lambda r: (r / "split_locations/all.csv").write_text("40.01,-90.01,40.0101,-90.0101,0\n"),
        r"train-19zl.csv: line 2: aerial id 3 has no line in .*all.csv \(1 lines\)",
    ),
    "missing coordinates file": (lambda r: _remove(r / "split_locations/all.csv"), r"all.csv: CVUSA coordinates"),
}


@pytest.mark.parametrize("case", CVUSA_BROKEN)
def test_cvusa_refuses_broken_data_naming_file_and_line(tmp_path, case):
    root = write_cvusa(tmp_path / "cvusa", n_train=3, n_val=2)
    break_it, message = CVUSA_BROKEN[case]
    break_it(root)
    with pytest.raises(DataError, match=message):
        read_cvusa(root, "train")


# --------------------------------------------------------------------------------------------- CVACT


def meridian_arc(lat_deg: float, a: float, f: float) -> float:
    """Distance (m) along the meridian from the equator, by numerical integration of its radius of curvature."""
    e2 = f * (2 - f)
    return quad(lambda phi: a * (1 - e2) / (1 - e2 * np.sin(phi) ** 2) ** 1.5, 0.0, np.radians(lat_deg))[0]


def test_utm_inverse_matches_snyders_example_and_the_meridian_arc():
    # Snyder, Map Projections: A Working Manual (USGS PP 1395), transverse Mercator example: Clarke 1866,
    # 40.5 N 73.5 W, central meridian 75 W (UTM zone 18), k0 0.9996 -> x 127,106.5 m, y 4,484,124.4 m.
    e2 = 0.00676866
    lat, lon = utm_to_latlon(500_000 + 127_106.5, 4_484_124.4, 18, south=False, a=6378206.4, f=1 - np.sqrt(1 - e2))
    assert abs(lat - 40.5) < 2e-6 and abs(lon + 73.5) < 2e-6  # the example's 0.1 m rounding is 1e-6 degrees
    # On the central meridian the northing is k0 times the meridian arc (south: from 10,000 km).
    a, f = 6378137.0, 1 / 298.257223563
    for lat_deg in (-35.3, -10.0, 5.0, 60.0):
        arc = 0.9996 * meridian_arc(abs(lat_deg), a, f)
        northing = 10_000_000 - arc if lat_deg < 0 else arc
        lat, lon = utm_to_latlon(500_000.0, northing, 55, south=lat_deg < 0)
        assert abs(lat - lat_deg) < 1e-8 and abs(lon - 147.0) < 1e-12  # 1e-8 degrees: 1 mm
    # Mirror images about the central meridian: same latitude, longitudes symmetric.
    (lat_e, lat_w), (lon_e, lon_w) = utm_to_latlon(np.array([650_000.0, 350_000.0]), 6_090_000.0, 55, south=True)
    assert lat_e == pytest.approx(lat_w, abs=1e-12) and lon_e - 147 == pytest.approx(147 - lon_w, abs=1e-12)


@pytest.mark.parametrize("utm_order", ["en", "ne"])
def test_cvact_reads_split_rows_in_index_order_with_converted_utm(tmp_path, utm_order):
    root = write_cvact(tmp_path / "cvact", n_train=3, n_val=2, utm_order=utm_order)
    train = read_cvact(root, "train")
    assert train.name == "cvact/train"
    # trainInd lists panoIds rows 3, 2, 1 (1-based): ids act0002..., act0001..., act0000...
    assert train.queries == tuple(root / f"ANU_data_small/streetview/act{r:04d}Pano_x_grdView.jpg" for r in (2, 1, 0))
    assert train.references == tuple(
        root / f"ANU_data_small/satview_polish/act{r:04d}Pano_x_satView_polish.jpg" for r in (2, 1, 0)
    )
    utm = np.array([cvact_utm(r) for r in (2, 1, 0)])
    expected = np.stack(utm_to_latlon(utm[:, 0], utm[:, 1], 55, south=True), axis=1)
    np.testing.assert_array_equal(train.query_coords, expected)
    np.testing.assert_array_equal(train.reference_coords, expected)
    assert ((-35.5 < expected[:, 0]) & (expected[:, 0] < -35.1)).all()  # Canberra
    assert ((148.9 < expected[:, 1]) & (expected[:, 1] < 149.3)).all()
    np.testing.assert_array_equal(train.positive, [0, 1, 2])
    assert train.semi_positives.shape == (3, 0)
    val = read_cvact(root, "val")
    assert [p.name for p in val.queries] == ["act0004Pano_x_grdView.jpg", "act0003Pano_x_grdView.jpg"]


def rewrite_mat(root: Path, **changes) -> None:
    path = root / "ACT_data.mat"
    mat = {k: v for k, v in loadmat(path, simplify_cells=True).items() if not k.startswith("__")}
    mat.update(changes)
    savemat(path, {k: v for k, v in mat.items() if v is not None})


def utm_with(row: int, values) -> np.ndarray:
    utm = np.array([cvact_utm(r) for r in range(6)])
    utm[row] = values
    return utm


CVACT_BROKEN = {
    "missing panorama": (
        lambda r: _remove(r / "ANU_data_small/streetview/act0001Pano_x_grdView.jpg"),
        r"ACT_data.mat: trainSet.trainInd: row 2 \(panoIds row 2, id act0001Pano_x\): ground panorama .* not found",
    ),
    "missing tile": (
        lambda r: _remove(r / "ANU_data_small/satview_polish/act0000Pano_x_satView_polish.jpg"),
        r"ACT_data.mat: trainSet.trainInd: row 3 \(panoIds row 1, id act0000Pano_x\): aerial tile",
    ),
    "missing file": (lambda r: _remove(r / "ACT_data.mat"), r"ACT_data.mat: CVACT data file not found"),
    "not a MATLAB file": (lambda r: (r / "ACT_data.mat").write_text("hello"), r"ACT_data.mat: not a readable MATLAB"),
    "no split": (lambda r: rewrite_mat(r, trainSet=None), r"ACT_data.mat: no trainSet.trainInd"),
    "no utm": (lambda r: rewrite_mat(r, utm=None), r"ACT_data.mat: no variable utm"),
    "index out of range": (
        lambda r: rewrite_mat(r, trainSet={"trainInd": np.array([3.0, 99.0])}),
        r"ACT_data.mat: trainSet.trainInd: row 2: index 99.0 is not a whole number in \[1, 6\]",
    ),
    "index not whole": (
        lambda r: rewrite_mat(r, trainSet={"trainInd": np.array([1.5])}),
        r"trainSet.trainInd: row 1: index 1.5",
    ),
    "repeated index": (
        lambda r: rewrite_mat(r, trainSet={"trainInd": np.array([3.0, 2.0, 3.0])}),
        r"trainSet.trainInd: row 3: panoIds index 3 repeats .*trainSet.trainInd: row 1",
    ),
    "utm not a number": (
        lambda r: rewrite_mat(r, utm=utm_with(1, [np.nan, 6_090_100.0])),
        r"ACT_data.mat: utm: row 2: \[nan, 6090100.0\] is not two finite numbers",
    ),
    "utm columns unclear": (
        lambda r: rewrite_mat(r, utm=utm_with(0, [690_000.0, 690_000.0])),
        r"ACT_data.mat: utm: row 1: \[690000.0, 690000.0\]: cannot tell easting from northing",
    ),
    "utm wrong shape": (lambda r: rewrite_mat(r, utm=np.zeros((6, 3))), r"utm has shape \(6, 3\)"),
}


@pytest.mark.parametrize("case", CVACT_BROKEN)
def test_cvact_refuses_broken_data_naming_file_and_row(tmp_path, case):
    root = write_cvact(tmp_path / "cvact", n_train=3, n_val=2)
    break_it, message = CVACT_BROKEN[case]
    break_it(root)
    with pytest.raises(DataError, match=message):
        read_cvact(root, "train")


# --------------------------------------------------------------------------------------------- VIGOR


def test_vigor_same_area_reads_all_cities_labels_and_every_tile(tmp_path):
    root = write_vigor(tmp_path / "vigor", n_tiles=5, n_train=3, n_test=2)
    train = read_vigor(root, "train", "same")
    assert train.name == "vigor-same/train"
    assert len(train.queries) == 12 and len(train.references) == 20  # 3 panoramas and 5 tiles per city
    assert train.queries[0] == root / "ground/Chicago/-ChiPano000_x,41.8801,-87.6302,.jpg"
    assert train.references[5] == root / "satellite/NewYork/satellite_40.71_-74.0.png"
    np.testing.assert_array_equal(train.query_coords[0], [41.8801, -87.6302])  # from the panorama's name
    np.testing.assert_array_equal(train.reference_coords[5], [40.71, -74.0])  # from the tile's name
    np.testing.assert_array_equal(train.reference_coords[6], [40.711, -73.998])
    # Panoramas 0 and 1 of a city share tile 0, panorama 2 has tile 1; cities are 5 tiles apart.
    np.testing.assert_array_equal(train.positive, [0, 0, 1, 5, 5, 6, 10, 10, 11, 15, 15, 16])
    np.testing.assert_array_equal(train.semi_positives[:3], [[1, 2, 3], [1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(train.semi_positives[3], [6, 7, 8])
    val = read_vigor(root, "val", "same")  # the test files; the same tiles
    assert val.references == train.references
    np.testing.assert_array_equal(val.positive, [1, 2, 6, 7, 11, 12, 16, 17])
    np.testing.assert_array_equal(val.semi_positives[:2], [[2, 3, 4], [3, 4, 0]])
    assert val.queries[1].name == "-ChiPano004_x,41.8821,-87.6262,.jpg"


def test_vigor_cross_area_trains_on_newyork_and_seattle_and_evaluates_on_the_others(tmp_path):
    root = write_vigor(tmp_path / "vigor", n_tiles=5, n_train=3, n_test=2)
    train = read_split("vigor", root, "train", area="cross")
    assert train.name == "vigor-cross/train"
    assert {p.parent.name for p in train.queries} == {"NewYork", "Seattle"} and len(train.queries) == 10
    assert train.references[0].name == vigor_tile("NewYork", 0)[0]
    assert train.references[5].name == vigor_tile("Seattle", 0)[0]
    np.testing.assert_array_equal(train.positive, [0, 0, 1, 1, 2, 5, 5, 6, 6, 7])
    val = read_split("vigor", root, "val", area="cross")
    assert [p.parent.name for p in val.references] == ["Chicago"] * 5 + ["SanFrancisco"] * 5
    assert {p.parent.name for p in val.queries} == {"Chicago", "SanFrancisco"}


def _vigor_row(root: Path, city: str, name: str, line: int) -> list[str]:
    return (root / "splits" / city / name).read_text().splitlines()[line - 1].split()


def _rename_panorama(root: Path) -> None:
    fields = _vigor_row(root, "Chicago", "same_area_balanced_train.txt", 2)
    (root / "ground/Chicago" / fields[0]).rename(root / "ground/Chicago/plain.jpg")
    replace_line(root / "splits/Chicago/same_area_balanced_train.txt", 2, " ".join(["plain.jpg"] + fields[1:]))


TRAIN_LIST = "splits/Chicago/same_area_balanced_train.txt"
VIGOR_BROKEN = {
    "missing panorama": (
        lambda r: _remove(r / "ground/NewYork" / _vigor_row(r, "NewYork", "same_area_balanced_train.txt", 2)[0]),
        r"NewYork/same_area_balanced_train.txt: line 2: panorama .*-NewPano001_x.* not found",
    ),
    "missing unlabelled tile": (
        lambda r: _remove(r / "satellite/Seattle" / vigor_tile("Seattle", 4)[0]),
        r"Seattle/satellite_list.txt: line 5: tile .*satellite_47.604_-122.322.png not found",
    ),
    "positive not listed": (
        lambda r: replace_line(r / "splits/Chicago/satellite_list.txt", 1, None),
        r"Chicago/same_area_balanced_train.txt: line 1: positive tile satellite_41.88_-87.63.png \(column 2\) is "
        r"not in .*Chicago/satellite_list.txt",
    ),
    "semi-positive not listed": (
        lambda r: replace_line(r / "splits/Chicago/satellite_list.txt", 4, None),
        r"Chicago/same_area_balanced_train.txt: line 1: semi-positive tile satellite_41.883_-87.624.png \(column 11\)",
    ),
    "twelve columns": (
        lambda r: replace_line(r / TRAIN_LIST, 2, " ".join(_vigor_row(r, "Chicago", TRAIN_LIST[15:], 2)[:12])),
        r"same_area_balanced_train.txt: line 2: 12 columns, expected 13",
    ),
    "offset not a number": (
        lambda r: replace_line(
            r / TRAIN_LIST, 3, " ".join(_vigor_row(r, "Chicago", TRAIN_LIST[15:], 3)[:2] + ["x"] + ["0"] * 10)
        ),
        r"same_area_balanced_train.txt: line 3: column 3 \(a pixel offset\) 'x' is not a finite number",
    ),
    "repeated panorama": (
        lambda r: replace_line(r / TRAIN_LIST, 3, " ".join(_vigor_row(r, "Chicago", TRAIN_LIST[15:], 1))),
        r"same_area_balanced_train.txt: line 3: panorama Chicago/-ChiPano000_x.* repeats .*line 1",
    ),
    "panorama name without coordinates": (
        _rename_panorama,
        r"same_area_balanced_train.txt: line 2: panorama name 'plain.jpg' carries no coordinates",
    ),
    "tile latitude out of range": (
        lambda r: replace_line(r / "splits/SanFrancisco/satellite_list.txt", 5, "satellite_95.0_-122.41.png"),
        r"SanFrancisco/satellite_list.txt: line 5: tile satellite_95.0_-122.41.png latitude 95.0 out of range",
    ),
    "tile name unreadable": (
        lambda r: replace_line(r / "splits/SanFrancisco/satellite_list.txt", 5, "tile_5.png"),
        r"SanFrancisco/satellite_list.txt: line 5: tile name 'tile_5.png' does not read",
    ),
    "repeated tile": (
        lambda r: replace_line(r / "splits/Seattle/satellite_list.txt", 5, vigor_tile("Seattle", 0)[0]),
        r"Seattle/satellite_list.txt: line 5: tile satellite_47.6_-122.33.png repeats .*line 1",
    ),
    "missing panorama list": (
        lambda r: _remove(r / "splits/Seattle/same_area_balanced_train.txt"),
        r"Seattle/same_area_balanced_train.txt: VIGOR same-area train panorama list of Seattle not found",
    ),
    "empty tile list": (
        lambda r: (r / "splits/NewYork/satellite_list.txt").write_text(""),
        r"NewYork/satellite_list.txt: empty file",
    ),
}


@pytest.mark.parametrize("case", VIGOR_BROKEN)
def test_vigor_refuses_broken_data_naming_file_and_line(tmp_path, case):
    root = write_vigor(tmp_path / "vigor", n_tiles=5, n_train=3, n_test=2)
    break_it, message = VIGOR_BROKEN[case]
    break_it(root)
    with pytest.raises(DataError, match=message):
        read_vigor(root, "train", "same")


def test_vigor_cross_area_reads_its_own_lists_only(tmp_path):
    root = write_vigor(tmp_path / "vigor", n_tiles=5, n_train=3, n_test=2)
    _remove(root / "splits/Chicago/pano_label_balanced.txt")
    assert len(read_vigor(root, "train", "cross")) == 10  # NewYork and Seattle need nothing of Chicago
    with pytest.raises(DataError, match=r"Chicago/pano_label_balanced.txt: VIGOR cross-area val .* not found"):
        read_vigor(root, "val", "cross")


# --------------------------------------------------------------------------------------------- dispatch, CLI


def test_read_split_dispatches_by_layout(tmp_path):
    cvusa = write_cvusa(tmp_path / "cvusa", n_train=2, n_val=1)
    assert read_split("cvusa", cvusa, "train").name == "cvusa/train"
    assert read_split("offline", cvusa, "val").name == "offline/val"  # the offline benchmark is in CVUSA's layout
    assert read_split("cvact", write_cvact(tmp_path / "cvact", 2, 1), "val").name == "cvact/val"
    vigor = write_vigor(tmp_path / "vigor")
    assert read_split("vigor", vigor, "train").name == "vigor-same/train"
    assert read_split("vigor", vigor, "val", area="cross").name == "vigor-cross/val"
    with pytest.raises(ValueError, match="area must be one of"):
        read_split("vigor", vigor, "train", area="both")
    with pytest.raises(ValueError, match="layout must be one of"):
        read_split("kitti", vigor, "train")
    with pytest.raises(DataError, match="is not a folder"):
        read_split("cvusa", tmp_path / "nowhere", "train")


def test_check_command_prints_counts_and_exits_2_with_one_line_on_bad_data(tmp_path, capsys):
    root = write_vigor(tmp_path / "vigor")
    assert check_main(["vigor", str(root), "--area", "cross"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "vigor-cross/train: 10 queries, 10 references, 6 positives",
        "vigor-cross/val: 10 queries, 10 references, 6 positives",
    ]
    cvusa = write_cvusa(tmp_path / "cvusa", n_train=3, n_val=2)
    _remove(cvusa / "streetview/panos/0000004.jpg")
    done = subprocess.run(
        [sys.executable, "-m", "geoloc.data.crossview.check", "cvusa", str(cvusa)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert re.match(r"error: .*val-19zl.csv: line 2: ground panorama .*0000004.jpg not found", lines[0])
