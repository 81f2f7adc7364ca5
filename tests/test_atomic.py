"""Atomic writes (geoloc/common/atomic.py): every module that replaces a file another process reads goes
through its one helper, so a failed or concurrent write never leaves half a file or a stray temporary,
and the bytes are those the writer would have written to the file itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc.common.atomic import read_json, write_json
from geoloc.data.derived import cached_array
from geoloc.data.shards import _write_shard
from geoloc.parts.resumable import Resumable

ROOT = Path(__file__).resolve().parents[1]


class _State(Resumable):
    def __init__(self, state: dict):
        self.state, self.epoch = state, state["epoch"]

    def state_dict(self) -> dict:
        return self.state


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (lock files aside) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def unpicklable():
    return lambda: None  # pickle refuses a lambda: the writer fails after it has opened its file


def test_a_checkpoint_has_the_bytes_torch_writes_to_the_file_itself(tmp_path):
    state = {"epoch": 3, "w": torch.arange(12.0).reshape(3, 4), "rng": torch.Generator().manual_seed(1).get_state()}
    _State(state).save(tmp_path / "checkpoint.pt")
    (tmp_path / "direct").mkdir()
    torch.save(state, tmp_path / "direct" / "checkpoint.pt")
    assert (tmp_path / "checkpoint.pt").read_bytes() == (tmp_path / "direct" / "checkpoint.pt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "direct"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    # A checkpoint: the previous one stays, byte for byte, and nothing is left beside it.
    (tmp_path / "ckpt").mkdir()
    _State({"epoch": 1, "w": torch.ones(2)}).save(tmp_path / "ckpt" / "checkpoint.pt")
    before = listing(tmp_path)
    with pytest.raises(Exception):  # noqa: B017 (pickle's error type differs by Python version)
        _State({"epoch": 2, "w": torch.ones(2), "bad": unpicklable()}).save(tmp_path / "ckpt" / "checkpoint.pt")
    assert listing(tmp_path) == before

    # A derived array whose build fails: no file, no temporary; the next call builds it.
    cache = tmp_path / "cache"
    cache.mkdir()

    def failing() -> np.ndarray:
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        cached_array(cache, "near", "k", failing)
    assert listing(cache) == {}
    assert cached_array(cache, "near", "k", lambda: np.arange(3)).tolist() == [0, 1, 2]

    # A shard whose features cannot be written: neither its features nor its record.
    work = tmp_path / "partial"
    work.mkdir()
    with pytest.raises(Exception):  # noqa: B017
        _write_shard(work, 0, np.array([unpicklable()], dtype=object), [])
    assert listing(work) == {}


WRITER = """
import sys
from geoloc.common.atomic import write_json
path, who = sys.argv[1], int(sys.argv[2])
for k in range(400):
    write_json(path, {"writer": who, "k": k, "pad": "x" * 4096})
"""


def test_two_processes_rewriting_one_file_both_succeed_and_it_always_parses(tmp_path):
    """Two writers of one file (status.json has two, who take turns; a shared derived file has many):
    each write is whole, neither fails, and no temporary is left."""
    path = tmp_path / "status.json"
    write_json(path, {"writer": -1})
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(who)], cwd=ROOT, stderr=subprocess.PIPE)
        for who in (0, 1)
    ]
    while any(p.poll() is None for p in procs):
        assert read_json(path) is not None, "a reader saw half a file"
    errors = [p.stderr.read().decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert read_json(path)["k"] == 399
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


# Renames that move a file aside rather than publish a new one (a damaged database's sidecar files).
MOVES = {("geoloc/tuning/recovery.py", 'os.replace(f"{db}{suffix}", f"{aside}{suffix}")')}


def test_the_write_then_rename_idiom_exists_once():
    """Only geoloc/common/atomic.py renames a finished temporary into place."""
    idiom = re.compile(r"os\.replace\(|os\.rename\(|\.rename\(")
    found = {
        (str(path.relative_to(ROOT)), line.strip())
        for path in sorted((ROOT / "geoloc").rglob("*.py"))
        if path.name != "atomic.py" or path.parent.name != "common"
        for line in path.read_text().splitlines()
        if idiom.search(line)
    }
    assert found - MOVES == set()


def test_json_bytes_are_unchanged(tmp_path):
    write_json(tmp_path / "a.json", {"b": [1, 2.5], "p": tmp_path})
    expected = json.dumps({"b": [1, 2.5], "p": str(tmp_path)}, indent=1).encode()
    assert (tmp_path / "a.json").read_bytes() == expected
