"""What the cross-view readers share: split-file rows with their line numbers, numbers and
coordinates checked as written, repeats, and the images that must exist.

Every problem is a ``DataError`` whose message starts with the file and the line (1-based, as an
editor shows it) and quotes the value, so that a user can fix the file without reading code.
Images are only looked up (a stat each, in a thread pool: on a network file system the stats
wait on the server, not the CPU), never decoded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from geoloc.data.cache import DataError

STAT_THREADS = 16
STAT_CHUNK = 2048


def absolute_root(root: str | Path) -> Path:
    """``root`` as an absolute path (symbolic links kept: the user's folder names stay in messages)."""
    return Path(os.path.abspath(Path(root).expanduser()))


def read_lines(path: Path, what: str) -> list[str]:
    """The lines of a text file; a missing, unreadable or empty file is a DataError naming ``what`` it is."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: {what} is not readable text ({e})") from None
    if not text.strip():
        raise DataError(f"{path}: empty file (the {what})")
    return text.splitlines()


def split_rows(path: Path, what: str, *, sep: str | None) -> list[tuple[int, list[str]]]:
    """``(line, fields)`` for every non-blank line; ``sep`` None splits on any whitespace."""
    rows = []
    for number, line in enumerate(read_lines(path, what), start=1):
        if line.strip():
            fields = line.split() if sep is None else [field.strip() for field in line.split(sep)]
            rows.append((number, fields))
    return rows


def check_columns(path: Path, line: int, fields: list[str], expected: int, meaning: str) -> None:
    """A row must have exactly ``expected`` fields (``meaning`` lists them for the message)."""
    if len(fields) != expected:
        shown = " ".join(fields)
        raise DataError(
            f"{path}: line {line}: {len(fields)} columns, expected {expected} ({meaning}); the row reads {shown!r}"
        )


def number(text: str, where: str, what: str) -> float:
    """``text`` as a finite float; ``where`` is ``"<file>: line <n>"``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} {text!r} is not a finite number")
    return value


def coordinate(lat_text: str, lon_text: str, where: str, what: str) -> tuple[float, float]:
    """(lat, lon) degrees from their text, each a finite number in range."""
    lat = number(lat_text, where, f"{what} latitude")
    lon = number(lon_text, where, f"{what} longitude")
    check_range(lat, lon, where, what)
    return lat, lon


def check_range(lat: float, lon: float, where: str, what: str) -> None:
    if not -90 <= lat <= 90:
        raise DataError(f"{where}: {what} latitude {lat} out of range [-90, 90]")
    if not -180 <= lon <= 180:
        raise DataError(f"{where}: {what} longitude {lon} out of range [-180, 180]")


class FirstSeen:
    """Names seen so far and where; a repeat is a DataError naming both places."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.places: dict[str, str] = {}

    def add(self, name: str, where: str) -> None:
        if name in self.places:
            raise DataError(f"{where}: {self.what} {name} repeats {self.places[name]}; each may appear once")
        self.places[name] = where


def _are_files(names: list[str]) -> list[bool]:
    return [os.path.isfile(name) for name in names]


def check_exist(paths: Sequence[Path], where: Callable[[int], str], what: str) -> None:
    """Every path must be a file; the first that is not raises a DataError at ``where(i)``, with the count."""
    names = [os.fspath(p) for p in paths]
    chunks = [names[start : start + STAT_CHUNK] for start in range(0, len(names), STAT_CHUNK)]
    with ThreadPoolExecutor(STAT_THREADS) as pool:  # one task per chunk: a future per file costs more than its stat
        exists = [ok for chunk in pool.map(_are_files, chunks) for ok in chunk]
    missing = [i for i, ok in enumerate(exists) if not ok]
    if missing:
        first = missing[0]
        raise DataError(
            f"{where(first)}: {what} {paths[first]} not found ({len(missing)} of {len(paths)} {what}s missing)"
        )
