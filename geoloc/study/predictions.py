"""Per-image predictions of a run's evaluations: ``predictions/epoch_<e>.npz`` in the trial folder.

One file per evaluated epoch (epoch 0 too, with ``eval.at_start``), written atomically as the epoch
ends (``geoloc.common.atomic``), one row per (seed, evaluation set, image). Why every epoch: the
analysis compares trials at an equal budget (``analysis/budget.py``) that is known only when the
study is read (``--epoch`` may name any epoch), so no epoch can be dropped while the run lives.
A file is small: the coordinates are float32 (1 m at the equator), the error float64 (the run's
own values, so ``acc_<t>km``, ``median_km`` and ``mean_km`` recomputed from them are the logged
ones to the last digit); 3,000 images x 3 seeds of one epoch take 0.19 MB compressed (measured), so
10 trials of 10 epochs about 19 MB, and far less under ASHA, which stops most trials early.

Columns (``COLUMNS``): ``seed`` (int32), ``set`` (int16, an index into the file's ``sets``, the
evaluation sets' names in ``data.val`` order), ``image`` (int32, the row of the evaluation cache),
``true_lat``, ``true_lon``, ``pred_lat``, ``pred_lon`` (float32 degrees), ``gallery_index`` (int32,
the predicted gallery point) and ``error_km`` (float64). ``read_predictions`` adds ``epoch`` and
gives ``set`` as names. A resumed run drops the files after its checkpoint's epoch
(``TrialFolder.truncate_after``), a fresh one all of them (``TrialFolder.clear_metrics``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from geoloc.common.atomic import atomic_file
from geoloc.study.folders import TrialFolder

COLUMNS = {
    "seed": np.int32,
    "set": np.int16,
    "image": np.int32,
    "true_lat": np.float32,
    "true_lon": np.float32,
    "pred_lat": np.float32,
    "pred_lon": np.float32,
    "gallery_index": np.int32,
    "error_km": np.float64,
}
FILE = re.compile(r"epoch_(\d+)\.npz")


def set_rows(true: np.ndarray, predicted: np.ndarray, gallery_index: np.ndarray, errors_km: np.ndarray) -> dict:
    """One evaluation set's rows (without ``seed`` and ``set``): true and predicted (N, 2) coordinates,
    the predicted gallery indices and the errors, image by image."""
    return {
        "image": np.arange(len(true)),
        "true_lat": true[:, 0],
        "true_lon": true[:, 1],
        "pred_lat": predicted[:, 0],
        "pred_lon": predicted[:, 1],
        "gallery_index": gallery_index,
        "error_km": errors_km,
    }


def epoch_table(per_seed: list[tuple[int, dict[str, dict]]]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The rows of one epoch from ``[(seed, {set name: set_rows(...)}), ...]``: (columns, set names)."""
    names = list(dict.fromkeys(name for _, sets in per_seed for name in sets))
    parts = [
        {"seed": np.full(len(rows["image"]), seed), "set": np.full(len(rows["image"]), names.index(name)), **rows}
        for seed, sets in per_seed
        for name, rows in sets.items()
    ]
    table = {col: np.concatenate([p[col] for p in parts]).astype(dtype) for col, dtype in COLUMNS.items()}
    return table, names


def epoch_file(folder: TrialFolder, epoch: int) -> Path:
    return folder.path / TrialFolder.PREDICTIONS / f"epoch_{epoch:04d}.npz"


def write_predictions(folder: TrialFolder, epoch: int, table: dict[str, np.ndarray], sets: list[str]) -> Path:
    """One epoch's rows as ``predictions/epoch_<e>.npz``, atomically (a reader sees the old file or the new)."""
    path = epoch_file(folder, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.savez_compressed(f, sets=np.asarray(sets, dtype=str), **table)
    return path


def prediction_epochs(folder: TrialFolder) -> list[int]:
    """The epochs whose predictions the folder holds, in order."""
    found = (FILE.fullmatch(p.name) for p in (folder.path / TrialFolder.PREDICTIONS).glob("epoch_*.npz"))
    return sorted(int(m.group(1)) for m in found if m)


def read_predictions(folder: TrialFolder, epochs: list[int] | None = None):
    """The rows of ``epochs`` (default: all) as one pandas frame with ``epoch`` and ``set`` names; empty
    (no rows) when the run kept none."""
    import pandas as pd  # here: the run writes these files without pandas

    frames = []
    for epoch in prediction_epochs(folder) if epochs is None else epochs:
        path = epoch_file(folder, epoch)
        if not path.exists():
            continue
        with np.load(path, allow_pickle=False) as doc:
            frame = pd.DataFrame({col: doc[col] for col in COLUMNS})
            frame["set"] = np.asarray(doc["sets"])[frame["set"].to_numpy()]
        frame.insert(0, "epoch", epoch)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["epoch", *COLUMNS])
    return pd.concat(frames, ignore_index=True)
