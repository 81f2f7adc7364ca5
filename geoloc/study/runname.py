"""TensorBoard run names that say what a trial tried: ``t0003 batch_sigma=5 lr=0.001``.

TensorBoard names a run by its event folder's path under ``--logdir``; a trial writes its events to
a folder of this name inside its trial folder (``TrialFolder.events_dir``), so the run selector shows
``trial_<id>/t0003 batch_sigma=5 lr=0.001`` and its filter finds every run with ``batch_sigma=5``.
The name is a pure function of the trial's number, its sampled values and the study's searched keys,
so a resumed trial writes to the same run.

Keys are shortened mechanically: the last dotted component, more components only where two searched
keys would otherwise read the same (``train.noise.batch_sigma`` -> ``batch_sigma``). Values are
written with ``:g``. The name holds only characters every file system accepts (letters, digits,
``. _ - + = ,`` and spaces between items); it stays within ``RUN_NAME_LIMIT`` characters by leaving
out whole ``key=value`` items from the end, never part of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

RUN_NAME_LIMIT = 100  # characters; well inside every file system's 255 for one path component
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-,=]")  # anything else (/ : \ * ? " < > | spaces ...) becomes _


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """Each dotted key -> its shortest tail of components that no other key shares (``a.b.c`` -> ``c``)."""
    keys = list(dict.fromkeys(keys))
    depth = dict.fromkeys(keys, 1)
    while True:
        tails = {key: ".".join(key.split(".")[-depth[key] :]) for key in keys}
        readers: dict[str, list[str]] = {}
        for key, tail in tails.items():
            readers.setdefault(tail, []).append(key)
        clashing = [
            key for same in readers.values() if len(same) > 1 for key in same if depth[key] < key.count(".") + 1
        ]
        if not clashing:
            return {key: _UNSAFE.sub("_", tail) for key, tail in tails.items()}
        for key in clashing:
            depth[key] += 1


def format_value(value) -> str:
    """A sampled value as the name shows it: numbers with ``:g``, a list as its items joined by commas."""
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return _UNSAFE.sub("_", str(value))


def run_name(number: int | None, params: dict, keys: Iterable[str] = (), limit: int = RUN_NAME_LIMIT) -> str:
    """``t<number, 4 digits> key=value ...`` for the sampled ``params`` in their order; keys are shortened
    against ``keys`` (the study's searched keys, so that every trial shortens alike) and ``params``."""
    short = short_keys([*keys, *params])
    name = f"t{number:04d}" if number is not None else "trial"
    for key, value in params.items():
        item = f"{short[key]}={format_value(value)}"
        if len(name) + 1 + len(item) > limit:
            break  # the rest left out whole: a name is never cut inside a value
        name = f"{name} {item}"
    return name
