"""The dashboards a study names for its user, served for real: optuna-dashboard on the study's
``optuna.db`` shows its trials and its objectives by their metric names, not "Objective 0"."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .studyutil import TINY_STUDY, free_ports, optuna_trials, write_study
from .studyutil import tune_main as run_tune_main

pytestmark = pytest.mark.slow

PARETO = {
    "objective": {"type": "pareto", "metrics": ["acc_1km", "val_loss"]},
    "scheduler": {"type": "moasha", "grace_period": 1, "reduction_factor": 2},
}


def serve_dashboard(db: Path):
    """optuna-dashboard on ``db`` at a free port, and a GET of its JSON API once it answers."""
    (port,) = free_ports(1)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), f"sqlite:///{db}", "--port", str(port)]
        + ["--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return json.loads(r.read())

    deadline = time.time() + 60
    while True:
        try:
            get("/api/meta")
            return server, get
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise AssertionError("optuna-dashboard did not answer") from None
            time.sleep(0.5)


@pytest.mark.parametrize("objective", ["score", "pareto"])
def test_optuna_dashboard_serves_the_trials_and_the_metric_names(tmp_path, offline_root_session, shared_ray, objective):
    study = copy.deepcopy(TINY_STUDY)
    study["search"]["num_samples"] = 3
    study["base"]["train"]["epochs"] = 2
    if objective == "pareto":
        study.update(copy.deepcopy(PARETO))
    study_file = write_study(tmp_path / "s.yaml", study, offline_root_session)
    joined = ("--address", shared_ray.address)
    proc = run_tune_main(study_file, "--storage", tmp_path / "r", "--no-analysis", *joined, env=shared_ray.env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study_dir = tmp_path / "r" / "tiny"
    expected = {t.number: (t.state.name, t.values) for t in optuna_trials(study_dir)}
    assert len(expected) == 3

    server, get = serve_dashboard(study_dir / "optuna.db")
    try:
        (summary,) = get("/api/studies")["study_summaries"]
        assert summary["study_name"] == "tiny"
        detail = get(f"/api/studies/{summary['study_id']}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    names = ["score"] if objective == "score" else ["acc_1km", "val_loss"]
    assert detail["objective_names"] == names
    assert detail["directions"] == (["maximize"] if objective == "score" else ["maximize", "minimize"])
    served = {t["number"]: t for t in detail["trials"]}
    assert sorted(served) == sorted(expected)
    for number, (state, values) in expected.items():
        assert served[number]["state"].lower() == state.lower()
        if values is not None:
            assert [float(v) for v in served[number]["values"]] == pytest.approx(values)
    assert {p["name"] for p in detail["union_search_space"]} == {"train.lr", "train.noise.batch_sigma"}
