"""Refactoring must not change results: a random-search and a grid study give, trial by trial and
epoch by epoch, the metrics recorded before the consolidation of issue 11, to the last digit.

The figures in ``data/figures_before_consolidation.json`` were first recorded at commit c087fca
(before the change) on an AMD EPYC, by running this module as a script from that checkout:

    python -m tests.test_figures_unchanged --record tests/data/figures_before_consolidation.json

The machines became Intel Xeons with AVX-512, on which MKL's sums differ in their last digits (no
``MKL_CBWR`` or ``ATEN_CPU_CAPABILITY`` setting gave the old ones back), so they were recorded again
at commit 5379d18, the code before the task seam, on such a machine; the same parameters, the same
final scores, some epochs' accuracies one image apart. Re-record only when an issue asks for a change
of results or the machines change, from the commit before the change, and say so in the closing note.
The random study runs here; the grid study runs as a job on a two-node cluster in
``tests/test_cluster.py``, which compares it with the same figures (one run of each keeps the
suite's time down).
The same study files and seeds are also what makes two runs of a study agree (determinism).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import pytest

from geoloc.study.folders import StudyFolder

from .studyutil import TINY_STUDY, tune_main, write_study

FIGURES = Path(__file__).parent / "data" / "figures_before_consolidation.json"
NOT_FIGURES = {"train_s", "eval_s", "node", "node_id"}  # wall times and host names differ by run


def studies() -> dict[str, dict]:
    """The two studies, by name: random search over a float and a choice; a grid with repeated seeds."""
    random = copy.deepcopy(TINY_STUDY)
    random["name"] = "random"
    random["search"] = {"algorithm": "random", "num_samples": 3, "max_concurrent": 2}
    random["scheduler"] = {"type": "none"}
    random["base"]["train"]["epochs"] = 2
    grid = copy.deepcopy(random)
    grid["name"] = "grid"
    grid["search"] = {"algorithm": "grid", "repeats": 2, "max_concurrent": 2}
    grid["search_space"] = {"train.noise.batch_sigma": {"type": "choice", "values": [0.0, 1.0]}}
    return {"random": random, "grid": grid}


def as_recorded(rows: list[dict], recorded: list[dict]) -> list[dict]:
    """The rows cut to the recorded keys: every recorded metric must be there, to the last digit;
    metrics added since the recording (``encoder_resolution_km``) are left out."""
    assert len(rows) == len(recorded)
    return [{k: row[k] for k in old if k in row} for row, old in zip(rows, recorded, strict=True)]


def run_and_read(name: str, study: dict, workdir: Path, offline_root: str, *extra, env: dict | None = None) -> dict:
    """Run one study through tune_main.py (``extra``: more of its arguments); {trial number: {"params",
    "metrics" per epoch}}."""
    workdir.mkdir(parents=True, exist_ok=True)
    study_file = write_study(workdir / f"{name}.yaml", study, offline_root)
    proc = tune_main(study_file, "--storage", workdir / "results", "--no-analysis", *extra, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = {}
    for trial in StudyFolder(workdir / "results" / name).trials():
        meta = trial.read_trial()
        rows = [{k: v for k, v in row.items() if k not in NOT_FIGURES} for row in trial.read_metrics().rows]
        out[str(meta["number"])] = {"params": meta["params"], "metrics": rows}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["random"])  # the grid study's figures: tests/test_cluster.py runs it as a Ray job
def test_study_gives_the_figures_recorded_before_the_change(name, tmp_path, offline_root_session, shared_ray):
    recorded = json.loads(FIGURES.read_text())[name]
    now = run_and_read(
        name, studies()[name], tmp_path, offline_root_session, "--address", shared_ray.address, env=shared_ray.env
    )
    assert sorted(now) == sorted(recorded) and len(now) == (3 if name == "random" else 4)
    for number, trial in recorded.items():
        assert now[number]["params"] == trial["params"], f"trial {number}: other parameters"
        assert len(now[number]["metrics"]) == 2
        assert as_recorded(now[number]["metrics"], trial["metrics"]) == trial["metrics"], (
            f"trial {number}: other metrics"
        )


def record(path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        figures = {
            name: run_and_read(name, study, Path(tmp) / name, str(Path(tmp) / "offline"))
            for name, study in studies().items()
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    print(f"recorded {sum(len(v) for v in figures.values())} trials into {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, required=True, help="where to write the figures")
    record(parser.parse_args().record)
    sys.exit(0)
