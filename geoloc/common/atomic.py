"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every JSON file the project writes for another process to read (trial records, manifests,
shard records) goes through here, so the write-to-temporary-then-rename idiom exists once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
