"""The launcher's commands that need no training answer without loading torch, Ray or pandas: ``status``,
``--help``, ``--dry-run`` and bad input. Each runs in a fresh interpreter, which then lists the heavy
packages it holds (``sys.modules``): an import of torch at the top of any module on their path shows here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from .studyutil import ROOT

HEAVY = ("torch", "ray", "pandas", "matplotlib", "optuna")

RUNNER = """
import contextlib, io, json, sys
import tune_main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        code = tune_main.main(sys.argv[1:])
    except SystemExit as e:  # argparse's --help
        code = e.code
print(json.dumps({"code": code, "out": out.getvalue(), "heavy": [m for m in %r if m in sys.modules]}))
"""


def run_launcher(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER % (HEAVY,), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture
def planted_study(tmp_path):
    """A study folder as a launcher leaves it when killed: ``study.yaml`` and one finished trial of four epochs."""
    study_dir = tmp_path / "quickstart"
    trial = study_dir / "trial_abc_00000"
    trial.mkdir(parents=True)
    shutil.copy(ROOT / "studies" / "quickstart.yaml", study_dir / "study.yaml")
    (trial / "trial.json").write_text(json.dumps({"trial_id": "abc_00000", "number": 0, "params": {"train.lr": 1e-3}}))
    (trial / "status.json").write_text(json.dumps({"status": "finished", "epochs": 4, "max_epochs": 4}))
    rows = [{"epoch": e, "score": e / 10} for e in (1, 2, 3, 4)]
    (trial / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return study_dir


def test_status_loads_neither_torch_nor_ray(planted_study):
    got = run_launcher("status", planted_study)
    assert got["code"] == 1, got["out"]  # no launcher holds it and trials are left: interrupted
    assert "trial_abc_00000" in got["out"] and "max score = 0.4000" in got["out"]
    assert got["heavy"] == []


@pytest.mark.parametrize(
    "args, code",
    [
        (("status", "/nonexistent/study"), 2),
        (("--help",), 0),
        (("studies/quickstart.yaml", "--dry-run"), 0),
        (("studies/quickstart.yaml", "--set", "base.train.epochs=x"), 2),
    ],
)
def test_help_dry_run_and_bad_input_load_neither_torch_nor_ray(args, code):
    got = run_launcher(*args)
    assert got["code"] == code, got["out"]
    assert got["heavy"] == []
