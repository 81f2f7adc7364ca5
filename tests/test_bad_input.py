"""Bad input matrix: every case exits 2 with one line naming the key, file or row, before any
trial starts, and leaves nothing in the storage path. (Image and CSV datasets at extraction
time are covered in test_real_data.py.)"""

from __future__ import annotations

import copy

import pytest

import tune_main
from geoloc.data.cache import CacheWriter
from geoloc.study.folders import StudyFolder

from .studyutil import TINY_STUDY, write_study


def gallery_csv(tmp_path, text):
    path = tmp_path / "gallery.csv"
    path.write_text(text)
    return {"base.data.gallery": str(path)}


def small_cache(tmp_path, name, dim):
    writer = CacheWriter(tmp_path / name, 10, 1, dim)
    writer.features[:] = 0
    writer.coords[:] = [[10.0, 10.0]] * 10
    return str(writer.commit({"backbone": "test"}))


# (case id, study changes as dotted key -> value, or a callable(tmp_path) giving them, extra args, expected text)
CASES = [
    ("unknown key", {"serch": {}}, [], "serch: unknown key"),
    ("unknown nested key", {"base.train.batch_sise": 8}, [], "base.train.batch_sise: unknown key"),
    ("wrong type", {"base.train.batch_size": "large"}, [], "base.train.batch_size: expected an integer"),
    ("negative sigma", {"base.train.noise.batch_sigma": -0.5}, [], "base.train.noise.batch_sigma: must be >= 0"),
    ("batch size 0", {"base.train.batch_size": 0}, [], "base.train.batch_size: must be >= 1"),
    ("negative queue", {"base.train.queue_size": -4}, [], "base.train.queue_size: must be >= 0"),
    ("zero seeds", {"search.seeds": 0}, [], "search.seeds: must be >= 1"),
    (
        "seeds and repeats",
        {"search": {"algorithm": "grid", "repeats": 2, "seeds": 3}},
        [],
        "search.seeds: repeats seeds inside each trial; drop repeats (2)",
    ),
    (
        "seeds and a sampled seed",
        {"search.seeds": 2, "search_space": {"train.seed": {"type": "choice", "values": [0, 1]}}},
        [],
        "search_space.train.seed: search.seeds trains seeds",
    ),
    ("negative probe", {"base.eval.resolution_points": -1}, [], "base.eval.resolution_points: must be >= 0"),
    (
        "zero score weights",
        {"base.eval.score_weights": [0, 0, 0, 0, 0]},
        [],
        "base.eval.score_weights: must be >= 0 with a positive sum",
    ),
    (
        "objective weights removed",
        {"objective.weights": [1, 1, 1, 1, 1]},
        [],
        "objective.weights: removed; set base.eval.score_weights (one weight per threshold) instead",
    ),
    ("empty thresholds", {"base.eval.thresholds_km": []}, [], "base.eval.thresholds_km: needs at least one threshold"),
    (
        "pareto under asha",
        {"objective": {"type": "pareto", "metrics": ["acc_1km", "acc_2500km"]}, "scheduler.type": "asha"},
        [],
        "scheduler.type: asha stops trials on the single score; a pareto objective needs moasha or none",
    ),
    (
        "pareto unknown metric",
        {"objective": {"type": "pareto", "metrics": ["acc_1km", "acc_3km"]}, "scheduler.type": "moasha"},
        [],
        "objective.metrics: unknown metric 'acc_3km'",
    ),
    (
        "pareto metric without direction",
        {"objective": {"type": "pareto", "metrics": ["acc_1km", "lr"]}, "scheduler.type": "moasha"},
        [],
        "objective.metrics: lr has no better direction",
    ),
    (
        "pareto of one metric",
        {"objective": {"type": "pareto", "metrics": ["acc_1km", "acc_1km"]}, "scheduler.type": "none"},
        [],
        "objective.metrics: pareto needs two or more different metrics",
    ),
    ("moasha on the score", {"scheduler.type": "moasha"}, [], "scheduler.type: moasha ranks several objectives"),
    (
        "moasha brackets",
        {
            "objective": {"type": "pareto", "metrics": ["acc_1km", "acc_2500km"]},
            "scheduler": {"type": "moasha", "brackets": 2},
        },
        [],
        "scheduler.brackets: moasha runs one bracket, got 2",
    ),
    (
        "space key unknown",
        {"search_space": {"train.nope": {"type": "choice", "values": [1]}}},
        [],
        "search_space.train.nope: not a key",
    ),
    (
        "space value invalid",
        {"search_space": {"train.noise.batch_sigma": {"type": "choice", "values": [0, -1]}}},
        [],
        "search_space.train.noise.batch_sigma: value -1 is invalid",
    ),
    (
        "loguniform low 0",
        {"search_space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}},
        [],
        "search_space.train.lr.low: loguniform needs low > 0",
    ),
    ("grid of a range", {"search.algorithm": "grid"}, [], "search_space.train.lr: grid search needs 'choice' entries"),
    (
        "when unknown",
        {"search_space": {"train.lr": {"type": "uniform", "low": 0.1, "high": 1, "when": {"train.x": 1}}}},
        [],
        "search_space.train.lr.when.train.x: must name an earlier",
    ),
    *(
        (
            f"enqueued base outside a choice{dry}",
            {"search.enqueue_base": True, "search_space": {"train.queue_size": {"type": "choice", "values": [0, 256]}}},
            extra,
            "search_space.train.queue_size: the base value 128 (base.train.queue_size) is not one of the choices "
            "[0, 256]",
        )
        for dry, extra in (("", []), (" (dry run)", ["--dry-run"]))
    ),
    (  # a grid sets every axis, a conditional one too: the base is one of its cells
        "enqueued base outside a grid's conditional choice",
        {
            "search": {"algorithm": "grid", "enqueue_base": True},
            "search_space": {
                "train.noise.batch_sigma": {"type": "choice", "values": [0.0, 1.0]},
                "train.noise.queue_sigma": {
                    "type": "choice",
                    "values": [0.5, 1.0],
                    "when": {"train.noise.batch_sigma": 1.0},
                },
            },
        },
        ["--dry-run"],
        "search_space.train.noise.queue_sigma: the base value 0.0 (base.train.noise.queue_sigma) is not one of the "
        "choices [0.5, 1.0]",
    ),
    (
        "enqueued base seed outside a grid's repeats",
        {
            "search": {"algorithm": "grid", "repeats": 2, "enqueue_base": True},
            "search_space": {"train.noise.batch_sigma": {"type": "choice", "values": [0.0, 1.0]}},
            "base.train.seed": 5,
        },
        ["--dry-run"],
        "base.train.seed: 5 is not one of the grid's values [0, 1] (search.repeats: 2)",
    ),
    ("reduction factor", {"scheduler.reduction_factor": 1}, [], "scheduler.reduction_factor: must be > 1"),
    ("bad name", {"name": "a/b"}, [], "name: needs a folder-safe study name"),
    ("set epochs 0", {}, ["--set", "base.train.epochs=0"], "base.train.epochs: must be >= 1"),
    ("set malformed", {}, ["--set", "base.train.epochs"], "--set base.train.epochs: expected KEY=VALUE"),
    ("missing data path", {"base.data.train": "/nonexistent/cache"}, [], "/nonexistent/cache: not a feature cache"),
    ("gallery without LAT", lambda p: gallery_csv(p, "LATITUDE,LON\n1,2\n"), [], "gallery.csv: missing column LAT"),
    (
        "gallery latitude 91",
        lambda p: gallery_csv(p, "LAT,LON\n1,2\n91,3\n"),
        [],
        "gallery.csv: line 3: invalid coordinate (LAT=91",
    ),
    (
        "gallery NaN longitude",
        lambda p: gallery_csv(p, "LAT,LON\n1,2\n3,nan\n"),
        [],
        "gallery.csv: line 3: invalid coordinate",
    ),
    ("gallery empty", lambda p: gallery_csv(p, ""), [], "gallery.csv: not a readable CSV"),
    (
        "cache manifest mismatch",
        lambda p: {"base.data.train": small_cache(p, "a", 8), "base.data.val": [small_cache(p, "b", 16)]},
        [],
        "feature_dim 16 differs from the training cache's 8",
    ),
    (
        "sampler lists longer than the data",
        {"base.train.batches": {"type": "gps_neighbours", "range": 2000}},
        [],
        "base.train.batches.range: lists of 2000 neighbours need more training images than that",
    ),
    (
        "mined negatives beyond the earth",
        {"base.train.negatives": {"mined": 4, "near_k": 8, "min_km": 25000}},
        [],
        "base.train.negatives.min_km: 25000 km with near_k 8",
    ),
    ("resume nothing", {}, ["--resume"], "--resume:"),
    ("missing study file", None, [], "nope.yaml: file not found"),
]


@pytest.mark.parametrize("case,changes,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path, offline_root_session, capsys, case, changes, extra, expected
):
    study = copy.deepcopy(TINY_STUDY)
    study_file = tmp_path / "nope.yaml"
    if changes is not None:
        changes = changes(tmp_path) if callable(changes) else changes
        for key, value in changes.items():
            node = study
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        if "search_space" in changes and case != "grid of a range":
            study["search_space"] = changes["search_space"]
        study_file = write_study(tmp_path / "study.yaml", study, offline_root_session)
    storage = tmp_path / "storage"
    assert tune_main.main([str(study_file), "--storage", str(storage), "--no-analysis", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not storage.exists()


def test_unwritable_storage(tmp_path, offline_root_session, capsys):
    (tmp_path / "afile").write_text("")
    study_file = write_study(tmp_path / "study.yaml", TINY_STUDY, offline_root_session)
    assert tune_main.main([str(study_file), "--storage", str(tmp_path / "afile" / "sub")]) == 2
    assert "storage:" in capsys.readouterr().err


def test_existing_study_is_not_overwritten(tmp_path, offline_root_session, capsys):
    study_file = write_study(tmp_path / "study.yaml", TINY_STUDY, offline_root_session)
    existing = tmp_path / "storage" / "tiny"
    existing.mkdir(parents=True)
    StudyFolder(existing).optuna_db.write_text("")
    assert tune_main.main([str(study_file), "--storage", str(tmp_path / "storage")]) == 2
    assert "already holds a study; use --resume" in capsys.readouterr().err
    assert sorted(p.name for p in existing.iterdir()) == [StudyFolder.OPTUNA_DB]


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has(tmp_path, offline_root_session):
    from .studyutil import tune_main as run

    study = copy.deepcopy(TINY_STUDY)
    study["base"]["train"]["device"] = "auto"  # a cpu trial asking for a GPU is refused earlier (test_gpu_path.py)
    study["resources"] = {"cpu": 1, "gpu": 1}
    proc = run(
        write_study(tmp_path / "study.yaml", study, offline_root_session),
        "--storage",
        tmp_path / "storage",
        timeout=180,
    )
    assert proc.returncode == 2 and "resources.gpu: a trial asks for 1 GPU, the cluster has 0" in proc.stderr
    assert not (tmp_path / "storage").exists()
