"""The Optuna searcher of a study: proposes trials and records every outcome in Optuna as it happens.

The Optuna storage (``STUDY_DIR/optuna.db``) is the study's durable record: a trial's result is
written there the moment the trial ends, so a driver killed at any time loses nothing that
finished. Ray's ``OptunaSearch`` is not used because it reports an ASHA-stopped trial to Optuna
as COMPLETE with its partial value, which misleads TPE; here such a trial (stopped by ASHA or
MOASHA, which its ``status.json`` names) is PRUNED with its
per-epoch intermediate values, and an errored one FAIL with the reason in ``fail_reason``.
A pareto study (``objective.type: pareto``) is a multi-objective Optuna study: a finished trial
is told its objective values, and the per-epoch values, which Optuna keeps only for one
objective, go to the user attribute ``epoch_values``.
The searcher also writes each trial's outcome to its ``status.json`` (the driver's half of the
protocol in ``geoloc.folders``). Only Optuna's public API is used: trials are addressed by
number through the storage (``optuna.storages.BaseStorage``) and ``Study.tell``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
from ray.tune.search import Searcher

from geoloc.study.folders import Status, StatusRecord, StudyFolder
from geoloc.study.studyfile import StudyConfig, num_trials
from geoloc.tuning.optuna_trials import (
    EPOCH_VALUES,
    STARTED,
    WORKER_FAILED,
    TrialState,
    enqueued,
    make_sampler,
    name_metrics,
    objective_values,
    optuna_directions,
    sample,
)


class OptunaStudySearcher(Searcher):
    """Ray Tune's searcher interface over an Optuna study in ``storage_url``."""

    def __init__(self, study: StudyConfig, study_dir: Path, storage_url: str):
        super().__init__(metric="score", mode="max")
        self.study, self.folder, self.storage_url = study, StudyFolder(study_dir), storage_url
        self.objectives = list(study.objectives())  # the metric keys Optuna is told, in order
        self.multi = len(self.objectives) > 1  # a pareto study: per-epoch values go to a user attribute
        self.storage = optuna.storages.RDBStorage(storage_url)
        self.optuna = optuna.create_study(
            study_name=study.name,
            storage=self.storage,
            directions=optuna_directions(study),
            sampler=make_sampler(study),
            load_if_exists=True,
        )
        name_metrics(self.optuna, study)
        if self.optuna.trials:  # a resumed study
            self.optuna.sampler = make_sampler(study, len(self.optuna.trials))
        self.study_id = self.storage.get_study_id_from_name(study.name)
        self.live: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        if not self.optuna.trials:
            for params in enqueued(study):
                self.optuna.enqueue_trial(params)

    def __getstate__(self) -> dict:
        # Ray pickles the searcher with the experiment; the Optuna study is re-opened from its storage.
        return {
            "study": self.study,
            "study_dir": self.folder.path,
            "storage_url": self.storage_url,
            "live": self.get_state(),
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["study"], state["study_dir"], state["storage_url"])
        self.set_state(state["live"])

    # -- Optuna trials by number -------------------------------------------------------------------

    def _trial(self, number: int) -> optuna.Trial:
        return optuna.Trial(self.optuna, self._trial_id(number))

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _is_running(self, number: int) -> bool:
        return self.storage.get_trial(self._trial_id(number)).state == TrialState.RUNNING

    # -- Ray's searcher interface ------------------------------------------------------------------

    def suggest(self, trial_id: str):
        trial = self._rebind_orphan()
        if trial is None:
            # A trial can end after Ray's last snapshot and before a driver crash: Ray then does not
            # count it, but Optuna (and its folder) do, so the total is counted here.
            if len(self.optuna.get_trials(deepcopy=False, states=STARTED)) >= num_trials(self.study):
                return Searcher.FINISHED
            trial = self.optuna.ask()
        trial.set_user_attr("ray_trial_id", trial_id)
        self.live[trial_id] = trial.number
        return {"params": sample(trial, self.study), "number": trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.live:
            self._report(self.live[trial_id], trial_id, result)

    def _report(self, number: int, trial_id: str, result: dict | None, history: list[dict] | None = None) -> None:
        """Record in Optuna the objective values of ``result``'s epoch, and of any earlier epoch Optuna
        lacks: a killed driver never got that result (the trial resumed past it), so only then are
        they read from the trial folder's ``metrics.jsonl`` (or taken from ``history``, its rows when the
        caller has read them)."""
        if not result or "epoch" not in result:
            return
        frozen = self.storage.get_trial(self._trial_id(number))
        if frozen.state != TrialState.RUNNING:
            return
        recorded = frozen.user_attrs.get(EPOCH_VALUES, {}) if self.multi else frozen.intermediate_values
        epoch = int(result["epoch"])
        rows = [result]
        if any((str(e) if self.multi else e) not in recorded for e in range(1, epoch)):
            history = self.folder.trial(trial_id).read_metrics().rows if history is None else history
            rows = [row for row in history if row["epoch"] < epoch] + rows
        new = {}
        for row in rows:
            values, at = objective_values(self.objectives, row), int(row["epoch"])
            # Epoch 0 (eval.at_start) is the untrained model, not a step of training.
            if values is not None and at >= 1 and (str(at) if self.multi else at) not in recorded:
                new[at] = values
        if self.multi and new:  # JSON keys: the epoch as a string
            self._trial(number).set_user_attr(EPOCH_VALUES, recorded | {str(e): v for e, v in new.items()})
        elif new:
            for at, values in new.items():
                self._trial(number).report(values[0], step=at)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.live.pop(trial_id, None)
        folder = self.folder.trial(trial_id)
        recorded = folder.recorded_status()
        epochs = int((result or {}).get("epoch", recorded.epochs if recorded else 0) or 0)
        if error:
            reason = recorded.reason if recorded and recorded.status is Status.ERRORED else None
            outcome = StatusRecord(Status.ERRORED, epochs, self.study.epochs, reason=reason or WORKER_FAILED)
        elif epochs < self.study.epochs:
            outcome = StatusRecord(Status.STOPPED, epochs, self.study.epochs, stopped_by=self.study.scheduler.name)
        else:
            outcome = StatusRecord(Status.FINISHED, epochs, self.study.epochs)
        if folder.exists():
            folder.write_status(outcome)
        if number is None or not self._is_running(number):
            return  # already told (a trial that finished before a driver crash)
        self._report(number, trial_id, result)  # Ray hands the last result only to on_trial_complete
        self._tell(number, outcome, result)

    def _tell(self, number: int, outcome: StatusRecord, result: dict | None) -> None:
        """Close the Optuna trial with the outcome ``status.json`` holds (``result``: its last epoch)."""
        if outcome.status is Status.ERRORED:
            self._trial(number).set_user_attr("fail_reason", outcome.reason)
            self.optuna.tell(number, state=TrialState.FAIL)
        elif outcome.status is Status.STOPPED:
            self.optuna.tell(number, state=TrialState.PRUNED)
        else:
            values = objective_values(self.objectives, result)
            self.optuna.tell(number, values[0] if len(values) == 1 else values)

    # -- resume: Ray restores this searcher from its pickled state, with the Optuna study re-opened --

    def get_state(self) -> dict:
        return {"live": dict(self.live)}

    def set_state(self, state: dict) -> None:
        numbers = {t.number for t in self.optuna.get_trials(deepcopy=False)}
        self.live = {tid: n for tid, n in state["live"].items() if n in numbers}

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))

    def _rebind_orphan(self) -> optuna.Trial | None:
        """An Optuna trial left RUNNING by a killed driver, that Ray never recorded, is reused
        (same parameters) instead of being left dangling; its stale folder is set aside. One whose
        folder says it ended (the driver died between writing ``status.json`` and telling Optuna)
        is told its recorded outcome instead, and its folder kept."""
        known = set(self.live.values())
        for frozen in self.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number in known:
                continue
            ray_id = str(frozen.user_attrs.get("ray_trial_id"))
            stale = self.folder.trial(ray_id)
            if stale.ended() and (rows := stale.read_metrics().rows):
                self._report(frozen.number, ray_id, rows[-1], rows)
                self._tell(frozen.number, stale.read_status(), rows[-1])
                continue
            if stale.exists():
                (self.folder.path / StudyFolder.ORPHANS).mkdir(exist_ok=True)
                shutil.move(str(stale.path), self.folder.path / StudyFolder.ORPHANS / stale.name)
            return self._trial(frozen.number)
        return None
