"""The offline benchmark (geoloc/data/synthetic.py) built by several processes at once: the trials of a
study, or two studies, starting on a fresh cache root."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from geoloc.data.config import OfflineBenchmarkConfig
from geoloc.data.synthetic import benchmark_dir, build_offline_benchmark

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"n_train": 1500, "n_val": 200, "n_gallery": 1500, "feature_dim": 64, "views": 2}

# Each process says it is ready, waits for the go file, then builds: both build at the same moment.
BUILDER = f"""
import sys, time
from pathlib import Path
from geoloc.data.config import OfflineBenchmarkConfig
from geoloc.data.synthetic import build_offline_benchmark
root, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
cfg = OfflineBenchmarkConfig(root=root, **{SIZES!r})
ready.touch()
while not go.exists():
    time.sleep(0.001)
print(build_offline_benchmark(cfg, progress=True))
"""


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_processes_building_one_benchmark_both_succeed_and_it_is_built_once(tmp_path):
    root = tmp_path / "offline"
    go = tmp_path / "go"
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-c", BUILDER, str(root), str(tmp_path / f"ready{i}"), str(go)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]

    cfg = OfflineBenchmarkConfig(root=str(root), **SIZES)
    final = benchmark_dir(cfg)
    assert [out.strip() for out, _ in outputs] == [str(final)] * 2
    building = [line for _, err in outputs for line in err.splitlines() if line.startswith("building")]
    assert building == [f"building the offline benchmark in {final} (once)"], [err for _, err in outputs]
    # Nothing but the benchmark is left (and the lock it was built under); a third call builds nothing.
    assert sorted(p.name for p in root.iterdir()) == sorted([final.name, f"{final.name}.lock"])
    assert (final / "DONE").exists()
    before = digest(final)
    assert build_offline_benchmark(cfg) == final and digest(final) == before

    # The same arrays as a build by one process alone (the manifests differ only in the root they name).
    alone = build_offline_benchmark(OfflineBenchmarkConfig(root=str(tmp_path / "alone"), **SIZES))
    arrays = {name: h for name, h in before.items() if not name.endswith("manifest.json")}
    assert {name: h for name, h in digest(alone).items() if not name.endswith("manifest.json")} == arrays
