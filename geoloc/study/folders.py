"""The study folder and the trial folder: every file name, the trial statuses, and how each file is
read and written. Torch-free and Ray-free, so the analysis reads studies on a laptop without either.

A study folder ``STORAGE/<study>/`` (``StudyFolder``) holds:

| file | written by | what |
| --- | --- | --- |
| ``study.yaml`` | the launcher, before Ray starts | the resolved study that ran |
| ``metrics.json`` | the launcher, before Ray starts | the metric registry (``geoloc.common.metrics``) |
| ``manifest.json`` | the launcher, at each start and resume | what made it (``geoloc.study.manifest``) |
| ``optuna.db`` | the searcher (driver) | Optuna's SQLite storage |
| ``.lock``, ``driver.json`` | the launcher, while it runs | the study lock and its holder (``geoloc.tuning.lock``) |
| ``trial_<id>/`` | see below | one folder per trial |

A trial folder (``TrialFolder``; also the ``--out`` folder of ``python -m geoloc.train``) holds:

| file | written by | what |
| --- | --- | --- |
| ``trial.json`` | the trial's worker, at its start | ``trial_id``, ``number``, ``params`` (flat dotted keys), ``run`` |
| ``config.json`` | the run, at its start | the resolved run configuration |
| ``metrics.jsonl`` | the run, one line as each epoch ends | the epoch's flat metrics dict (mean over seeds) |
| ``seeds.jsonl`` | the run, with ``search.seeds`` > 1 | each seed's own metrics dict of each epoch, with ``seed`` |
| ``curves.jsonl`` | the run, as each epoch ends | fine error curves: ``epoch``, ``seed``, ``set``, ``km``, ``acc`` |
| ``predictions/epoch_<e>.npz`` | the run, as each epoch ends | per-image predictions (``geoloc.study.predictions``) |
| ``<run>/`` | the run | its TensorBoard events: scalars and the HParams session (``events_dir``) |
| ``<run>/seed_<s>/`` | the run, with ``search.seeds`` > 1 | each seed's TensorBoard events |
| ``checkpoint.pt`` | the run, as each epoch ends (torch) | the state to resume from |
| ``status.json`` | two writers, see below | ``StatusRecord`` |

``status.json`` has two writers, in this order. The worker writes ``running`` when the trial
starts and ``errored`` when it stops itself (a diverged loss). The driver's searcher writes the
outcome when Ray tells it the trial ended (``finished``, ``stopped`` by the study's scheduler, ASHA or
MOASHA, which ``stopped_by`` names, or ``errored`` when the worker died), because only the driver
knows why a trial ended; the worker never writes
after Ray has been told, so the driver's record is the last word.

The three ``.jsonl`` logs are append-only while a run lives. A resumed run first drops the lines
after its checkpoint's epoch (``truncate_after``); readers tolerate a half-written last line and
let a later line of the same key (epoch; epoch and seed; epoch, seed and set) win.

``<run>`` is ``trial.json``'s ``run``, the TensorBoard run's name (``t0003 batch_sigma=5 lr=0.001``,
``geoloc.study.runname``), so that TensorBoard's run selector shows each trial's number and values; a
folder without it (``python -m geoloc.train --out DIR``) keeps its events in the folder itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from geoloc.common.atomic import read_json, write_json, write_text


class Status(str, Enum):
    """Where a trial stands; the value is what ``status.json`` stores."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"  # by the scheduler (ASHA or MOASHA: StatusRecord.stopped_by) before its last epoch
    ERRORED = "errored"

    @property
    def counted(self) -> bool:
        """Trials whose metrics mean something: they finished, or the scheduler stopped them after a full epoch."""
        return self in (Status.FINISHED, Status.STOPPED)


@dataclass(frozen=True)
class StatusRecord:
    """The content of ``status.json``."""

    status: Status
    epochs: int = 0  # epochs completed
    max_epochs: int | None = None  # epochs the trial was configured for
    reason: str | None = None  # why it errored (shown to the user and stored in Optuna)
    pid: int | None = None  # the worker's process while running
    stopped_by: str | None = None  # the scheduler that stopped it: "ASHA", "MOASHA" (None in older records)

    def describe(self) -> str:
        """One readable phrase: "stopped by MOASHA at epoch 3 of 6", "errored at epoch 2: ..."."""
        of = f" of {self.max_epochs}" if self.max_epochs else ""
        if self.status is Status.FINISHED:
            return f"finished after {self.epochs}{of} epochs"
        if self.status is Status.STOPPED:
            by = f" by {self.stopped_by}" if self.stopped_by else " early"
            return f"stopped{by} at epoch {self.epochs}{of}"
        if self.status is Status.ERRORED:
            return f"errored at epoch {self.epochs}{of}" + (f": {self.reason}" if self.reason else "")
        return f"running, {self.epochs}{of} epochs done"

    def to_json(self) -> dict:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_json(cls, doc: dict) -> StatusRecord:
        """Raises ValueError for a status word this version does not know."""
        return cls(
            status=Status(doc.get("status")),
            epochs=int(doc.get("epochs") or 0),
            max_epochs=doc.get("max_epochs"),
            reason=doc.get("reason"),
            pid=doc.get("pid"),
            stopped_by=doc.get("stopped_by"),
        )


@dataclass
class MetricsLog:
    """What ``metrics.jsonl`` holds: one row per epoch (the later line wins) and how many lines were unreadable."""

    rows: list[dict]
    unreadable: int = 0

    @property
    def last(self) -> dict | None:
        return self.rows[-1] if self.rows else None


class TrialFolder:
    """One trial's (or one run's) folder: paths, and the reads and writes of its records."""

    TRIAL = "trial.json"
    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    SEEDS = "seeds.jsonl"
    CURVES = "curves.jsonl"
    LOGS = {METRICS: ("epoch",), SEEDS: ("epoch", "seed"), CURVES: ("epoch", "seed", "set")}  # log -> its row key
    PREDICTIONS = "predictions"  # a folder: one epoch_<e>.npz per evaluated epoch (geoloc.study.predictions)
    STATUS = "status.json"
    CHECKPOINT = "checkpoint.pt"
    PREFIX = "trial_"  # trial folders are named trial_<Ray trial id>

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of_trial(cls, study_dir: str | Path, trial_id: str) -> TrialFolder:
        return cls(Path(study_dir) / f"{cls.PREFIX}{trial_id}")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    def exists(self) -> bool:
        return self.path.is_dir()

    def events_dir(self) -> Path:
        """The run's TensorBoard folder: ``trial.json``'s ``run`` inside this folder, else the folder itself."""
        run = (self.read_trial() or {}).get("run")
        safe = isinstance(run, str) and run not in ("", ".", "..") and Path(run).name == run
        return self.path / run if safe else self.path

    def seed_dir(self, seed: int) -> Path:
        """The TensorBoard folder of one seed of a trial that trains several: inside the run's (its name holds both)."""
        return self.events_dir() / f"seed_{seed}"

    # -- trial.json and config.json: written once at the start ----------------------------------

    def write_trial(self, trial_id: str, number: int | None, params: dict, run: str | None = None) -> None:
        """``run``: the TensorBoard run's folder name (``geoloc.study.runname.run_name``), if any."""
        doc = {"trial_id": trial_id, "number": number, "params": params}
        write_json(self.path / self.TRIAL, doc | ({"run": run} if run else {}))

    def read_trial(self) -> dict | None:
        """``trial.json``, or None when it is missing or not a JSON object."""
        return self._read_object(self.TRIAL)

    def write_config(self, config: dict) -> None:
        write_json(self.path / self.CONFIG, config)

    def read_config(self) -> dict | None:
        """``config.json``, or None when it is missing or not a JSON object."""
        return self._read_object(self.CONFIG)

    def _read_object(self, name: str) -> dict | None:
        doc = read_json(self.path / name)
        return doc if isinstance(doc, dict) else None

    # -- the .jsonl logs: metrics, seeds, curves -------------------------------------------------

    def append(self, log: str, row: dict) -> None:
        """One row as one line of ``log`` (one of ``LOGS``); the row holds the log's key fields."""
        with (self.path / log).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def append_metrics(self, row: dict) -> None:
        """One epoch's metrics as one line; ``row["epoch"]`` is required."""
        self.append(self.METRICS, row)

    def read_log(self, log: str) -> MetricsLog:
        """Every key once, by epoch; a line that does not parse (half-written) is counted, not fatal."""
        path = self.path / log
        if not path.exists():
            return MetricsLog([])
        fields = self.LOGS[log]
        by_key: dict[tuple, dict] = {}
        unreadable = 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["epoch"] = int(row["epoch"])
                key = tuple(row[f] for f in fields)
            except (ValueError, TypeError, KeyError):
                unreadable += 1
                continue
            by_key[key] = row  # after a resume, the later line counts
        # By epoch; within an epoch in the order written (seeds, then sets, as the run wrote them).
        return MetricsLog([by_key[k] for k in sorted(by_key, key=lambda k: k[0])], unreadable)

    def read_metrics(self) -> MetricsLog:
        return self.read_log(self.METRICS)

    def read_seeds(self) -> MetricsLog:
        """Each seed's metrics per epoch; a one-seed run's ``metrics.jsonl`` rows with its ``train.seed``."""
        if (self.path / self.SEEDS).exists():
            return self.read_log(self.SEEDS)
        log = self.read_metrics()
        seed = ((self.read_config() or {}).get("train") or {}).get("seed")
        return MetricsLog([{**row, "seed": seed} for row in log.rows], log.unreadable)

    def truncate_after(self, epoch: int) -> None:
        """Keep the epochs up to ``epoch`` (a resumed run's checkpoint) so none is written twice."""
        for log in self.LOGS:
            if (self.path / log).exists():
                kept = [row for row in self.read_log(log).rows if row["epoch"] <= epoch]
                write_text(self.path / log, "".join(json.dumps(row) + "\n" for row in kept))
        for path in (self.path / self.PREDICTIONS).glob("epoch_*.npz"):
            if path.stem.removeprefix("epoch_").isdigit() and int(path.stem.removeprefix("epoch_")) > epoch:
                path.unlink(missing_ok=True)

    def clear_metrics(self) -> None:
        for log in self.LOGS:
            (self.path / log).unlink(missing_ok=True)
        for path in (self.path / self.PREDICTIONS).glob("epoch_*.npz"):
            path.unlink(missing_ok=True)

    # -- status.json -----------------------------------------------------------------------------

    def write_status(self, record: StatusRecord) -> None:
        write_json(self.path / self.STATUS, record.to_json())

    def read_status(self) -> StatusRecord | None:
        """None when there is no status file yet; ValueError when it is unreadable or its status unknown."""
        path = self.path / self.STATUS
        if not path.exists():
            return None
        doc = read_json(path)
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: not a JSON object (being rewritten?)")
        return StatusRecord.from_json(doc)

    def recorded_status(self) -> StatusRecord | None:
        """``status.json``, or None when it is missing or unreadable (a trial cut short counts so)."""
        try:
            return self.read_status()
        except ValueError:
            return None

    def ended(self) -> bool:
        """True when the status file says the trial finished or was stopped (unreadable counts as not)."""
        record = self.recorded_status()
        return record is not None and record.status.counted


class StudyFolder:
    """A study's folder: its own files and its trial folders."""

    STUDY = "study.yaml"
    REGISTRY = "metrics.json"
    OPTUNA_DB = "optuna.db"
    ORPHANS = ".orphaned"  # trial folders of Optuna trials that a killed driver left behind
    LOCK = ".lock"  # held by the one launcher that runs the study (geoloc.tuning.lock)
    DRIVER = "driver.json"  # that launcher: host, pid, since when, command
    LAUNCHER_FILES = (LOCK, DRIVER)  # there only while a launcher runs: not part of the study
    ANALYSIS = "analysis"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def optuna_db(self) -> Path:
        return self.path / self.OPTUNA_DB

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.optuna_db}"

    def trial(self, trial_id: str) -> TrialFolder:
        return TrialFolder.of_trial(self.path, trial_id)

    def trials(self) -> list[TrialFolder]:
        """Every folder directly inside that holds a ``trial.json``, by name."""
        return [TrialFolder(p.parent) for p in sorted(self.path.glob(f"*/{TrialFolder.TRIAL}"))]

    def nested_study(self) -> Path | None:
        """A study folder one level down (the user named its parent), for a helpful error."""
        nested = sorted({p.parent.parent for p in self.path.glob(f"*/*/{TrialFolder.TRIAL}")})
        return nested[0] if nested else None

    def write_study(self, text: str) -> None:
        write_text(self.path / self.STUDY, text)

    def read_study_text(self) -> str | None:
        try:
            return (self.path / self.STUDY).read_text(encoding="utf-8")
        except OSError:
            return None
