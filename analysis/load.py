"""Read a study directory into DataFrames: one row per trial; per trial and epoch; per trial, seed and
epoch; and the fine error curves (per trial, seed, epoch, evaluation set and distance).

Only the files the launcher writes are read: the trial folders through ``geoloc.study.folders``
(trial records, metrics, statuses), the study file and the metric registry through
``definition.py``. So a finished study, a running one, or a copy on a laptop all read the same,
without Ray or torch. A study that is still running is being written while we read it: a
half-written last line or status file is skipped with a warning rather than treated as a user's
mistake.

A run with ``eval.at_start: true`` evaluates before training and logs that as epoch 0 (no
train_loss, lr or train_s). Epoch 0 is no training budget, so it is kept apart here, once:
``Study.epochs`` and ``Study.seeds`` (and the final and best values built from them) hold the
trained epochs only, and ``Study.start`` and ``Study.start_seeds`` the epoch-0 rows. Everything
that compares trials at an epoch reads the former and so never sees epoch 0; the ablation tables'
first row and the learning curves read the latter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from geoloc.common.metrics import MetricRegistry
from geoloc.study.folders import Status, StatusRecord, StudyFolder, TrialFolder
from geoloc.study.manifest import MANIFEST, differences, read_manifest
from geoloc.study.studyfile import StudyConfig

from . import frames
from .definition import read_definition

START = frames.START  # the epoch of the evaluation before training (eval.at_start)
_TRIAL_COLUMNS = (
    "number",
    "trial_id",
    "status",
    "status_detail",
    "stopped_by",
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
    registry: MetricRegistry  # what each metric key means: direction, fraction, threshold (metrics.json)
    config: StudyConfig | None = None  # study.yaml, validated; None without a valid one (definition.py)
    warnings: list[str] = field(default_factory=list)
    manifest: dict | None = None  # manifest.json (geoloc.study.manifest); None for a study made before it

    @property
    def primary_set(self) -> str | None:
        """The name of the first evaluation set (the one ``score`` and the plain metric keys belong to)."""
        return next((m.eval_set for m in self.registry if m.primary), None)

    @property
    def accuracies(self) -> list[str]:
        """The primary evaluation set's accuracy keys that the trials reported, finest threshold first
        (none for a registry without accuracies)."""
        return [key for key in self.registry.accuracies() if key in self.metrics]

    @property
    def ceilings(self) -> list[str]:
        """The primary evaluation set's ceiling keys that the trials reported, finest first."""
        return [key for key in self.registry.ceilings() if key in self.metrics]

    @property
    def stopped_words(self) -> str:
        """How the study's early stops are named: by the scheduler their status records name ("stopped
        early by ASHA", or MOASHA), else the study file's, else "stopped early"."""
        named = sorted(set(self.trials["stopped_by"].dropna())) if "stopped_by" in self.trials else []
        if not named and self.config is not None and self.config.scheduler.name:
            named = [self.config.scheduler.name]  # records written before they named it
        return f"stopped early by {' and '.join(named)}" if named else "stopped early"

    def counted(self) -> pd.DataFrame:
        """Trials that finished or were stopped early by the scheduler: the ones tables and statistics use."""
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

    definition = read_definition(folder)
    warnings += definition.warnings
    manifest = read_manifest(path)
    if manifest is not None and differences(manifest):
        warnings.append(
            f"the study's {len(manifest['sessions'])} launcher sessions were made by different code or data: "
            f"{'; '.join(differences(manifest))} ({MANIFEST})"
        )
    registry = definition.registry
    params = list(dict.fromkeys(k for p in raw_params for k in p))
    clashes = [k for k in params if k in _TRIAL_COLUMNS or k.startswith(("final_", "best_"))]
    if clashes:
        warnings.append(f"hyperparameter(s) {', '.join(clashes)} clash with trials.csv's own columns; left out")
        params = [k for k in params if k not in clashes]
        raw_params = [{k: v for k, v in p.items() if k not in clashes} for p in raw_params]
    kinds = {k: frames.kind([p[k] for p in raw_params if k in p]) for k in params}
    varied = [k for k in params if len({frames.hashable(p[k]) for p in raw_params if k in p}) > 1]

    epochs = frames.log_frame(epoch_rows)
    metric_keys = frames.numeric_metric_keys(epochs)  # epoch 0 included: a study may have no trained epoch yet
    start, epochs = frames.split_start(epochs)
    trials = pd.DataFrame(rows)
    for col in ("number", "max_epochs"):
        trials[col] = pd.to_numeric(trials[col], errors="coerce").astype("Int64")
    for k in params:
        trials[k] = [p.get(k) for p in raw_params]
    trials = frames.with_final_and_best(trials, epochs, metric_keys, registry)
    trials = trials.sort_values(["number", "trial_id"], na_position="last").reset_index(drop=True)

    by_trial = {t: p for t, p in zip([r["trial_id"] for r in rows], raw_params, strict=True)}
    epochs = frames.per_epoch(epochs, ["epoch"], params, by_trial)
    start = frames.per_epoch(start, ["epoch"], params, by_trial)
    start_seeds, seeds = frames.split_start(frames.log_frame(seed_rows))
    seeds = frames.per_epoch(seeds, ["seed", "epoch"], params, by_trial)
    start_seeds = frames.per_epoch(start_seeds, ["seed", "epoch"], params, by_trial)

    config = definition.config
    return Study(
        path=path,
        name=config.name if config is not None else path.resolve().name,
        trials=trials,
        epochs=epochs,
        seeds=seeds,
        curves=frames.curve_table(curve_rows),
        start=start,
        start_seeds=start_seeds,
        params=params,
        param_kinds=kinds,
        varied=varied,
        metrics=metric_keys,
        registry=registry,
        config=config,
        warnings=warnings,
        manifest=manifest,
    )


def _read_trial(trial: TrialFolder, warnings: list[str]):
    """(info, params, epoch rows) of one trial folder, or None when its trial.json is unreadable."""
    meta = trial.read_trial()
    if meta is None:
        warnings.append(f"{trial.name}: {TrialFolder.TRIAL} is not a JSON object; trial skipped")
        return None
    params = frames.flatten(meta.get("params") or {})
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
        "stopped_by": record.stopped_by,
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
