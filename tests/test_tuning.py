"""The study harness with a real local Ray instance, a real Optuna SQLite storage and real event files."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

import tune_main as tune_main_module
from geoloc.study.folders import Status, StatusRecord, StudyFolder, TrialFolder
from geoloc.study.studyfile import load_study_file, num_trials
from geoloc.tuning.searcher import OptunaStudySearcher

from .studyutil import ROOT, TINY_STUDY, read_metrics, read_status, trial_dirs, tune_main, write_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, offline_root_session):
    base = tmp_path_factory.mktemp("tiny")
    study_file = write_study(base / "tiny.yaml", TINY_STUDY, offline_root_session)
    # The address file of a `ray start` whose cluster is gone, where Ray looks for it (its temp dir follows
    # TMPDIR; a short one, for Ray's socket paths): the launcher still starts its own instance.
    tmp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    (tmp / "ray").mkdir()
    (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
    proc = tune_main(study_file, "--storage", base / "results", "--no-analysis", env={"TMPDIR": str(tmp)}, timeout=300)
    shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base / "results" / "tiny", proc


def test_every_trial_ran_with_records_in_ray_optuna_and_tensorboard(tiny_study):
    study_dir, proc = tiny_study
    trials = trial_dirs(study_dir)
    assert len(trials) == TINY_STUDY["search"]["num_samples"]
    statuses = {t.name: read_status(t) for t in trials}
    assert any(s.status is Status.STOPPED and s.epochs < 3 for s in statuses.values()), statuses
    assert any(s.status is Status.FINISHED and s.epochs == 3 for s in statuses.values()), statuses

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ostudy = optuna.load_study(study_name="tiny", storage=StudyFolder(study_dir).optuna_url)
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in ostudy.trials}
    assert len(ostudy.trials) == len(trials)
    for trial in trials:
        status, metrics = statuses[trial.name], read_metrics(trial)
        assert [m["epoch"] for m in metrics] == list(range(1, status.epochs + 1))
        assert list(trial.glob("checkpoint_*")), f"{trial.name} has no Ray checkpoint"
        ot = by_ray_id[trial.name.removeprefix("trial_")]
        expected_state = {Status.FINISHED: "COMPLETE", Status.STOPPED: "PRUNED"}[status.status]
        assert ot.state.name == expected_state
        assert ot.intermediate_values == {m["epoch"]: pytest.approx(m["score"]) for m in metrics}
        if expected_state == "COMPLETE":
            assert ot.value == pytest.approx(metrics[-1]["score"])

        events = EventAccumulator(str(TrialFolder(trial).events_dir()))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {
            "train/loss",
            "val/loss",
            "val/acc_1km",
            "val/acc_2500km",
            "val/median_km",
            "val/score",
            "temperature",
            "lr",
        } <= tags
        assert [e.step for e in events.Scalars("val/score")] == [m["epoch"] for m in metrics]
        from tensorboard.plugins.hparams import plugin_data_pb2

        hp = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["train.lr"].number_value == pytest.approx(ot.params["train.lr"])
        assert ("_hparams_/session_end_info" in hp) == (status.status is Status.FINISHED)
    assert "best trial:" in proc.stdout and "tensorboard --logdir" in proc.stdout


def test_tensorboard_names_each_run_by_its_trial_number_and_searched_values(tiny_study):
    """TensorBoard's run names (the event folders under the printed --logdir, as its multiplexer reads
    them) hold each trial's Optuna number and its values, so the run selector's filter finds them."""
    study_dir, _ = tiny_study
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ostudy = optuna.load_study(study_name="tiny", storage=StudyFolder(study_dir).optuna_url)
    expected = set()
    for trial in ostudy.trials:
        lr, sigma = trial.params["train.lr"], trial.params["train.noise.batch_sigma"]
        named = f"t{trial.number:04d} lr={lr:g} batch_sigma={sigma:g}"  # the search space's order
        expected.add(f"trial_{trial.user_attrs['ray_trial_id']}/{named}")
    runs = EventMultiplexer().AddRunsFromDirectory(str(study_dir)).Runs()
    assert set(runs) == expected


def test_same_study_and_seed_give_the_same_configurations(tmp_path):
    study_file = write_study(tmp_path / "s.yaml", TINY_STUDY, str(tmp_path))
    study = load_study_file(study_file)
    suggestions = []
    for run in range(2):
        searcher = OptunaStudySearcher(study, tmp_path / f"run{run}", f"sqlite:///{tmp_path / f'run{run}.db'}")
        suggestions.append([searcher.suggest(f"t{i}")["params"] for i in range(5)])
    assert suggestions[0] == suggestions[1]
    assert len({s["train.lr"] for s in suggestions[0]}) == 5
    other = study.model_copy(update={"seed": 1})
    searcher = OptunaStudySearcher(other, tmp_path / "other", f"sqlite:///{tmp_path / 'other.db'}")
    assert [searcher.suggest(f"t{i}")["params"] for i in range(5)] != suggestions[0]


def test_a_trial_that_ended_before_optuna_was_told_is_recorded_not_rerun(tmp_path):
    """The driver died between writing a trial's status.json and telling Optuna: on resume the
    searcher tells Optuna the recorded outcome and keeps the folder, instead of rerunning the trial."""
    study = load_study_file(write_study(tmp_path / "s.yaml", TINY_STUDY, str(tmp_path)))
    folder = StudyFolder(tmp_path / "study")
    searcher = OptunaStudySearcher(study, folder.path, f"sqlite:///{tmp_path / 'o.db'}")
    first = searcher.suggest("aaa")
    trial = folder.trial("aaa")
    trial.path.mkdir(parents=True)
    trial.write_trial("aaa", first["number"], first["params"])
    for epoch, score in ((1, 0.2), (2, 0.3), (3, 0.25)):
        trial.append_metrics({"epoch": epoch, "score": score})
    trial.write_status(StatusRecord(Status.FINISHED, 3, 3))

    resumed = OptunaStudySearcher(study, folder.path, f"sqlite:///{tmp_path / 'o.db'}")  # live trials forgotten
    second = resumed.suggest("bbb")
    recorded = resumed.optuna.trials[first["number"]]
    assert recorded.state.name == "COMPLETE" and recorded.value == 0.25
    assert recorded.intermediate_values == {1: 0.2, 2: 0.3, 3: 0.25}
    assert second["number"] != first["number"] and trial.exists()
    assert not (folder.path / StudyFolder.ORPHANS).exists()


@pytest.mark.parametrize(
    "objective, scheduler",
    [
        ({}, {"type": "asha"}),
        ({"type": "pareto", "metrics": ["acc_1km", "acc_2500km"]}, {"type": "moasha"}),
    ],
)
def test_a_stopped_trial_is_recorded_as_stopped_by_the_scheduler_that_stopped_it(tmp_path, objective, scheduler):
    spec = {**TINY_STUDY, "objective": objective, "scheduler": scheduler}
    study = load_study_file(write_study(tmp_path / "s.yaml", spec, str(tmp_path)))
    folder = StudyFolder(tmp_path / "study")
    searcher = OptunaStudySearcher(study, folder.path, f"sqlite:///{tmp_path / 'o.db'}")
    trial = searcher.suggest("aaa")
    folder.trial("aaa").path.mkdir(parents=True)
    row = {"epoch": 1, "score": 0.2, "acc_1km": 0.01, "acc_2500km": 0.4}
    folder.trial("aaa").append_metrics(row)
    searcher.on_trial_result("aaa", row)
    searcher.on_trial_complete("aaa", row)  # after 1 of 3 epochs: the scheduler stopped it
    name = scheduler["type"].upper()
    record = folder.trial("aaa").read_status()
    assert record == StatusRecord(Status.STOPPED, 1, 3, stopped_by=name)
    assert record.describe() == f"stopped by {name} at epoch 1 of 3"
    assert searcher.optuna.trials[trial["number"]].state.name == "PRUNED"


@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_a_resumed_study_does_not_draw_its_first_parameters_again(tmp_path, algorithm):
    spec = {**TINY_STUDY, "search": {"algorithm": algorithm, "num_samples": 8, "max_concurrent": 2}}
    study = load_study_file(write_study(tmp_path / "s.yaml", spec, str(tmp_path)))
    url = f"sqlite:///{tmp_path / 'o.db'}"
    searcher = OptunaStudySearcher(study, tmp_path / "study", url)
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    for trial in first:
        searcher.optuna.tell(trial["number"], 0.1)  # ended, so none of them is taken up again on resume
    first = [trial["params"] for trial in first]
    fresh = OptunaStudySearcher(study, tmp_path / "again", f"sqlite:///{tmp_path / 'p.db'}")
    assert fresh.suggest("u0")["params"] == first[0]  # the same seed draws the same first trial
    resumed = OptunaStudySearcher(study, tmp_path / "study", url)  # as after a crash: same storage
    assert resumed.suggest("t3")["params"] not in first


@pytest.mark.parametrize("study", sorted(p.name for p in (ROOT / "studies").glob("*.yaml")))
def test_dry_run_of_every_shipped_study(study):
    proc = tune_main(ROOT / "studies" / study, "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "search space:" in proc.stdout and "trials:" in proc.stdout


def test_analysis_of_the_real_study_matches_the_trial_records(tiny_study, tmp_path):
    import numpy as np
    import pandas as pd
    from scipy.stats import spearmanr

    from analysis import analyse

    study_dir, _ = tiny_study
    summary = analyse(study_dir, tmp_path, echo_warnings=False)
    table = pd.read_csv(tmp_path / "trials.csv").set_index("trial_id")
    epoch = summary["epoch"]  # the equal budget every table compares at
    at_epoch = {}
    for trial in trial_dirs(study_dir):
        row, metrics, status = table.loc[trial.name.removeprefix("trial_")], read_metrics(trial), read_status(trial)
        assert row["status"] == status.status.value and row["epochs"] == len(metrics)
        assert row["final_score"] == pytest.approx(metrics[-1]["score"])
        assert row["best_score"] == pytest.approx(max(m["score"] for m in metrics))
        assert row["final_ceiling_1km"] == pytest.approx(metrics[-1]["ceiling_1km"])
        if len(metrics) >= epoch:
            at_epoch[trial.name] = {**metrics[epoch - 1], "sigma": row["train.noise.batch_sigma"]}
    assert summary["counts"]["total"] == len(trial_dirs(study_dir))
    assert summary["counts"]["compared"] == len(at_epoch) >= len(trial_dirs(study_dir)) / 2

    values = pd.DataFrame(at_epoch).T.drop(columns=["node", "node_id"]).astype(float)
    ablation = pd.read_csv(tmp_path / "ablation_train_noise_batch_sigma.csv").set_index("value")
    for sigma, cell in values.groupby("sigma"):
        assert ablation.loc[sigma, "n"] == len(cell)
        assert ablation.loc[sigma, "score_mean"] == pytest.approx(cell["score"].mean())
        assert ablation.loc[sigma, "acc_2500km_mean"] == pytest.approx(cell["acc_2500km"].mean())

    corr = pd.read_csv(tmp_path / "loss_vs_accuracy.csv").set_index(["epoch", "loss", "metric"])
    expected = spearmanr(values["val_loss"], values["acc_2500km"]).statistic
    assert corr.loc[(epoch, "val_loss", "acc_2500km"), "rho"] == pytest.approx(expected)

    pareto = pd.read_csv(tmp_path / "pareto.csv")
    on_front = set(pareto[pareto["front"] == "acc_1km_vs_acc_2500km"]["trial_id"])
    a1, a2 = values["acc_1km"].to_numpy(), values["acc_2500km"].to_numpy()
    dominated = [np.any((a1 >= a1[i]) & (a2 >= a2[i]) & ((a1 > a1[i]) | (a2 > a2[i]))) for i in range(len(values))]
    assert on_front == {name.removeprefix("trial_") for name, d in zip(values.index, dominated, strict=True) if not d}
    assert (tmp_path / "report.md").read_text().count(".png") >= 5


# A 2 x 2 grid with the base enqueued; the base (batch_sigma 0.0, queue_size 128) is one of its cells.
# The searcher hands out the base's cell first, then every other cell in grid order (the last axis
# fastest), each once: the grid's four cells, no more.
GRID_SPACE = {
    "train.noise.batch_sigma": {"type": "choice", "values": [0.0, 1.0]},
    "train.queue_size": {"type": "choice", "values": [0, 128]},
}
GRID_TRIALS = [
    {"train.noise.batch_sigma": 0.0, "train.queue_size": 128},
    {"train.noise.batch_sigma": 0.0, "train.queue_size": 0},
    {"train.noise.batch_sigma": 1.0, "train.queue_size": 0},
    {"train.noise.batch_sigma": 1.0, "train.queue_size": 128},
]


def grid_with_base(**search) -> dict:
    spec = copy.deepcopy(TINY_STUDY)
    spec["search_space"] = GRID_SPACE
    spec["search"] = {"algorithm": "grid", "enqueue_base": True, "max_concurrent": 2, **search}
    return spec


def test_a_grid_with_the_base_enqueued_hands_out_every_cell_once(tmp_path, capsys):
    study_file = write_study(tmp_path / "s.yaml", grid_with_base(), str(tmp_path))
    study = load_study_file(study_file)
    searcher = OptunaStudySearcher(study, tmp_path / "study", f"sqlite:///{tmp_path / 'o.db'}")
    handed = []
    while (suggestion := searcher.suggest(f"t{len(handed)}")) != OptunaStudySearcher.FINISHED:
        handed.append(suggestion)
        assert len(handed) <= 6, handed
    assert [s["params"] for s in handed] == GRID_TRIALS and [s["number"] for s in handed] == [0, 1, 2, 3]
    assert num_trials(study) == 4
    assert tune_main_module.main([str(study_file), "--dry-run"]) == 0
    assert "trials: 4 (grid), the base configuration's cell first," in capsys.readouterr().out

    # With repeats, the base's train.seed (0) picks its cell: (0.0, 128, seed 0) first, then the other seven.
    study = load_study_file(write_study(tmp_path / "r.yaml", grid_with_base(repeats=2), str(tmp_path)))
    searcher = OptunaStudySearcher(study, tmp_path / "repeats", f"sqlite:///{tmp_path / 'r.db'}")
    handed = [searcher.suggest(f"r{i}")["params"] for i in range(8)]
    assert searcher.suggest("r8") == OptunaStudySearcher.FINISHED and num_trials(study) == 8
    cells = [{**cell, "train.seed": seed} for cell in GRID_TRIALS for seed in (0, 1)]
    assert handed[0] == cells[0] and sorted(map(str, handed)) == sorted(map(str, cells))


def test_a_grid_study_with_the_base_enqueued_runs_every_cell_once_base_first(tmp_path, offline_root_session):
    spec = grid_with_base()
    spec["base"]["train"]["epochs"] = 1
    spec["scheduler"] = {"type": "none"}
    study_file = write_study(tmp_path / "s.yaml", spec, offline_root_session)
    proc = tune_main(study_file, "--storage", tmp_path / "results", "--no-analysis", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {t.read_trial()["number"]: t for t in StudyFolder(tmp_path / "results" / "tiny").trials()}
    assert sorted(runs) == [0, 1, 2, 3]
    assert [runs[n].read_trial()["params"] for n in sorted(runs)] == GRID_TRIALS
    assert all(runs[n].read_status().status is Status.FINISHED for n in runs)


# The launcher with ``analysis.analyse`` gone, as a broken or renamed analysis API leaves it: importing
# it raises ImportError ("cannot import name 'analyse'") after the study has run.
WITHOUT_ANALYSE = """
import sys
import analysis
del analysis.analyse
import tune_main
sys.exit(tune_main.main(sys.argv[1:]))
"""


def test_an_import_error_in_the_analysis_surfaces_after_the_study(tmp_path, offline_root_session):
    """The analysis is part of the launcher (the summary reads the study through it): an ImportError
    there is a bug to show, not a reason to skip the report and exit 0."""
    spec = copy.deepcopy(TINY_STUDY)
    spec["base"]["train"]["epochs"] = 1
    spec["search"] = {"algorithm": "random", "num_samples": 1, "max_concurrent": 1}
    spec["scheduler"] = {"type": "none"}
    study_file = write_study(tmp_path / "s.yaml", spec, offline_root_session)
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_ANALYSE, str(study_file), "--storage", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ImportError: cannot import name 'analyse' from 'analysis'" in proc.stderr, proc.stderr[-3000:]
    assert "best trial:" in proc.stdout and "report:" not in proc.stdout  # the study ran and was summarised
    assert [read_status(t).status for t in trial_dirs(tmp_path / "results" / "tiny")] == [Status.FINISHED]
