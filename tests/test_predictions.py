"""Per-image predictions (``geoloc.study.predictions``): what a run keeps of every evaluation, and that it
reproduces the run's logged accuracies to the last digit."""

import numpy as np

from geoloc.common.metrics import accuracy_key
from geoloc.data import load_data
from geoloc.data.regions import regions_of
from geoloc.run.loop import train
from geoloc.study.folders import TrialFolder
from geoloc.study.predictions import COLUMNS, prediction_epochs, read_predictions
from geoloc.tasks.geoclip.evaluate import geoscore

from .conftest import build

TINY = {
    "offline": {"n_train": 600, "n_val": 120, "n_gallery": 600, "feature_dim": 32, "views": 1},
    "model": {"hidden_dim": 32, "depth": 1, "embed_dim": 16, "image_hidden_dim": 32},
}


def tiny(config: dict, epochs: int, **evaluation) -> dict:
    """The shared small configuration cut down further (a benchmark of its own, seconds to build)."""
    config["data"]["offline"].update(TINY["offline"])
    config["model"] = dict(TINY["model"])
    config["train"].update(epochs=epochs, batch_size=64, queue_size=64)
    config["eval"] = {"resolution_points": 0, **evaluation}
    return config


def test_predictions_reproduce_every_logged_accuracy_and_follow_resume(small_config, tmp_path):
    cfg = build(tiny(small_config, 2, at_start=True))
    folder = TrialFolder(tmp_path / "run")
    train(cfg, folder.path, seeds=2)
    assert prediction_epochs(folder) == [0, 1, 2]
    frame = read_predictions(folder)
    n_val = small_config["data"]["offline"]["n_val"]
    assert list(frame.columns) == ["epoch", *COLUMNS]
    assert len(frame) == 3 * 2 * n_val  # epochs x seeds x images
    data = load_data(cfg.data)
    gallery, true_regions = data.gallery, regions_of(data.val["val"].coords)
    for row in folder.read_seeds().rows:
        mine = frame[(frame.epoch == row["epoch"]) & (frame.seed == row["seed"]) & (frame.set == "val")]
        errors = mine.error_km.to_numpy()
        assert list(mine.image) == list(range(n_val))
        for t in cfg.eval.thresholds_km:
            assert float(np.mean(errors <= t)) == row[accuracy_key(t)]
        assert float(np.median(errors)) == row["median_km"]
        assert float(np.mean(errors)) == row["mean_km"]
        assert geoscore(errors) == row["geoscore"]
        # Country and continent accuracy: the true place's region against the predicted gallery point's.
        (country, continent), (got_country, got_continent) = true_regions, regions_of(gallery[mine.gallery_index])
        assert float(np.mean(country == got_country)) == row["country_acc"]
        assert float(np.mean(continent == got_continent)) == row["continent_acc"]
    # The true coordinates are the evaluation cache's; a prediction is a gallery point.
    first = frame[(frame.epoch == 1) & (frame.seed == cfg.train.seed)]
    assert first.true_lat.dtype == np.float32 and first.error_km.dtype == np.float64
    assert not np.array_equal(first.true_lat.to_numpy(), first.pred_lat.to_numpy())
    # A resume from epoch 1 drops epoch 2's file and writes it anew; a fresh start drops them all.
    folder.truncate_after(1)
    assert prediction_epochs(folder) == [0, 1]
    folder.clear_metrics()
    assert prediction_epochs(folder) == []


def test_predictions_can_be_switched_off(small_config, tmp_path):
    folder = TrialFolder(tmp_path / "run")
    train(build(tiny(small_config, 1, keep_predictions=False)), folder.path)
    assert prediction_epochs(folder) == [] and read_predictions(folder).empty
