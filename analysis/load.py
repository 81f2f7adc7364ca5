"""Read a study directory into two DataFrames: one row per trial, one row per trial and epoch.

Only the files the launcher writes are read (``trial.json``, ``metrics.jsonl``, ``status.json``),
so a finished study, a running one, or a copy on a laptop all read the same, without Ray.
A study that is still running is being written while we read it: a half-written last line or
status file is skipped with a warning rather than treated as a user's mistake.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

TRIAL_FILE = "trial.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"

STATUSES = ("finished", "stopped", "errored", "running")
COUNTED = ("finished", "stopped")  # trials whose final metrics mean something
NOISE_PARAM = "train.noise.batch_sigma"

# A metric's direction is read from its (possibly set-prefixed, e.g. "im2gps3k_acc_1km") name.
_HIGHER = re.compile(r"(^|_)(acc_[\d.]+km|score|ceiling_[\d.]+km)$")
_LOWER = re.compile(r"(^|_)(loss|median_km|mean_km)$")
_ACC = re.compile(r"^acc_([\d.]+)km$")
_TRIAL_COLUMNS = ("number", "trial_id", "status", "status_detail", "epochs", "max_epochs", "node", "reason", "trial_dir")


class AnalysisError(Exception):
    """A user's mistake (wrong directory, unknown parameter): reported as one line, exit status 2."""


@dataclass
class Study:
    path: Path
    name: str
    trials: pd.DataFrame  # one row per trial: info, params, final_<metric>, best_<metric>
    epochs: pd.DataFrame  # one row per trial and epoch: number, trial_id, status, epoch, metrics, params
    params: list[str]  # every hyperparameter, in first-seen order
    param_kinds: dict[str, str]  # "int" | "float" | "categorical"
    varied: list[str]  # hyperparameters with more than one value across the trials
    metrics: list[str]  # numeric per-epoch metric keys
    warnings: list[str] = field(default_factory=list)

    @property
    def accuracies(self) -> list[str]:
        """Plain accuracy keys (acc_1km ...), finest threshold first."""
        return sorted((m for m in self.metrics if _ACC.match(m)), key=threshold_km)

    def counted(self) -> pd.DataFrame:
        """Trials that finished or were stopped by ASHA: the ones tables and statistics use."""
        return self.trials[self.trials["status"].isin(COUNTED)]


def threshold_km(metric: str) -> float:
    """acc_25km -> 25.0 (also for ceiling_25km)."""
    return float(re.search(r"_([\d.]+)km$", metric).group(1))


def direction(metric: str) -> str | None:
    """"max", "min", or None where "best" means nothing (lr, temperature, timings)."""
    if _HIGHER.search(metric):
        return "max"
    if _LOWER.search(metric):
        return "min"
    return None


def load_study(study_dir: str | Path) -> Study:
    path = Path(study_dir)
    if not path.exists():
        raise AnalysisError(f"{path}: no such directory (expected a study directory written by tune_main.py)")
    if not path.is_dir():
        raise AnalysisError(f"{path}: not a directory (expected a study directory written by tune_main.py)")

    warnings: list[str] = []
    trial_dirs = sorted(p.parent for p in path.glob(f"*/{TRIAL_FILE}"))
    if not trial_dirs:
        hint = ""
        nested = sorted({p.parent.parent for p in path.glob(f"*/*/{TRIAL_FILE}")})
        if nested:
            hint = f"; did you mean {nested[0]}?"
        raise AnalysisError(f"{path}: no trials found (expected trial folders with {TRIAL_FILE}, written by tune_main.py){hint}")

    rows, epoch_rows, raw_params = [], [], []
    for trial_dir in trial_dirs:
        trial = _read_trial(trial_dir, warnings)
        if trial is None:
            continue
        info, params, epochs = trial
        if info["trial_id"] in {r["trial_id"] for r in rows}:
            # A copied trial folder: keep both, told apart by folder name, rather than merge their curves.
            warnings.append(f"{trial_dir.name}: trial_id {info['trial_id']} appears twice; renamed by its folder")
            info["trial_id"] = f"{info['trial_id']}@{trial_dir.name}"
        rows.append(info)
        raw_params.append(params)
        for e in epochs:
            epoch_rows.append({"number": info["number"], "trial_id": info["trial_id"], "status": info["status"], **e})
    if not rows:
        raise AnalysisError(f"{path}: no readable trials ({len(trial_dirs)} {TRIAL_FILE} files, none valid JSON)")

    params = list(dict.fromkeys(k for p in raw_params for k in p))
    clashes = [k for k in params if k in _TRIAL_COLUMNS or k.startswith(("final_", "best_"))]
    if clashes:
        warnings.append(f"hyperparameter(s) {', '.join(clashes)} clash with trials.csv's own columns; left out")
        params = [k for k in params if k not in clashes]
        raw_params = [{k: v for k, v in p.items() if k not in clashes} for p in raw_params]
    kinds = {k: _kind([p[k] for p in raw_params if k in p]) for k in params}
    varied = [k for k in params if len({_hashable(p[k]) for p in raw_params if k in p}) > 1]

    epochs = pd.DataFrame(epoch_rows)
    metric_keys = _numeric_metric_keys(epochs)
    trials = pd.DataFrame(rows)
    for col in ("number", "max_epochs"):
        trials[col] = pd.to_numeric(trials[col], errors="coerce").astype("Int64")
    for k in params:
        trials[k] = [p.get(k) for p in raw_params]
    trials = _with_final_and_best(trials, epochs, metric_keys)
    trials = trials.sort_values(["number", "trial_id"], na_position="last").reset_index(drop=True)

    if len(epochs):
        by_trial = {t: p for t, p in zip([r["trial_id"] for r in rows], raw_params)}
        for k in params:
            if k not in epochs.columns:  # a metric of the same name wins; trials.csv still has the param
                epochs[k] = [by_trial[t].get(k) for t in epochs["trial_id"]]
        epochs["number"] = pd.to_numeric(epochs["number"], errors="coerce").astype("Int64")
        epochs = epochs.sort_values(["number", "trial_id", "epoch"], na_position="last").reset_index(drop=True)
    else:
        epochs = pd.DataFrame(columns=["number", "trial_id", "status", "epoch", *params])

    return Study(
        path=path,
        name=_study_name(path),
        trials=trials,
        epochs=epochs,
        params=params,
        param_kinds=kinds,
        varied=varied,
        metrics=metric_keys,
        warnings=warnings,
    )


def _read_trial(trial_dir: Path, warnings: list[str]):
    """(info, params, epoch rows) of one trial folder, or None when its trial.json is unreadable."""
    meta = _read_json(trial_dir / TRIAL_FILE)
    if not isinstance(meta, dict):
        warnings.append(f"{trial_dir.name}: {TRIAL_FILE} is not a JSON object; trial skipped")
        return None
    params = _flatten(meta.get("params") or {})
    number = meta.get("number")
    number = int(number) if isinstance(number, (int, float)) and not isinstance(number, bool) else None

    epochs = _read_metrics(trial_dir, warnings)
    status_path = trial_dir / STATUS_FILE
    status_doc = _read_json(status_path) if status_path.exists() else {}
    if not isinstance(status_doc, dict):
        # Being rewritten as we read it: the trial is alive, so call it running.
        warnings.append(f"{trial_dir.name}: unreadable {STATUS_FILE}; counted as running")
        status_doc = {}
    status = status_doc.get("status") or "running"
    if status not in STATUSES:
        warnings.append(f"{trial_dir.name}: unknown status {status!r}; counted as running")
        status = "running"

    n_epochs = max((e["epoch"] for e in epochs), default=None)
    if n_epochs is None:
        n_epochs = int(status_doc.get("epochs") or 0)
    max_epochs = status_doc.get("max_epochs")
    nodes = list(dict.fromkeys(str(e["node"]) for e in epochs if e.get("node")))
    info = {
        "number": number,
        "trial_id": str(meta.get("trial_id") or trial_dir.name),
        "status": status,
        "status_detail": _detail(status, n_epochs, max_epochs, status_doc.get("reason")),
        "epochs": n_epochs,
        "max_epochs": max_epochs,
        # A resumed trial may move; all nodes are kept, last one last.
        "node": ";".join(nodes) if nodes else None,
        "reason": status_doc.get("reason"),
        "trial_dir": trial_dir.name,
    }
    return info, params, epochs


def _read_metrics(trial_dir: Path, warnings: list[str]) -> list[dict]:
    path = trial_dir / METRICS_FILE
    if not path.exists():
        return []
    by_epoch: dict[int, dict] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            epoch = int(row["epoch"])
        except (ValueError, TypeError, KeyError):
            bad += 1
            continue
        # After a crash and resume an epoch is reported again: the later line is the one that counts.
        by_epoch[epoch] = {**row, "epoch": epoch}
    if bad:
        warnings.append(f"{trial_dir.name}: skipped {bad} unreadable line(s) in {METRICS_FILE} (still being written?)")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _flatten(tree: dict, prefix: str = "") -> dict:
    """Params are flat dotted keys by contract; a nested dict is flattened the same way anyway."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[f"{prefix}{key}"] = str(list(value))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _hashable(value):
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def _kind(values: list) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "categorical"


def _detail(status: str, epochs: int, max_epochs, reason) -> str:
    of = f" of {max_epochs}" if max_epochs else ""
    if status == "finished":
        return f"finished after {epochs}{of} epochs"
    if status == "stopped":
        return f"stopped by ASHA at epoch {epochs}{of}"
    if status == "errored":
        return f"errored at epoch {epochs}{of}" + (f": {reason}" if reason else "")
    return f"running, {epochs}{of} epochs done"


def _numeric_metric_keys(epochs: pd.DataFrame) -> list[str]:
    skip = {"number", "trial_id", "status", "epoch", "node"}
    keys = []
    for col in epochs.columns:
        if col in skip:
            continue
        values = pd.to_numeric(epochs[col], errors="coerce")
        if values.notna().any() and values.notna().sum() == epochs[col].notna().sum():
            keys.append(col)
    return keys


def _with_final_and_best(trials: pd.DataFrame, epochs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """final_<m>: the last epoch's value; best_<m>: the best over epochs where "best" has a direction."""
    if not len(epochs):
        for m in metrics:
            trials[f"final_{m}"] = math.nan
        return trials
    ordered = epochs.sort_values(["trial_id", "epoch"])
    # The last row, not the last non-null value: a loss that ended NaN must show as NaN.
    last = ordered.groupby("trial_id").tail(1).set_index("trial_id")
    columns = {f"final_{m}": pd.to_numeric(last[m], errors="coerce") for m in metrics}
    for m in metrics:
        how = direction(m)
        if how and not re.search(r"(^|_)ceiling_", m):
            values = pd.to_numeric(ordered[m], errors="coerce")
            columns[f"best_{m}"] = getattr(values.groupby(ordered["trial_id"]), how)()
    table = pd.DataFrame(columns)
    return trials.join(table, on="trial_id")


def _study_name(path: Path) -> str:
    """The study's name from study.yaml when it has one; else the folder name."""
    yaml_path = path / "study.yaml"
    if yaml_path.exists():
        try:
            import yaml

            doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("name"), str):
                return doc["name"]
        except Exception:  # a broken study.yaml must not stop the analysis of its trials
            pass
    return path.resolve().name
