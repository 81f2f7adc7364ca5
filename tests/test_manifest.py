"""The study's manifest (geoloc/study/manifest.py): it names every file a real run read (seen by
Python's audit hook on "open", no mock), its hashes change when a cache changes, and the analysis
cites it and warns when a study's sessions differ."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import analyse, read_study
from geoloc.run.loop import train
from geoloc.study.folders import Status, StatusRecord, TrialFolder
from geoloc.study.manifest import (
    HASHES,
    MANIFEST,
    content_hash,
    describe,
    differences,
    file_record,
    read_manifest,
    record_session,
)
from geoloc.tasks import task_of

from .conftest import build

OPENED: list[str] | None = None  # the audit hook records opened paths while this is a list


def _audit(event: str, args) -> None:
    if OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only while OPENED is a list

TINY = {
    "data": {"offline": {"n_train": 400, "n_val": 60, "n_gallery": 300, "feature_dim": 32, "views": 1}},
    "model": {"hidden_dim": 32, "depth": 1, "embed_dim": 16, "image_hidden_dim": 32},
    "train": {"epochs": 1, "batch_size": 64, "queue_size": 64, "threads": 1},
    "eval": {"resolution_points": 0, "val_negatives": 64},
}


def test_the_manifest_names_every_file_a_run_read(offline_root, tmp_path):
    global OPENED
    cfg = build({**TINY, "data": {"offline": {**TINY["data"]["offline"], "root": offline_root}}})
    task = task_of(cfg)
    task.prepare(cfg)  # what the launcher does before any trial (builds the benchmark)
    OPENED = []
    try:
        train(cfg, tmp_path / "run")
    finally:
        opened, OPENED = OPENED, None
    data_root = Path(offline_root).resolve()
    read = {str(Path(p).resolve()) for p in opened if Path(p).resolve().is_relative_to(data_root)}
    read = {p for p in read if Path(p).is_file() and "derived" not in Path(p).parts}
    (tmp_path / "study").mkdir()
    manifest = record_session(tmp_path / "study", task.data_files(cfg))
    named = {r["path"] for r in manifest["sessions"][0]["data"]}
    assert read == named  # the two caches' manifest, features and coordinates, and the gallery: 7 files
    assert len(named) == 7 and {Path(p).name for p in named} == {
        "manifest.json",
        "features.npy",
        "coords.npy",
        "gallery.npy",
    }
    assert all(r["size"] == Path(r["path"]).stat().st_size and r["hash"] for r in manifest["sessions"][0]["data"])
    session = manifest["sessions"][0]
    assert session["versions"]["python"] == sys.version.split()[0] and session["versions"]["torch"]
    assert session["devices"] and (session["git"] is None or len(session["git"]["commit"]) == 40)


def fake_cache(folder: Path, coords: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text('{"format": 1}')
    np.save(folder / "coords.npy", coords)
    return folder / "coords.npy"


def test_a_changed_cache_gets_a_new_hash_and_the_hash_is_kept_beside_it(tmp_path):
    path = fake_cache(tmp_path / "cache", np.zeros((50, 2)))
    first = file_record(path)
    assert first["hash"] == content_hash(path) and first["size"] == path.stat().st_size
    kept = (tmp_path / "cache" / HASHES).read_text()
    assert first["hash"] in kept
    assert file_record(path) == first  # the second time from content_hashes.json
    stat = path.stat()
    np.save(path, np.ones((50, 2)))  # the same size, new content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime, on any file system
    second = file_record(path)
    assert second["size"] == first["size"] and second["hash"] != first["hash"]
    assert second["hash"] == content_hash(path)
    assert file_record(tmp_path / "missing.npy")["hash"] is None


def test_a_big_file_is_hashed_by_samples_that_see_a_change_and_not_its_place(tmp_path):
    data = np.random.default_rng(0).bytes(3 * 2**20)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(data)
    b.write_bytes(data)
    sampled = content_hash(a, full_bytes=2**20)
    assert sampled.startswith("blake2b-sampled:") and sampled == content_hash(b, full_bytes=2**20)  # a copy
    b.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the last byte changed
    assert content_hash(b, full_bytes=2**20) != sampled
    assert content_hash(a).startswith("blake2b:")  # under the default limit: the whole file


def write_tiny_study(root: Path) -> None:
    for number, acc in enumerate([0.1, 0.2]):
        trial = TrialFolder(root / f"trial_{number}")
        trial.path.mkdir(parents=True)
        trial.write_trial(f"t{number}", number, {"train.lr": 1e-3 * (number + 1)})
        trial.append_metrics({"epoch": 1, "acc_1km": acc, "score": acc, "train_loss": 1.0 - acc})
        trial.write_status(StatusRecord(Status.FINISHED, 1, 1))


def test_the_report_cites_the_manifest_and_the_analysis_warns_when_sessions_differ(tmp_path):
    root = tmp_path / "study"
    write_tiny_study(root)
    cache = fake_cache(tmp_path / "cache", np.zeros((5, 2)))
    record_session(root, [cache])
    record_session(root, [cache])  # a resume on the same data
    manifest = read_manifest(root)
    assert len(manifest["sessions"]) == 2 and differences(manifest) == []
    assert not [w for w in read_study(root).warnings if MANIFEST in w]
    result = analyse(root, tmp_path / "out", formats=("md",), plots=False, echo_warnings=False)
    assert f"Made by: {describe(manifest)}." in Path(result["report"]).read_text()

    stat = cache.stat()
    np.save(cache, np.ones((5, 2)))
    os.utime(cache, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    record_session(root, [cache])  # a resume on a changed cache
    warned = [w for w in read_study(root).warnings if MANIFEST in w]
    assert len(warned) == 1 and "changed data (coords.npy)" in warned[0], warned


def test_a_study_without_a_manifest_says_so(tmp_path):
    root = tmp_path / "study"
    write_tiny_study(root)
    result = analyse(root, tmp_path / "out", formats=("md",), plots=False, echo_warnings=False)
    assert f"Made by: no {MANIFEST}" in Path(result["report"]).read_text()


@pytest.mark.parametrize("sessions", [[{"git": {"commit": "a" * 40, "dirty": False}, "data": []}] * 2])
def test_different_commits_are_a_difference(sessions):
    assert differences({"sessions": sessions}) == []
    other = [*sessions, {"git": {"commit": "b" * 40, "dirty": True}, "data": []}]
    assert differences({"sessions": other}) == ["2 different commits"]


def test_a_session_names_its_cpu_and_another_kind_of_cpu_is_a_difference(tmp_path):
    """CPU figures agree to the digit on one kind of CPU only: the manifest names the model, and a study
    resumed on another kind is told apart (sessions before the field name none and count as unknown)."""
    with open("/proc/cpuinfo") as f:
        model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    root = tmp_path / "study"
    root.mkdir()
    here = record_session(root, [])["sessions"][0]
    assert here["cpu"] == model and model in describe({"sessions": [here]})
    older = {k: v for k, v in here.items() if k != "cpu"}
    assert differences({"sessions": [older, here]}) == []
    other = {**here, "cpu": "AMD EPYC 7B13"}
    assert differences({"sessions": [here, other]}) == [f"2 kinds of CPU ({', '.join(sorted([model, other['cpu']]))})"]
