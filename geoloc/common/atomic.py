"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file the project writes for another process to read (trial records, checkpoints, manifests,
shard records, derived arrays, a rebuilt Optuna storage) and every folder it builds for others
(feature caches, the offline benchmark) goes through here, so the write-to-temporary-then-rename
idiom exists once:

- ``atomic_path(path)``: a temporary to write, renamed over ``path`` when the block ends; the
  writers that want a path (``torch.save``, SQLite) use it;
- ``atomic_file(path)``: the same, opened for binary writing (``np.save``, bytes, text, JSON);
- ``temporary_dir(final)`` and ``publish_dir(tmp, final, done)``: a folder built beside ``final``
  and renamed into place; when another process published first, its folder is kept.

A temporary lies in a hidden folder of its own beside the file and has the file's own name: a
writer that records the name (``torch.save`` names its archive after the file) or adds a suffix
(``np.save``) writes exactly the bytes it would write to the file itself, and two processes
writing one file at once never share a temporary. A block that raises leaves the old file and no
temporary behind.

``file_lock(path)`` is the lock of something built once that several processes may need at the same
time (a derived file, the offline benchmark): the first builds it, the others wait and read it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A path to write ``path``'s new content to (same name, in a hidden temporary folder beside it);
    renamed over ``path`` when the block ends, removed when it raises."""
    path = Path(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield folder / path.name
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """``atomic_path`` opened for binary writing: ``with atomic_file(p) as f: np.save(f, array)``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    """``write_bytes`` of the UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented JSON (non-JSON values such as paths become strings), atomically."""
    write_text(path, json.dumps(data, indent=1, default=str))


def read_json(path: str | Path) -> Any | None:
    """The parsed file, or None when it is missing or not valid JSON (being written by another process)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def temporary_dir(final: str | Path) -> Path:
    """A new hidden folder beside ``final`` (its parent made when missing) to build ``final`` in."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:16]}.tmp"
    tmp.mkdir()  # the permissions of any folder the user makes (mkdtemp's would be owner-only)
    return tmp


def publish_dir(tmp: str | Path, final: str | Path, done: str) -> bool:
    """Rename the finished folder ``tmp`` to ``final``. When another process published ``final`` first
    (it holds the file ``done``), keep theirs, remove ``tmp`` and return False; True when ``tmp`` was published."""
    tmp, final = Path(tmp), Path(final)
    try:
        os.rename(tmp, final)  # a folder: never replaces another one that holds files
    except OSError:
        if not (final / done).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def file_lock(path: str | Path):
    """The file lock (``PATH.lock``) under which ``path`` is built once (filelock imported here: a GPU
    node running ``bench.gpu_check`` trains without Ray's dependencies and never builds such a file)."""
    from filelock import FileLock

    return FileLock(f"{path}.lock")


def build_once(final: str | Path, build: Callable[[Path], None], what: str, progress: bool = False) -> Path:
    """The folder ``final``, built by ``build(tmp)`` unless it is there (it holds ``DONE``).

    Safe to call from several processes at once (the trials of a study, two studies on one cache
    root, nodes sharing it): the first builds it under a file lock (``final.lock``) into a temporary
    folder that is renamed into place when complete; the others wait for the lock and return the
    finished folder. ``progress``: say on stderr (naming ``what``) when this call builds it.
    """
    final = Path(final)
    if (final / "DONE").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final):
        if (final / "DONE").exists():  # built by another process while this one waited
            return final
        if progress:
            print(f"building {what} in {final} (once)", file=sys.stderr, flush=True)
        tmp = temporary_dir(final)
        try:
            build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_dir(tmp, final, "DONE")
    return final
