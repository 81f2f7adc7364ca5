"""Maps and gallery density (analysis/sections/geoclip/maps.py, density.py): planted galleries' counts are the
brute-force haversine counts, density-bin accuracies and binned hit differences are hand computations, and a
real tiny study gets its maps, density table and by-continent ablation tables, every figure readable."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from analysis import analyse
from analysis.canvas import overlaps
from analysis.load import AnalysisError
from analysis.sections.geoclip.density import by_density, cached_counts, density_bin, gallery_counts
from analysis.sections.geoclip.maps import binned_means, hit_differences
from geoloc.geo import EARTH_RADIUS_KM, equal_earth_projection, haversine_km
from geoloc.tasks.geoclip.metrics import geoclip_registry

KM_PER_DEG = np.pi * EARTH_RADIUS_KM / 180  # about 111.2 km of latitude


def test_numpy_equal_earth_at_the_corners_is_the_hand_formula():
    from geoloc.geo import A1, A2, A3, A4, SF

    theta = np.pi / 3  # asin(sqrt(3) / 2 * sin(90°))
    half_width = 2 * np.sqrt(3) * np.pi / (3 * A1) * SF / 180  # theta = 0 at the equator
    half_height = (A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta) * SF / 180
    got = equal_earth_projection(np.array([[0.0, 180.0], [90.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(got, [[half_width, 0.0], [0.0, half_height], [0.0, 0.0]], rtol=1e-15, atol=1e-15)


@pytest.mark.slow
def test_numpy_equal_earth_is_the_published_torch_formula():
    torch = pytest.importorskip("torch")
    points = np.array([[0.0, 0.0], [48.8566, 2.3522], [-33.87, 151.21], [90.0, 180.0], [-90.0, -180.0]])
    mine = equal_earth_projection(points)
    theirs = equal_earth_projection(torch.tensor(points, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-12)


def test_gallery_counts_are_the_brute_force_haversine_counts(tmp_path):
    rng = np.random.default_rng(7)
    centre = np.array([48.85, 2.35])
    # A cluster within a few km, a ring at 10-40 km, and points far away; images at and near the cluster.
    cluster = centre + rng.normal(0, 0.006, (40, 2))
    ring = centre + rng.uniform(-0.35, 0.35, (60, 2))
    far = rng.uniform([-60, -170], [70, 170], (200, 2))
    gallery = np.concatenate([cluster, ring, far])
    images = np.concatenate([[centre], centre + [[0.02, 0.0], [0.2, 0.0], [1.0, 1.0]], rng.uniform(-50, 50, (6, 2))])
    got = gallery_counts(images, gallery)
    brute = np.array(
        [[sum(haversine_km(i, g) <= r for g in gallery) for r in (1.0, 25.0)] for i in images], dtype=np.int64
    )
    assert got.tolist() == brute.tolist()
    assert got[0, 0] > 10 and got[0, 1] > got[0, 0]  # the planted cluster is seen
    assert cached_counts(tmp_path, images, gallery).tolist() == brute.tolist()
    assert [p.name.startswith("gallery_density-") for p in (tmp_path / "derived").glob("*.npy")] == [True]
    assert cached_counts(tmp_path, images, gallery).tolist() == brute.tolist()  # read back


def test_density_bins_and_their_accuracies_are_the_hand_counts():
    assert (
        density_bin(np.array([0, 1, 9, 10, 99, 100, 5000])).tolist()
        == ["0", "1-9", "1-9", "10-99", "10-99"] + ["100+"] * 2
    )
    study = SimpleNamespace(registry=geoclip_registry([1.0, 25.0], ["val"]))
    within_1 = [0, 0, 3, 150]
    within_25 = [0, 12, 12, 400]
    errors = {0: [5.0, 0.5, 0.2, 0.1], 1: [30.0, 2.0, 0.9, 0.4]}  # seed -> errors of images 0..3
    rows = pd.DataFrame(
        [
            {"arm": "a", "trial_id": "t", "seed": s, "image": i, "error_km": e}
            | {"within_1km": within_1[i], "within_25km": within_25[i]}
            for s, errs in errors.items()
            for i, e in enumerate(errs)
        ]
    )
    table = by_density(study, rows).set_index(["radius_km", "bin", "threshold_km"])
    # Within 1 km, bin "0" holds images 0 and 1: 1 km hits: seed 0 image 1 only -> 1 of 2 runs x 2 images.
    zero = table.loc[(1.0, "0", 1.0)]
    assert (zero.n_images, zero.runs, zero.accuracy) == (2, 2, 0.25)
    low, high = binomtest(round(1 / 2), 2).proportion_ci(0.95, method="wilson")
    assert (zero.ci_low, zero.ci_high) == (low, high)
    assert table.loc[(1.0, "0", 25.0)].accuracy == 3 / 4  # all but the 30 km error
    assert table.loc[(1.0, "1-9", 1.0)].accuracy == 1.0 and table.loc[(1.0, "100+", 1.0)].n_images == 1
    # Within 25 km, bin "10-99" holds images 1 and 2: 1 km hits 0.5, 0.2, 0.9 (not 2.0) -> 3 of 4.
    assert table.loc[(25.0, "10-99", 1.0)].accuracy == 3 / 4
    assert table.loc[(25.0, "0", 25.0)].accuracy == 1 / 2
    assert "1-9" not in set(table.loc[25.0].index.get_level_values("bin"))


def planted(seeds_base=(0, 1), seeds_arm=(0, 1)) -> pd.DataFrame:
    """Two arms, 4 images: images 0 and 1 two km apart in Paris, image 2 in Sydney, image 3 in Lima."""
    places = [(48.85, 2.35), (48.86, 2.36), (-33.87, 151.21), (-12.05, -77.04)]
    errors = {  # (arm, seed) -> errors of the 4 images
        ("0", seeds_base[0]): [0.5, 0.5, 30.0, 0.5],
        ("0", seeds_base[1]): [0.5, 3.0, 30.0, 0.5],
        ("25", seeds_arm[0]): [3.0, 0.5, 10.0, 0.5],
        ("25", seeds_arm[1]): [3.0, 30.0, 10.0, 3.0],
    }
    return pd.DataFrame(
        [
            {"arm": arm, "trial_id": arm, "seed": seed, "image": i, "true_lat": lat, "true_lon": lon, "error_km": e}
            for (arm, seed), errs in errors.items()
            for i, ((lat, lon), e) in enumerate(zip(places, errs, strict=True))
        ]
    )


def test_hit_differences_pair_seeds_and_bin_to_the_hand_means():
    diffs = hit_differences(planted(), "0", [1.0, 25.0]).set_index(["threshold_km", "image"])
    # 1 km: image 0: arm 0/2 - base 2/2 = -1; image 1: 1/2 - 1/2 = 0; image 2: 0 - 0; image 3: 1/2 - 1 = -1/2.
    assert diffs.loc[1.0, "diff"].tolist() == [-1.0, 0.0, 0.0, -0.5]
    # 25 km: image 1: 1/2 - 1 = -1/2; image 2: 1 - 0 = +1; others 0.
    assert diffs.loc[25.0, "diff"].tolist() == [0.0, -0.5, 1.0, 0.0]
    one = diffs.loc[1.0]
    means, counts, x_edges, y_edges = binned_means(one["lat"], one["lon"], one["diff"], min_images=2)
    # The two Paris images share a cell (mean (-1 + 0) / 2); the others are alone and left out.
    assert sorted(counts[counts > 0].tolist()) == [1, 1, 2]
    assert np.nansum(~np.isnan(means)) == 1 and np.nanmax(means) == -0.5
    x, y = equal_earth_projection(np.array([[48.85, 2.35]]))[0]
    cell = (np.searchsorted(x_edges, x) - 1, np.searchsorted(y_edges, y) - 1)
    assert means[cell] == -0.5 and counts[cell] == 2
    kept, _, _, _ = binned_means(one["lat"], one["lon"], one["diff"], min_images=1)
    assert sorted(kept[~np.isnan(kept)].tolist()) == [-0.5, -0.5, 0.0]


def test_arms_without_a_shared_seed_are_each_averaged_over_their_runs():
    diffs = hit_differences(planted(seeds_arm=(5, 6)), "0", [1.0]).set_index("image")
    assert diffs["diff"].tolist() == [-1.0, 0.0, 0.0, -0.5]  # the same means: every run of each arm
    only_one_shared = planted(seeds_arm=(0, 6))  # seed 0 in both: that seed alone
    diffs = hit_differences(only_one_shared, "0", [1.0]).set_index("image")
    assert diffs["diff"].tolist() == [-1.0, 0.0, 0.0, 0.0]  # seed 0: arm [3, .5, 10, .5] vs base [.5, .5, 30, .5]


# --- a real tiny study --------------------------------------------------------------------------------

SIGMA = "train.noise.batch_sigma"
TINY = {
    "offline": {"n_train": 400, "n_val": 80, "n_gallery": 400, "feature_dim": 16, "views": 1},
    "model": {"hidden_dim": 16, "depth": 1, "embed_dim": 8, "image_hidden_dim": 16},
}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Two trials of one epoch and two seeds each (sigma 0 and 25 km), trained for real, as a study folder."""
    import copy

    from geoloc.run.loop import train
    from geoloc.study.folders import Status, StatusRecord, TrialFolder

    from .conftest import SMALL, build
    from .test_analysis_budget import write_study

    root = tmp_path_factory.mktemp("maps") / "study"
    write_study(
        root,
        {
            "name": "maps",
            "base": {"train": {"epochs": 1}},
            "search_space": {SIGMA: {"type": "choice", "values": [0.0, 25.0]}},
        },
    )
    for number, sigma in enumerate([0.0, 25.0]):
        config = copy.deepcopy(SMALL)
        config["data"]["offline"].update(TINY["offline"], root=str(tmp_path_factory.getbasetemp() / "offline_maps"))
        config["model"] = dict(TINY["model"])
        config["train"].update(epochs=1, batch_size=64, queue_size=64, noise={"batch_sigma": sigma})
        config["eval"] = {"resolution_points": 0, "thresholds_km": [1, 25, 200, 750, 2500]}
        trial = TrialFolder.of_trial(root, f"t{number:03d}")
        train(build(config), trial.path, seeds=2)
        trial.write_trial(f"t{number:03d}", number, {SIGMA: sigma})
        trial.write_status(StatusRecord(Status.FINISHED, 1, 1))
    return root


@pytest.mark.slow
def test_a_real_study_gets_readable_maps_density_and_continent_tables(tiny_study, tmp_path):
    out = tmp_path / "out"
    result = analyse(tiny_study, out, formats=("csv", "md"), echo_warnings=False, min_country_images=1)
    assert not [w for w in result["warnings"] if "overlap" in w], result["warnings"]
    for name in ("gain_map_train_noise_batch_sigma", "error_map", "density_accuracy"):
        assert name in result["plots"], sorted(result["plots"])
    density = pd.read_csv(out / "accuracy_by_density.csv")
    assert set(density["radius_km"]) == {1.0, 25.0} and set(density["arm"].astype(str)) == {"0", "25"}
    # Each arm's images split over the bins of each radius: the bins' images sum to the set's 80.
    assert (density[density.threshold_km == 1].groupby(["arm", "radius_km"])["n_images"].sum() == 80).all()
    continents = pd.read_csv(out / "ablation_train_noise_batch_sigma_by_continent.csv")
    assert set(continents["arm"].astype(str)) == {"0", "25"} and set(continents["threshold_km"]) == {1.0}
    regions = pd.read_csv(out / "accuracy_by_region.csv")
    assert "country" in set(regions["level"])  # a minimum of 1 image lists every country
    report = (out / "report.md").read_text()
    assert "gain_map_train_noise_batch_sigma.png" in report and "### Accuracy by gallery density" in report


@pytest.mark.slow
def test_every_map_passes_the_overlap_check(tiny_study):
    from analysis import read_study
    from analysis.budget import at, choose
    from analysis.findings import compute
    from analysis.sections.geoclip import maps
    from analysis.sections.geoclip.regions import budget_predictions

    study = read_study(tiny_study)
    budget = at(study, choose(study, None), asked=False)
    found = compute(study, budget, list(study.varied), 4)
    charts = maps.gain_maps(study, found, budget_predictions(study, budget)) + [maps.error_map(study, budget)]
    assert len(charts) == 2
    for chart in charts:
        assert overlaps(chart.figure) == [], chart.name


@pytest.mark.slow
def test_min_country_images_is_checked(tiny_study, tmp_path):
    with pytest.raises(AnalysisError, match="--min-country-images"):
        analyse(tiny_study, tmp_path, min_country_images=0, echo_warnings=False)
