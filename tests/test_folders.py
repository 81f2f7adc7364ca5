"""The study and trial folder contract (geoloc/study/folders.py) and the metric registry
(geoloc/tasks/geoclip/metrics.py)."""

from __future__ import annotations

import json

import pytest

from geoloc.common.metrics import MetricRegistry
from geoloc.study.folders import Status, StatusRecord, StudyFolder, TrialFolder
from geoloc.study.runname import run_name, short_keys
from geoloc.tasks.geoclip.metrics import geoclip_registry


def test_metrics_log_tolerates_a_torn_line_and_the_later_line_of_an_epoch_wins(tmp_path):
    folder = TrialFolder(tmp_path)
    for epoch, score in ((1, 0.1), (2, 0.2), (3, 0.3), (2, 0.25)):  # a resumed run wrote epoch 2 again
        folder.append_metrics({"epoch": epoch, "score": score})
    with (tmp_path / TrialFolder.METRICS).open("a") as f:
        f.write('{"epoch": 4, "sco')  # killed while writing
    log = folder.read_metrics()
    assert [(r["epoch"], r["score"]) for r in log.rows] == [(1, 0.1), (2, 0.25), (3, 0.3)]
    assert log.unreadable == 1 and log.last == {"epoch": 3, "score": 0.3}


def test_truncate_keeps_the_epochs_of_the_checkpoint(tmp_path):
    folder = TrialFolder(tmp_path)
    for epoch in (1, 2, 3):
        folder.append_metrics({"epoch": epoch})
    folder.truncate_after(2)
    assert [json.loads(line)["epoch"] for line in (tmp_path / TrialFolder.METRICS).read_text().splitlines()] == [1, 2]
    folder.clear_metrics()
    assert folder.read_metrics().rows == []


@pytest.mark.parametrize(
    "record,phrase",
    [
        (StatusRecord(Status.FINISHED, 6, 6), "finished after 6 of 6 epochs"),
        (StatusRecord(Status.STOPPED, 3, 6, stopped_by="ASHA"), "stopped by ASHA at epoch 3 of 6"),
        (StatusRecord(Status.STOPPED, 2, 4, stopped_by="MOASHA"), "stopped by MOASHA at epoch 2 of 4"),
        (StatusRecord(Status.STOPPED, 1, 4), "stopped early at epoch 1 of 4"),  # a record that does not say
        (
            StatusRecord(Status.ERRORED, 2, 6, reason="training loss is nan"),
            "errored at epoch 2 of 6: training loss is nan",
        ),
        (StatusRecord(Status.RUNNING, 1, 6, pid=42), "running, 1 of 6 epochs done"),
    ],
)
def test_status_round_trips_and_reads_the_same_phrase(tmp_path, record, phrase):
    folder = TrialFolder(tmp_path)
    assert folder.read_status() is None
    folder.write_status(record)
    assert folder.read_status() == record and folder.read_status().describe() == phrase
    assert folder.ended() == (record.status in (Status.FINISHED, Status.STOPPED))


def test_unknown_or_torn_status_is_an_error_not_a_silent_running(tmp_path):
    folder = TrialFolder(tmp_path)
    (tmp_path / TrialFolder.STATUS).write_text('{"status": "paused"}')
    with pytest.raises(ValueError):
        folder.read_status()
    (tmp_path / TrialFolder.STATUS).write_text('{"status": "fini')
    with pytest.raises(ValueError):
        folder.read_status()
    assert not folder.ended()


def test_study_folder_lists_trials_by_their_trial_json(tmp_path):
    study = StudyFolder(tmp_path)
    study.trial("b").path.mkdir()
    study.trial("b").write_trial("b", 1, {"train.lr": 0.1})
    study.trial("a").path.mkdir()
    study.trial("a").write_trial("a", 0, {})
    (tmp_path / "trial_c").mkdir()  # Ray made it, the worker has not written trial.json yet
    assert [t.name for t in study.trials()] == ["trial_a", "trial_b"]
    assert study.trial("b").read_trial() == {"trial_id": "b", "number": 1, "params": {"train.lr": 0.1}}


def test_registry_follows_the_thresholds_and_evaluation_sets(tmp_path):
    registry = geoclip_registry([100, 0.5, 10], ["val", "yfcc4k"])
    assert registry.accuracies() == ["acc_0.5km", "acc_10km", "acc_100km"]
    assert registry.accuracies("yfcc4k") == ["yfcc4k_acc_0.5km", "yfcc4k_acc_10km", "yfcc4k_acc_100km"]
    assert registry.ceilings() == ["ceiling_0.5km", "ceiling_10km", "ceiling_100km"]
    assert registry.direction("val_loss") == "min" and registry.direction("acc_10km") == "max"
    assert registry.direction("lr") is None and registry.direction("not_a_metric") is None
    assert registry.get("score").fraction and not registry.get("median_km").fraction
    assert registry.tag("val_loss") == "val/loss" and registry.tag("yfcc4k_val_loss") == "val/yfcc4k_val_loss"
    assert registry.tag("train_loss") == "train/loss" and registry.tag("train_s") == "time/train_s"
    assert set(registry.hparam_tags()) == {
        "train/loss",
        "encoder/resolution_km",
        "val/loss",
        "val/acc_0.5km",
        "val/acc_10km",
        "val/acc_100km",
        "val/median_km",
        "val/mean_km",
        "val/geoscore",
        "val/country_acc",
        "val/continent_acc",
        "val/score",
    }
    assert registry.progress_columns() == ["epoch", "score", "acc_0.5km", "acc_100km", "val_loss"]
    registry.save(tmp_path / StudyFolder.REGISTRY)
    assert MetricRegistry.load(tmp_path / StudyFolder.REGISTRY) == registry


def test_run_names_hold_the_number_and_the_values_with_keys_shortened_only_where_they_clash():
    keys = ["train.noise.batch_sigma", "train.lr", "model.lr", "train.loss.type", "model.rff_scales"]
    assert short_keys(keys) == {
        "train.noise.batch_sigma": "batch_sigma",
        "train.lr": "train.lr",
        "model.lr": "model.lr",
        "train.loss.type": "type",
        "model.rff_scales": "rff_scales",
    }
    assert short_keys(["a.b.c", "x.b.c", "c"]) == {"a.b.c": "a.b.c", "x.b.c": "x.b.c", "c": "c"}
    params = {"train.noise.batch_sigma": 5.0, "train.lr": 0.001, "model.rff_scales": [1, 16, 256]}
    assert run_name(3, params, keys) == "t0003 batch_sigma=5 train.lr=0.001 rff_scales=1,16,256"
    assert run_name(12345, {"train.loss.type": "a/b: c"}) == "t12345 type=a_b__c"  # no / : or spaces in a value


def test_a_long_run_name_leaves_out_whole_items_from_the_end():
    params = {f"train.k{i}": 0.123456789 for i in range(20)}
    name = run_name(7, params, limit=52)
    assert name == "t0007 k0=0.123457 k1=0.123457 k2=0.123457"  # 41 characters; the next item makes 53
    assert run_name(7, params, limit=53).endswith("k2=0.123457 k3=0.123457")
    assert len(run_name(7, params)) <= 100
    assert all(item.split("=")[1] == "0.123457" for item in name.split()[1:])


def test_a_trial_writes_its_events_to_its_named_run_and_a_plain_run_to_its_folder(tmp_path):
    trial = TrialFolder(tmp_path / "trial_a")
    trial.path.mkdir()
    assert trial.events_dir() == trial.path and trial.seed_dir(1) == trial.path / "seed_1"
    trial.write_trial("a", 3, {"train.lr": 0.01}, run="t0003 lr=0.01")
    assert trial.events_dir() == trial.path / "t0003 lr=0.01"
    assert trial.seed_dir(1) == trial.path / "t0003 lr=0.01" / "seed_1"
    assert trial.read_trial()["run"] == "t0003 lr=0.01"
    trial.write_trial("a", 3, {}, run="../elsewhere")  # a hand-edited trial.json names no folder outside
    assert trial.events_dir() == trial.path
