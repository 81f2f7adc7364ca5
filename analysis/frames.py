"""Log rows into DataFrames, and the values of a table of epochs at one epoch.

Pure pandas: ``load.py`` reads the files and hands their rows here; ``budget.py`` picks epochs
with `values_at`. Epoch 0, the evaluation before training (``eval.at_start``), is kept apart by
`split_start`, once, so that nothing comparing trials at an epoch ever sees it.
"""

from __future__ import annotations

import math

import pandas as pd

from geoloc.common.metrics import MetricRegistry

START = 0  # the epoch of the evaluation before training (eval.at_start)


def log_frame(rows: list[dict]) -> pd.DataFrame:
    """Log rows as a frame, epoch-0 rows last: columns come in the order first seen, and an epoch-0
    row (first in its log) lacks train_loss, which must keep its place among the metrics."""
    return pd.DataFrame(sorted(rows, key=lambda row: row["epoch"] == START))  # stable: else in log order


def split_start(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the epoch-0 rows, the trained epochs' rows) of a frame of log rows."""
    if not len(frame):
        return frame.copy(), frame
    before = frame["epoch"] == START
    return frame[before].reset_index(drop=True), frame[~before].reset_index(drop=True)


def per_epoch(frame: pd.DataFrame, keys: list[str], params: list[str], by_trial: dict) -> pd.DataFrame:
    """A per-epoch table with the trial's hyperparameters on each row, sorted by trial, then ``keys``."""
    if not len(frame):
        return pd.DataFrame(columns=["number", "trial_id", "status", *keys, *params])
    for k in params:
        if k not in frame.columns:  # a metric of the same name wins; trials.csv still has the param
            frame[k] = [by_trial[t].get(k) for t in frame["trial_id"]]
    frame["number"] = pd.to_numeric(frame["number"], errors="coerce").astype("Int64")
    return frame.sort_values(["number", "trial_id", *keys], na_position="last").reset_index(drop=True)


def curve_table(rows: list[dict]) -> pd.DataFrame:
    """curves.jsonl rows (lists of km and acc) as one row per distance."""
    columns = ["trial_id", "seed", "epoch", "set", "km", "acc"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)[columns].explode(["km", "acc"], ignore_index=True)
    return table.astype({"km": float, "acc": float})


def flatten(tree: dict, prefix: str = "") -> dict:
    """Params are flat dotted keys by contract; a nested dict is flattened the same way anyway."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[f"{prefix}{key}"] = str(list(value))
        else:
            out[f"{prefix}{key}"] = value
    return out


def hashable(value):
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def kind(values: list) -> str:
    """A hyperparameter's kind from its values: "int", "float" or "categorical"."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "categorical"


def numeric_metric_keys(epochs: pd.DataFrame) -> list[str]:
    """The columns of an epoch table that hold numbers in every row that has them."""
    skip = {"number", "trial_id", "status", "epoch", "node"}
    keys = []
    for col in epochs.columns:
        if col in skip:
            continue
        values = pd.to_numeric(epochs[col], errors="coerce")
        if values.notna().any() and values.notna().sum() == epochs[col].notna().sum():
            keys.append(col)
    return keys


def values_at(
    rows: pd.DataFrame, keys: list[str], epoch: int | str, metrics: list[str], registry: MetricRegistry
) -> pd.DataFrame:
    """One row per ``keys`` group of per-epoch ``rows`` (``keys`` as columns, then ``metrics``).

    epoch: a number (its row; groups that did not reach it are absent), "final" (the last
    epoch's row: the last row, not the last non-null value, so a loss that ended NaN shows as
    NaN) or "best" (each metric with a registry direction at its best epoch, the others final).
    """
    ordered = rows.sort_values([*keys, "epoch"])
    if epoch in ("final", "best"):
        picked = ordered.groupby(keys, dropna=False, sort=False).tail(1)
    else:
        picked = ordered[ordered["epoch"] == epoch]
    # A metric some rows lack (an older log) is NaN there, never a missing column.
    table = picked.set_index(keys).reindex(columns=metrics).apply(pd.to_numeric, errors="coerce")
    if epoch == "best":
        groups = (
            ordered.reindex(columns=metrics)
            .apply(pd.to_numeric, errors="coerce")
            .groupby([ordered[k] for k in keys], dropna=False)
        )
        for m in metrics:
            how = registry.direction(m)
            if how:
                table[m] = getattr(groups[m], how)().reindex(table.index)
    return table.reset_index()


def with_final_and_best(
    trials: pd.DataFrame, epochs: pd.DataFrame, metrics: list[str], registry: MetricRegistry
) -> pd.DataFrame:
    """final_<m>: the last epoch's value; best_<m>: the best over epochs, where the registry gives m a direction."""
    if not len(epochs):
        for m in metrics:
            trials[f"final_{m}"] = math.nan
        return trials
    final = values_at(epochs, ["trial_id"], "final", metrics, registry).set_index("trial_id")
    best = values_at(epochs, ["trial_id"], "best", metrics, registry).set_index("trial_id")
    columns = {f"final_{m}": final[m] for m in metrics}
    columns.update({f"best_{m}": best[m] for m in metrics if registry.direction(m)})
    return trials.join(pd.DataFrame(columns), on="trial_id")
