"""analysis/pareto.py: a planted Pareto study (objective max acc_1km, max acc_2500km; 4 epochs under
ASHA) whose front and hypervolume history are known by hand.

Trials in number order (status, epochs run; values at their last epoch), each with an epoch-0 row
(eval.at_start) better than anything trained, which must count neither as a point nor as an epoch:

    #0 finished 4  (0.10, 0.50)   dominated by #7
    #1 stopped  1  (0.90, 0.95)   great early values, but stopped: never compared
    #2 finished 4  (0.20, 0.40)   front
    #3 stopped  2  (0.50, 0.90)   stopped: never compared
    #4 finished 4  (0.05, 0.45)   dominated by #0 and #7
    #5 finished 4  (0.30, 0.20)   front
    #6 errored  1  (0.95, 0.95)   not counted
    #7 finished 4  (0.15, 0.60)   front
    #8 running  0  (epoch 0 only) not counted, no epoch spent

Both objectives are accuracies (fractions), so the reference point is (0, 0) and the hypervolume of
a set is the area of the union of the rectangles [0, acc_1km] x [0, acc_2500km]:

    k  trial  epochs_spent  full-budget trials so far   hypervolume
    1  #0      4            #0                          0.10 * 0.50                                  = 0.05
    2  #1      5            #0                                                                       = 0.05
    3  #2      9            #0 #2                       0.05 + 0.20 * 0.40 - 0.10 * 0.40 (overlap)  = 0.09
    4  #3     11            #0 #2                                                                    = 0.09
    5  #4     15            #0 #2 #4 (#4 dominated)                                                  = 0.09
    6  #5     19            + #5: steps 0-0.10 x 0.50, 0.10-0.20 x 0.40, 0.20-0.30 x 0.20             = 0.11
    7  #6     20            (errored)                                                                = 0.11
    8  #7     24            + #7: steps 0-0.15 x 0.60, 0.15-0.20 x 0.40, 0.20-0.30 x 0.20 (#0 gone)   = 0.13
    9  #8     24            (running, epoch 0 only)                                                  = 0.13
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import analyse, read_study
from analysis.pareto import front, reference_point, usable
from geoloc.study.folders import Status, StatusRecord, StudyFolder, TrialFolder
from geoloc.study.sections import ObjectiveConfig
from geoloc.tasks.geoclip.metrics import geoclip_registry

PNG = b"\x89PNG\r\n\x1a\n"
LR = "train.lr"
EPOCHS = 4
# number: (status, epochs run, (acc_1km, acc_2500km) at the last epoch, val_loss there)
TRIALS = {
    0: (Status.FINISHED, 4, (0.10, 0.50), 3.0),
    1: (Status.STOPPED, 1, (0.90, 0.95), 1.0),
    2: (Status.FINISHED, 4, (0.20, 0.40), 3.2),
    3: (Status.STOPPED, 2, (0.50, 0.90), 1.0),
    4: (Status.FINISHED, 4, (0.05, 0.45), 2.0),
    5: (Status.FINISHED, 4, (0.30, 0.20), 3.1),
    6: (Status.ERRORED, 1, (0.95, 0.95), 1.0),
    7: (Status.FINISHED, 4, (0.15, 0.60), 2.9),
    8: (Status.RUNNING, 0, None, None),
}
FRONT = [5, 2, 7]  # best acc_1km first
HISTORY = pd.DataFrame(
    {
        "k": range(1, 10),
        "number": range(9),
        "epochs_spent": [4, 5, 9, 11, 15, 19, 20, 24, 24],
        "hypervolume": [0.05, 0.05, 0.09, 0.09, 0.09, 0.11, 0.11, 0.13, 0.13],
    }
)


def metrics(epoch: int, acc1: float, acc2500: float, val_loss: float) -> dict:
    row = {"epoch": epoch, "train_loss": val_loss + 0.5, "val_loss": val_loss, "acc_1km": acc1, "acc_2500km": acc2500}
    return {**row, "median_km": 500.0, "score": (acc1 + acc2500) / 2}


def build(root, objective: dict | None) -> StudyFolder:
    """The planted study; ``objective`` as study.yaml records it (None: an older folder without one)."""
    root.mkdir(parents=True)
    pareto = bool(objective) and objective["type"] == "pareto"  # a study file refuses ASHA for a pareto objective
    spec = {
        "name": "front",
        "base": {"train": {"epochs": EPOCHS}},
        "scheduler": {"type": "moasha" if pareto else "asha"},
    }
    StudyFolder(root).write_study(yaml.safe_dump({**spec, **({"objective": objective} if objective else {})}))
    geoclip_registry([1, 2500], ["val"]).save(root / StudyFolder.REGISTRY)
    for number, (status, ran, last, val_loss) in TRIALS.items():
        trial = TrialFolder(root / f"trial_{number}")
        trial.path.mkdir()
        trial.write_trial(f"t{number}", number, {LR: 1e-4 * (number + 1)})
        start = metrics(0, 0.99, 0.99, 0.01)  # better than anything trained
        trial.append_metrics({k: v for k, v in start.items() if k != "train_loss"})
        for epoch in range(1, ran + 1):  # earlier epochs 0.01 worse; the last one holds the planted values
            back = 0.01 * (ran - epoch)
            trial.append_metrics(metrics(epoch, last[0] - back, last[1] - back, val_loss + back))
        trial.write_status(StatusRecord(status, ran, EPOCHS))
    return StudyFolder(root)


PARETO = {"type": "pareto", "metrics": ["acc_1km", "acc_2500km"]}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = build(tmp_path_factory.mktemp("pareto") / "study", PARETO).path
    return root, analyse(root, formats=("csv", "md"), echo_warnings=False)


def test_pareto_set_lists_the_full_budget_trials_no_other_beats(planted):
    root, result = planted
    table = pd.read_csv(root / "analysis" / "pareto_set.csv")
    assert list(table["number"]) == FRONT  # never #1 or #3, stopped early with better values
    assert list(table.columns) == ["number", "trial_id", "acc_1km", "acc_2500km", LR]
    assert table.set_index("number").loc[7, ["acc_1km", "acc_2500km"]].tolist() == pytest.approx([0.15, 0.60])
    assert table.set_index("number").loc[2, LR] == pytest.approx(3e-4)
    assert result["objective"]["front"] == [f"t{n}" for n in FRONT]
    md = (root / "analysis" / "pareto_set.md").read_text()
    assert "among the 5 trials that ran the full 4 epochs" in md and "| 30.00 " in md  # fractions in %
    study_front, warnings = front(read_study(root))
    assert sorted(study_front.trials["number"]) == [0, 2, 4, 5, 7] and not warnings


def test_hypervolume_history_counts_every_trials_epochs(planted):
    root, result = planted
    history = pd.read_csv(root / "analysis" / "hypervolume.csv")
    pd.testing.assert_frame_equal(history, HISTORY, check_exact=False, atol=1e-12)
    assert result["objective"]["reference"] == [0.0, 0.0]
    assert result["objective"]["hypervolume"] == pytest.approx(0.13)
    assert result["objective"]["epochs_spent"] == 24


def test_front_plots_and_report_line(planted):
    root, result = planted
    out = root / "analysis"
    for name in ("pareto_front", "hypervolume"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG and result["plots"][name] == str(out / f"{name}.png")
    report = (out / "report.md").read_text()
    assert (
        "**Pareto objective (max acc_1km, max acc_2500km):** 3 of the 5 trials that ran the full 4 epochs are on "
        "the front (#5, #2, #7); hypervolume 0.13 (reference point 0, 0) after 24 epochs spent by 9 trials."
    ) in report
    assert "## Pareto objective" in report and "](pareto_front.png)" in report and "](hypervolume.png)" in report


def test_three_objectives_give_a_table_and_no_scatter(tmp_path):
    """With min val_loss: #4 (the lowest, 2.0) joins the front; #0 is still beaten by #7 (2.9 < 3.0).
    val_loss is no fraction, so its reference is the worst among the full-budget trials: 3.2."""
    objective = {"type": "pareto", "metrics": ["acc_1km", "acc_2500km", "val_loss"]}
    root = build(tmp_path / "study", objective).path
    result = analyse(root, tmp_path / "out", formats=("csv",), echo_warnings=False)
    assert sorted(pd.read_csv(tmp_path / "out" / "pareto_set.csv")["number"]) == [2, 4, 5, 7]
    assert result["objective"]["reference"] == [0.0, 0.0, 3.2]
    assert not (tmp_path / "out" / "pareto_front.png").exists() and (tmp_path / "out" / "hypervolume.png").exists()


@pytest.mark.parametrize("objective", [{"type": "score", "metrics": []}, None])
def test_a_score_study_gains_no_pareto_output(tmp_path, objective):
    root = build(tmp_path / "study", objective).path
    result = analyse(root, tmp_path / "out", formats=("csv", "md"), echo_warnings=False)
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert not {n for n in written if n.startswith(("pareto_set", "pareto_front", "hypervolume"))}
    assert result["objective"] == {"type": "score"}
    assert "Pareto objective" not in (tmp_path / "out" / "report.md").read_text()


def test_reference_point_rule():
    registry = geoclip_registry([1, 2500], ["val"])
    values = np.array([[0.1, 3.0, 500.0], [0.2, 2.5, np.nan], [0.3, np.nan, 700.0]])
    # acc_1km: a fraction, maximised: 0; val_loss and median_km: minimised, the worst (largest) observed.
    assert reference_point(registry, ["acc_1km", "val_loss", "median_km"], values).tolist() == [0.0, 3.0, 700.0]
    with pytest.raises(ValueError, match="no direction"):
        reference_point(registry, ["encoder_resolution_km"], [[10.0]])


def test_unusable_objective_metrics_are_warned_and_left_out(tmp_path):
    """The study file names metrics of the registry its base implies (thresholds 1, 9, 2500 km);
    the folder's metrics.json lacks acc_9km, and no trial reported mean_km."""
    root = build(tmp_path / "study", {"type": "pareto", "metrics": ["acc_1km", "acc_9km", "mean_km"]}).path
    spec = yaml.safe_load((root / StudyFolder.STUDY).read_text())
    spec["base"]["eval"] = {"thresholds_km": [1, 9, 2500], "score_weights": [1, 1, 1]}
    StudyFolder(root).write_study(yaml.safe_dump(spec))
    found, warnings = front(read_study(root))
    assert found.objective.metrics == ["acc_1km"] and found.objective.maximise == [True]
    assert len(warnings) == 1 and "acc_9km, mean_km left out" in warnings[0]
    assert list(found.pareto_set()["number"]) == [5]
    # A metric without a direction (which a study file refuses) is left out the same way.
    goal = ObjectiveConfig(type="pareto", metrics=["acc_1km", "ceiling_1km"])
    objective, warnings = usable(goal, geoclip_registry([1, 2500], ["val"]), ["acc_1km", "ceiling_1km"])
    assert objective.metrics == ["acc_1km"] and "ceiling_1km left out" in warnings[0]
