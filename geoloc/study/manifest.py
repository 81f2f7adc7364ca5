"""The study's manifest (``manifest.json`` beside ``study.yaml``): what code, software, machines
and data made the study, one entry per launcher session (the first start and every resume).

Each session records: ``time`` (UTC, ISO 8601), ``host``, ``git`` (``commit`` and ``dirty`` of the
project's checkout, from ``git rev-parse HEAD`` and ``git status --porcelain``; null without git),
``versions`` (Python and the installed torch, CUDA, Ray, Optuna and open_clip, read with
``importlib.metadata``: nothing heavy is imported), ``cpu`` (the processor's model name from
``/proc/cpuinfo``: CPU results are reproducible to the digit on one kind of CPU, not across kinds,
whose math libraries round sums differently), ``devices`` (torch's CUDA device names when
torch is already imported, else ``nvidia-smi -L``, else ``["cpu"]``) and ``data``: every data file
the run reads, as the task names them (``Task.data_files``), each with its ``path``, ``size`` and
content ``hash``.

The hash (`content_hash`) is BLAKE2b (16-byte digest) of the whole file up to ``FULL_HASH_BYTES``;
of a larger file (a feature cache's ``features.npy``), of its size, its first and last MiB and
``SAMPLES`` blocks of 64 KiB spread evenly between them, so a 30 GB cache hashes in well under a
second and a copy on another machine hashes the same (no mtime in it). A change that touches none
of the sampled bytes of a big file goes unseen; caches are written whole (``geoloc.data.cache``),
so a rebuilt one differs in every block. In a feature cache's folder (one with a
``geoloc.data.cache.MANIFEST``) the hashes are kept in ``content_hashes.json``, keyed by each
file's size and mtime: computed once, and again whenever a file is rewritten (make's and rsync's
rule; a rewrite that keeps both size and mtime to the nanosecond is not noticed).

The analysis cites the last session (`describe`) and warns when the sessions differ in commit,
dirty tree or data hashes (`differences`). Torch-free and Ray-free.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from geoloc.common.atomic import read_json, write_json

MANIFEST = "manifest.json"
HASHES = "content_hashes.json"  # kept in a feature cache's folder (module docstring)
CACHE_MARKER = "manifest.json"  # geoloc.data.cache.MANIFEST: what makes a folder a feature cache
FULL_HASH_BYTES = 64 * 2**20  # files up to this size are hashed whole
EDGE_BYTES = 2**20  # of a larger file: its first and last MiB ...
SAMPLES, SAMPLE_BYTES = 64, 2**16  # ... and 64 blocks of 64 KiB between them
PACKAGES = {"torch": "torch", "ray": "ray", "optuna": "optuna", "open_clip": "open_clip_torch"}
CUDA_PACKAGES = ("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu11", "nvidia-cuda-runtime")
REPO = Path(__file__).resolve().parents[2]  # the project's checkout (geoloc/study/manifest.py)


def content_hash(path: Path, full_bytes: int = FULL_HASH_BYTES) -> str:
    """``blake2b:<hex>`` of the file's content, whole up to ``full_bytes``, else
    ``blake2b-sampled:<hex>`` of its size and sampled blocks (module docstring)."""
    digest = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= max(full_bytes, 2 * EDGE_BYTES + SAMPLE_BYTES):
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
            return f"blake2b:{digest.hexdigest()}"
        digest.update(str(size).encode())
        step = (size - 2 * EDGE_BYTES - SAMPLE_BYTES) // (SAMPLES + 1)
        spans = [(0, EDGE_BYTES)]
        spans += [(EDGE_BYTES + k * step, SAMPLE_BYTES) for k in range(1, SAMPLES + 1)]
        spans += [(size - EDGE_BYTES, EDGE_BYTES)]
        for offset, length in spans:
            f.seek(offset)
            digest.update(f.read(length))
    return f"blake2b-sampled:{digest.hexdigest()}"


def file_record(path: str | Path) -> dict:
    """``{"path", "size", "hash"}`` of one data file; size and hash null when it is missing. In a
    feature cache's folder, the hash comes from (and goes to) its ``content_hashes.json``."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        return {"path": str(path), "size": None, "hash": None}
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo_file = path.parent / HASHES if (path.parent / CACHE_MARKER).is_file() else None
    memo = (read_json(memo_file) or {}) if memo_file else {}
    known = memo.get(path.name) if isinstance(memo, dict) else None
    if isinstance(known, dict) and {k: known.get(k) for k in key} == key and known.get("hash"):
        digest = known["hash"]
    else:
        digest = content_hash(path)
        if memo_file is not None:
            try:  # a read-only shared cache is still hashed, only not remembered
                write_json(memo_file, {**(memo if isinstance(memo, dict) else {}), path.name: {**key, "hash": digest}})
            except OSError:
                pass
    return {"path": str(path), "size": stat.st_size, "hash": digest}


def _git(repo: Path, *args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(repo: Path = REPO) -> dict | None:
    """``{"commit", "dirty"}`` of the checkout; None outside git (an installed wheel, no git)."""
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return None
    porcelain = _git(repo, "status", "--porcelain")
    return {"commit": commit.strip(), "dirty": None if porcelain is None else bool(porcelain.strip())}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Python and the packages' versions (None where not installed). CUDA: torch's own build when
    torch is imported already, else the installed CUDA runtime wheel's version."""
    out = {"python": platform.python_version(), **{name: _version(dist) for name, dist in PACKAGES.items()}}
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
    out["cuda"] = cuda or next((v for v in map(_version, CUDA_PACKAGES) if v), None)
    return out


def devices() -> list[str]:
    """The accelerators this host has (module docstring)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            names = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
            if listed.returncode == 0 and names:
                return names
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ["cpu"]


def cpu_model() -> str:
    """The processor's model name (module docstring); ``platform.processor()`` where /proc has none."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or "unknown"


def session(data_files: list[Path], repo: Path = REPO) -> dict:
    """One session's entry (module docstring)."""
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "git": git_state(repo),
        "versions": versions(),
        "cpu": cpu_model(),
        "devices": devices(),
        "data": [file_record(p) for p in dict.fromkeys(Path(p) for p in data_files)],
    }


def record_session(study_dir: str | Path, data_files: list[Path], repo: Path = REPO) -> dict:
    """Append this session to ``study_dir/manifest.json`` (made at a study's start, extended at each
    resume), atomically; returns the manifest."""
    path = Path(study_dir) / MANIFEST
    found = read_json(path)
    sessions = found.get("sessions", []) if isinstance(found, dict) else []
    manifest = {"sessions": [*sessions, session(data_files, repo)]}
    write_json(path, manifest)
    return manifest


def read_manifest(study_dir: str | Path) -> dict | None:
    """The manifest, or None when the study has none (made before it existed) or it is not one."""
    found = read_json(Path(study_dir) / MANIFEST)
    return found if isinstance(found, dict) and isinstance(found.get("sessions"), list) else None


def describe(manifest: dict) -> str:
    """The last session in one line: commit, dirty tree, versions, devices, sessions, data files."""
    sessions = manifest["sessions"]
    last = sessions[-1] if sessions else {}
    git = last.get("git")
    code = "no git" if not git else f"commit {git['commit'][:12]}" + (" (dirty tree)" if git.get("dirty") else "")
    soft = ", ".join(f"{k} {v}" for k, v in (last.get("versions") or {}).items() if v)
    machines = [last.get("cpu") or "unknown CPU", *(d for d in last.get("devices") or [] if d != "cpu")]
    where = ", ".join(dict.fromkeys(machines))
    return (
        f"{code}; {soft}; {where}; {len(sessions)} session(s), {len(last.get('data') or [])} data file(s) "
        f"hashed ({MANIFEST})"
    )


def differences(manifest: dict) -> list[str]:
    """What differs between the sessions of one study: the commit, the kind of CPU, a data file's hash,
    or which files were read; empty when every session ran the same commit on the same data and CPU. (A dirty tree
    is cited by `describe`, not counted here: its changes are not recorded, so nothing compares.)"""
    sessions = manifest.get("sessions") or []
    out = []
    codes = {(s.get("git") or {}).get("commit") for s in sessions}
    if len(codes) > 1:
        out.append(f"{len(codes)} different commits")
    cpus = {s["cpu"] for s in sessions if s.get("cpu")}  # manifests before the field name none
    if len(cpus) > 1:
        out.append(f"{len(cpus)} kinds of CPU ({', '.join(sorted(cpus))})")
    data: dict[str, set] = {}
    for s in sessions:
        for record in s.get("data") or []:
            data.setdefault(record["path"], set()).add(record["hash"])
    changed = [p for p, hashes in data.items() if len(hashes) > 1]
    if changed:
        out.append(f"changed data ({', '.join(Path(p).name for p in changed)})")
    if len({frozenset(r["path"] for r in s.get("data") or []) for s in sessions}) > 1:
        out.append("different data files")
    return out
