"""Read a study directory into DataFrames: one row per trial; per trial and epoch; per trial, seed and
epoch; and the fine error curves (per trial, seed, epoch, evaluation set and distance).

Only the files the launcher writes are read, through ``geoloc.study.folders`` (trial records, metrics,
statuses) and ``geoloc.metrics`` (the study's metric registry), so a finished study, a running
one, or a copy on a laptop all read the same, without Ray or torch. A study that is still
running is being written while we read it: a half-written last line or status file is skipped
with a warning rather than treated as a user's mistake.

A run with ``eval.at_start: true`` evaluates before training and logs that as epoch 0 (no
train_loss, lr or train_s). Epoch 0 is no training budget, so it is kept apart here, once:
``Study.epochs`` and ``Study.seeds`` (and the final and best values built from them) hold the
trained epochs only, and ``Study.start`` and ``Study.start_seeds`` the epoch-0 rows. Everything
that compares trials at an epoch reads the former and so never sees epoch 0; the ablation tables'
first row and the learning curves read the latter.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from geoloc.common.metrics import MetricRegistry
from geoloc.data.config import DataConfig, eval_set_name
from geoloc.study.folders import Status, StatusRecord, StudyFolder, TrialFolder
from geoloc.tasks.geoclip.config import EvalConfig

NOISE_PARAM = "train.noise.batch_sigma"
START = 0  # the epoch of the evaluation before training (eval.at_start)
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
    # One row per trial, seed and epoch: number, trial_id, status, seed, epoch, metrics, params.
    # A trial of ``search.seeds: K`` has K rows per epoch (seeds.jsonl); any other trial one, its
    # metrics.jsonl row with its seed (config.json's train.seed, else its train.seed parameter).
    seeds: pd.DataFrame
    # The fine error curves, long: trial_id, seed, epoch, set, km, acc (one row per distance).
    # Every epoch logged, epoch 0 included: they are only ever picked by the compared epoch.
    curves: pd.DataFrame
    # The evaluations before training (epoch 0, eval.at_start), apart from ``epochs`` and ``seeds``
    # (module docstring): per trial, and per trial and seed; with the columns of those, empty without.
    start: pd.DataFrame
    start_seeds: pd.DataFrame
    params: list[str]  # every hyperparameter, in first-seen order
    param_kinds: dict[str, str]  # "int" | "float" | "categorical"
    varied: list[str]  # hyperparameters with more than one value across the trials
    metrics: list[str]  # numeric per-epoch metric keys (registry-known or not)
    registry: MetricRegistry  # what each metric key means: direction, fraction, threshold
    spec: dict = field(default_factory=dict)  # study.yaml (base, search_space, scheduler, ...); {} when unreadable
    warnings: list[str] = field(default_factory=list)

    @property
    def primary_set(self) -> str | None:
        """The name of the first evaluation set (the one ``score`` and the plain metric keys belong to)."""
        return next((m.eval_set for m in self.registry if m.primary), None)

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

    def every_epoch(self) -> pd.DataFrame:
        """``epochs`` with the epoch-0 rows in place (epochs.csv and the learning curves); ``epochs``
        itself when there are none."""
        if not len(self.start):
            return self.epochs
        columns = list(dict.fromkeys([*self.epochs.columns, *self.start.columns]))
        parts = [part for part in (self.start, self.epochs) if len(part)]  # concat warns on an empty part
        every = pd.concat(parts, ignore_index=True).reindex(columns=columns)
        return every.sort_values(["number", "trial_id", "epoch"], na_position="last", kind="stable").reset_index(
            drop=True
        )


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

    rows, epoch_rows, seed_rows, curve_rows, raw_params = [], [], [], [], []
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
        key = {"number": info["number"], "trial_id": info["trial_id"], "status": info["status"]}
        epoch_rows += [{**key, **e} for e in epochs]
        seeds, curves = _read_seeds_and_curves(trial, params, warnings)
        seed_rows += [{**key, **e} for e in seeds]
        curve_rows += [{"trial_id": info["trial_id"], **c} for c in curves]
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

    epochs = _log_frame(epoch_rows)
    metric_keys = _numeric_metric_keys(epochs)  # epoch 0 included: a study may have no trained epoch yet
    start, epochs = _split_start(epochs)
    trials = pd.DataFrame(rows)
    for col in ("number", "max_epochs"):
        trials[col] = pd.to_numeric(trials[col], errors="coerce").astype("Int64")
    for k in params:
        trials[k] = [p.get(k) for p in raw_params]
    trials = _with_final_and_best(trials, epochs, metric_keys, registry)
    trials = trials.sort_values(["number", "trial_id"], na_position="last").reset_index(drop=True)

    by_trial = {t: p for t, p in zip([r["trial_id"] for r in rows], raw_params, strict=True)}
    epochs = _per_epoch(epochs, ["epoch"], params, by_trial)
    start = _per_epoch(start, ["epoch"], params, by_trial)
    start_seeds, seeds = _split_start(_log_frame(seed_rows))
    seeds = _per_epoch(seeds, ["seed", "epoch"], params, by_trial)
    start_seeds = _per_epoch(start_seeds, ["seed", "epoch"], params, by_trial)
    curves = _curve_table(curve_rows)

    name = study_doc.get("name")
    return Study(
        path=path,
        name=name if isinstance(name, str) else path.resolve().name,
        trials=trials,
        epochs=epochs,
        seeds=seeds,
        curves=curves,
        start=start,
        start_seeds=start_seeds,
        params=params,
        param_kinds=kinds,
        varied=varied,
        metrics=metric_keys,
        registry=registry,
        spec=study_doc,
        warnings=warnings,
    )


def _log_frame(rows: list[dict]) -> pd.DataFrame:
    """Log rows as a frame, epoch-0 rows last: columns come in the order first seen, and an epoch-0
    row (first in its log) lacks train_loss, which must keep its place among the metrics."""
    return pd.DataFrame(sorted(rows, key=lambda row: row["epoch"] == START))  # stable: else in log order


def _split_start(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the epoch-0 rows, the trained epochs' rows) of a frame of log rows."""
    if not len(frame):
        return frame.copy(), frame
    before = frame["epoch"] == START
    return frame[before].reset_index(drop=True), frame[~before].reset_index(drop=True)


def _per_epoch(frame: pd.DataFrame, keys: list[str], params: list[str], by_trial: dict) -> pd.DataFrame:
    """A per-epoch table with the trial's hyperparameters on each row, sorted by trial, then ``keys``."""
    if not len(frame):
        return pd.DataFrame(columns=["number", "trial_id", "status", *keys, *params])
    for k in params:
        if k not in frame.columns:  # a metric of the same name wins; trials.csv still has the param
            frame[k] = [by_trial[t].get(k) for t in frame["trial_id"]]
    frame["number"] = pd.to_numeric(frame["number"], errors="coerce").astype("Int64")
    return frame.sort_values(["number", "trial_id", *keys], na_position="last").reset_index(drop=True)


def _curve_table(rows: list[dict]) -> pd.DataFrame:
    """curves.jsonl rows (lists of km and acc) as one row per distance."""
    columns = ["trial_id", "seed", "epoch", "set", "km", "acc"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)[columns].explode(["km", "acc"], ignore_index=True)
    return table.astype({"km": float, "acc": float})


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


def _read_seeds_and_curves(trial: TrialFolder, params: dict, warnings: list[str]) -> tuple[list[dict], list[dict]]:
    """Each seed's epoch rows (``TrialFolder.read_seeds``) and the error-curve rows of one trial.

    A one-seed run names its seed in config.json; a folder without one (older, or hand-made)
    takes the trial's train.seed parameter, so that its runs still pair by seed.
    """
    fallback = params.get("train.seed")
    logs = {TrialFolder.SEEDS: trial.read_seeds(), TrialFolder.CURVES: trial.read_log(TrialFolder.CURVES)}
    for name, log in logs.items():
        if log.unreadable and (trial.path / name).exists():  # metrics.jsonl's own are reported with it
            warnings.append(
                f"{trial.name}: skipped {log.unreadable} unreadable line(s) in {name} (still being written?)"
            )
    seeds, curves = (
        [{**row, "seed": fallback if row.get("seed") is None else row["seed"]} for row in log.rows]
        for log in logs.values()
    )
    whole = [c for c in curves if isinstance(c.get("km"), list) and len(c["km"]) == len(c.get("acc") or ())]
    return seeds, whole


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


def _with_final_and_best(
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
