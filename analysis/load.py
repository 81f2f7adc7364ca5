"""Read a study directory into two DataFrames: one row per trial, one row per trial and epoch.

Only the files the launcher writes are read, through ``geoloc.folders`` (trial records, metrics,
statuses) and ``geoloc.metrics`` (the study's metric registry), so a finished study, a running
one, or a copy on a laptop all read the same, without Ray or torch. A study that is still
running is being written while we read it: a half-written last line or status file is skipped
with a warning rather than treated as a user's mistake.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from geoloc.config import DataConfig, EvalConfig
from geoloc.folders import Status, StatusRecord, StudyFolder, TrialFolder
from geoloc.metrics import MetricRegistry, eval_set_name

NOISE_PARAM = "train.noise.batch_sigma"
_TRIAL_COLUMNS = (
    "number",
    "trial_id",
    "status",
    "status_detail",
    "epochs",
    "max_epochs",
    "node",
    "reason",
    "trial_dir",
)


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
    metrics: list[str]  # numeric per-epoch metric keys (registry-known or not)
    registry: MetricRegistry  # what each metric key means: direction, fraction, threshold
    warnings: list[str] = field(default_factory=list)

    @property
    def accuracies(self) -> list[str]:
        """The primary evaluation set's accuracy keys that the trials reported, finest threshold first."""
        return [key for key in self.registry.accuracies() if key in self.metrics]

    @property
    def ceilings(self) -> list[str]:
        """The primary evaluation set's gallery-ceiling keys that the trials reported, finest first."""
        return [key for key in self.registry.ceilings() if key in self.metrics]

    def counted(self) -> pd.DataFrame:
        """Trials that finished or were stopped by ASHA: the ones tables and statistics use."""
        return self.trials[self.trials["status"].isin([s.value for s in Status if s.counted])]


def read_study(study_dir: str | Path) -> Study:
    """The study in ``study_dir`` (a folder of trial folders); AnalysisError when it is not one."""
    path = Path(study_dir)
    if not path.exists():
        raise AnalysisError(f"{path}: no such directory (expected a study directory written by tune_main.py)")
    if not path.is_dir():
        raise AnalysisError(f"{path}: not a directory (expected a study directory written by tune_main.py)")

    folder = StudyFolder(path)
    warnings: list[str] = []
    trial_folders = folder.trials()
    if not trial_folders:
        nested = folder.nested_study()
        hint = f"; did you mean {nested}?" if nested else ""
        raise AnalysisError(
            f"{path}: no trials found (expected trial folders with {TrialFolder.TRIAL}, written by tune_main.py){hint}"
        )

    rows, epoch_rows, raw_params = [], [], []
    for trial in trial_folders:
        read = _read_trial(trial, warnings)
        if read is None:
            continue
        info, params, epochs = read
        if info["trial_id"] in {r["trial_id"] for r in rows}:
            # A copied trial folder: keep both, told apart by folder name, rather than merge their curves.
            warnings.append(f"{trial.name}: trial_id {info['trial_id']} appears twice; renamed by its folder")
            info["trial_id"] = f"{info['trial_id']}@{trial.name}"
        rows.append(info)
        raw_params.append(params)
        for e in epochs:
            epoch_rows.append({"number": info["number"], "trial_id": info["trial_id"], "status": info["status"], **e})
    if not rows:
        raise AnalysisError(
            f"{path}: no readable trials ({len(trial_folders)} {TrialFolder.TRIAL} files, none valid JSON)"
        )

    study_doc = _study_doc(folder)
    registry = _registry(folder, study_doc, warnings)
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
    trials = _with_final_and_best(trials, epochs, metric_keys, registry)
    trials = trials.sort_values(["number", "trial_id"], na_position="last").reset_index(drop=True)

    if len(epochs):
        by_trial = {t: p for t, p in zip([r["trial_id"] for r in rows], raw_params, strict=True)}
        for k in params:
            if k not in epochs.columns:  # a metric of the same name wins; trials.csv still has the param
                epochs[k] = [by_trial[t].get(k) for t in epochs["trial_id"]]
        epochs["number"] = pd.to_numeric(epochs["number"], errors="coerce").astype("Int64")
        epochs = epochs.sort_values(["number", "trial_id", "epoch"], na_position="last").reset_index(drop=True)
    else:
        epochs = pd.DataFrame(columns=["number", "trial_id", "status", "epoch", *params])

    name = study_doc.get("name")
    return Study(
        path=path,
        name=name if isinstance(name, str) else path.resolve().name,
        trials=trials,
        epochs=epochs,
        params=params,
        param_kinds=kinds,
        varied=varied,
        metrics=metric_keys,
        registry=registry,
        warnings=warnings,
    )


def _read_trial(trial: TrialFolder, warnings: list[str]):
    """(info, params, epoch rows) of one trial folder, or None when its trial.json is unreadable."""
    meta = trial.read_trial()
    if meta is None:
        warnings.append(f"{trial.name}: {TrialFolder.TRIAL} is not a JSON object; trial skipped")
        return None
    params = _flatten(meta.get("params") or {})
    number = meta.get("number")
    number = int(number) if isinstance(number, (int, float)) and not isinstance(number, bool) else None

    log = trial.read_metrics()
    if log.unreadable:
        warnings.append(
            f"{trial.name}: skipped {log.unreadable} unreadable line(s) in {TrialFolder.METRICS} (still being written?)"
        )
    try:
        record = trial.read_status() or StatusRecord(Status.RUNNING)  # no status file yet: just started
    except (ValueError, TypeError) as exc:
        # Being rewritten as we read it, or written by a newer version: the trial is alive, so call it running.
        warnings.append(f"{trial.name}: unreadable {TrialFolder.STATUS} ({exc}); counted as running")
        record = StatusRecord(Status.RUNNING)
    if log.rows:  # the epochs reported, which may run ahead of the status file
        record = dataclasses.replace(record, epochs=log.last["epoch"])
    nodes = list(dict.fromkeys(str(e["node"]) for e in log.rows if e.get("node")))
    info = {
        "number": number,
        "trial_id": str(meta.get("trial_id") or trial.name),
        "status": record.status.value,
        "status_detail": record.describe(),
        "epochs": record.epochs,
        "max_epochs": record.max_epochs,
        # A resumed trial may move; all nodes are kept, last one last.
        "node": ";".join(nodes) if nodes else None,
        "reason": record.reason,
        "trial_dir": trial.name,
    }
    return info, params, log.rows


def _study_doc(folder: StudyFolder) -> dict:
    """study.yaml as a dict; {} when it is missing or broken (that must not stop the analysis of its trials)."""
    text = folder.read_study_text()
    if text is None:
        return {}
    try:
        import yaml

        doc = yaml.safe_load(text)
    except Exception:
        return {}
    return doc if isinstance(doc, dict) else {}


def _registry(folder: StudyFolder, study_doc: dict, warnings: list[str]) -> MetricRegistry:
    """The study's metrics.json; else the registry its study.yaml implies, with a warning saying so."""
    path = folder.path / StudyFolder.REGISTRY
    if path.exists():
        try:
            return MetricRegistry.load(path)
        except (OSError, ValueError, TypeError) as exc:
            problem = f"unreadable {StudyFolder.REGISTRY} ({type(exc).__name__})"
    else:
        problem = f"no {StudyFolder.REGISTRY} (a study written before it existed, or a hand-made folder)"
    base = _dict(study_doc.get("base"))
    thresholds = _dict(base.get("eval")).get("thresholds_km")
    if not (isinstance(thresholds, list) and thresholds and all(_positive(t) for t in thresholds)):
        thresholds = list(EvalConfig().thresholds_km)
    val = _dict(base.get("data")).get("val")
    val = [val] if isinstance(val, str) else val
    if not (isinstance(val, list) and val and all(isinstance(v, str) and v for v in val)):
        val = list(DataConfig().val)
    sets = [eval_set_name(v) for v in val]
    source = StudyFolder.STUDY if study_doc else f"the defaults (no readable {StudyFolder.STUDY})"
    warnings.append(
        f"{problem}; metrics taken from {source}: thresholds "
        f"{', '.join(f'{float(t):g}' for t in sorted(thresholds))} km, evaluation sets {', '.join(sets)}"
    )
    return MetricRegistry.build([float(t) for t in thresholds], sets)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


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


def _with_final_and_best(
    trials: pd.DataFrame, epochs: pd.DataFrame, metrics: list[str], registry: MetricRegistry
) -> pd.DataFrame:
    """final_<m>: the last epoch's value; best_<m>: the best over epochs, where the registry gives m a direction."""
    if not len(epochs):
        for m in metrics:
            trials[f"final_{m}"] = math.nan
        return trials
    ordered = epochs.sort_values(["trial_id", "epoch"])
    # The last row, not the last non-null value: a loss that ended NaN must show as NaN.
    last = ordered.groupby("trial_id").tail(1).set_index("trial_id")
    columns = {f"final_{m}": pd.to_numeric(last[m], errors="coerce") for m in metrics}
    for m in metrics:
        how = registry.direction(m)
        if how:
            values = pd.to_numeric(ordered[m], errors="coerce")
            columns[f"best_{m}"] = getattr(values.groupby(ordered["trial_id"]), how)()
    table = pd.DataFrame(columns)
    return trials.join(table, on="trial_id")
