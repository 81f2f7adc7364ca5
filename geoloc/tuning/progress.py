"""The launcher's quiet console (the default; ``--verbose`` shows Ray's trial table instead).

A Ray Tune callback (``tune.Callback``) prints one line per event that matters, with full parameter
names (never cut), and keeps one progress bar (tqdm, on stderr) of the epochs the study will train,
with trials ended, the best score so far and tqdm's estimate of the time left:

    trial 3 started: train.lr=0.000412, train.noise.batch_sigma=5
    trial 3 stopped by ASHA at epoch 2 (its rung): score=0.0731
    trial 4 finished after 4 epochs: score=0.1127
    trial 5 errored at epoch 1: the loss is nan at epoch 1 ...

The bar's total is every planned trial's full budget; a trial stopped early takes its unrun epochs off.
"""

from __future__ import annotations

import sys

from ray import tune

from geoloc.study.folders import StudyFolder
from geoloc.study.studyfile import StudyConfig, num_trials


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class QuietProgress(tune.Callback):
    """One line per trial event and one progress bar; ``out`` takes the lines (stdout by default)."""

    def __init__(self, study: StudyConfig, study_dir, out=None):
        self.trials, self.epochs = num_trials(study), study.epochs
        self.scheduler = study.scheduler.name or "the scheduler"
        self.key = "score" if "score" in study.objectives() else next(iter(study.objectives()))
        self.mode = study.objectives()[self.key]
        self.folder = StudyFolder(study_dir)
        self.out = out
        self.bar = None
        self.done: dict[str, int] = {}  # Ray trial id -> epochs reported
        self.ended = 0
        self.best: float | None = None

    def __getstate__(self) -> dict:  # pickled with the Tuner's state: the bar and the stream stay behind
        return {**self.__dict__, "bar": None, "out": None}

    # -- what the bar and the lines show -----------------------------------------------------------

    def _bar(self):
        if self.bar is None:
            from tqdm import tqdm

            interactive = sys.stderr.isatty()
            self.bar = tqdm(
                total=self.trials * self.epochs,
                initial=sum(self.done.values()),
                unit="epoch",
                desc="study",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5 if interactive else 30,
                leave=True,
            )
        return self.bar

    def _say(self, line: str) -> None:
        bar = self._bar()
        bar.write(line, file=self.out or sys.stdout)
        sys.stdout.flush()

    def _refresh(self) -> None:
        bar = self._bar()
        best = "-" if self.best is None else f"{self.best:.4f}"
        bar.set_postfix_str(f"trials {self.ended}/{self.trials} ended, best {self.key} {best}", refresh=False)
        if sys.stderr.isatty():  # a log file gets the bar at tqdm's own pace (mininterval), not at every event
            bar.refresh()

    @staticmethod
    def _number(trial) -> str:
        number = (trial.config or {}).get("number")
        return f"trial {number}" if number is not None else f"trial {trial.trial_id}"

    def _score(self, trial) -> str:
        result = trial.last_result or {}
        value = result.get(self.key)
        return f"{self.key}={value:.4f}" if isinstance(value, float) else "no result"

    # -- Ray's callbacks ------------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        params = (trial.config or {}).get("params", {})
        shown = ", ".join(f"{k}={_value(v)}" for k, v in params.items())
        self._say(f"{self._number(trial)} started: {shown or '(the base configuration)'}")
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        epoch = int(result.get("epoch", 0) or 0)
        before = self.done.get(trial.trial_id, 0)
        if epoch > before:
            self._bar().update(epoch - before)
            self.done[trial.trial_id] = epoch
        value = result.get(self.key)
        if isinstance(value, float) and epoch == self.epochs:  # the best at the full budget
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best = value
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = self.done.get(trial.trial_id, 0)
        if epochs < self.epochs:
            self._bar().total -= self.epochs - epochs
            what = f"stopped by {self.scheduler} at epoch {epochs} (its rung)"
        else:
            what = f"finished after {epochs} epochs"
        self.ended += 1
        self._say(f"{self._number(trial)} {what}: {self._score(trial)}")
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        epochs = self.done.get(trial.trial_id, 0)
        self._bar().total -= self.epochs - epochs
        self.ended += 1
        self._say(f"{self._number(trial)} errored at epoch {epochs}: {self._reason(trial)}")
        self._refresh()

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _reason(self, trial) -> str:
        """The worker's own reason (a diverged loss, in status.json), else the last line of Ray's error."""
        try:
            record = self.folder.trial(trial.trial_id).read_status()
        except ValueError:
            record = None
        if record is not None and record.reason:
            return record.reason
        try:
            text = str(trial.get_error() or "")
        except Exception:  # an error Ray cannot unpickle here: its error file still says it
            text = ""
        lines = [x for x in text.strip().splitlines() if x.strip()]
        return lines[-1].strip() if lines else "see error.txt in the trial folder"
