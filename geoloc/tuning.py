"""Ray Tune glue: the trainable, the Optuna searcher, the ASHA scheduler and the Tuner of a study.

The Optuna storage (``STUDY_DIR/optuna.db``) is the study's durable record: a trial's result is
written there the moment the trial ends, so a driver killed at any time loses nothing that
finished. Ray's ``OptunaSearch`` is not used because it reports an ASHA-stopped trial to
Optuna as COMPLETE with its partial value, which misleads TPE; ``OptunaStudySearcher`` records
it as PRUNED with its per-epoch intermediate values, and errored trials as FAIL with the reason.

Files a trial writes into its folder ``STUDY_DIR/trial_<id>/`` (what ``analysis`` reads):
``trial.json`` (params), ``metrics.jsonl`` (one line per epoch, as it ends), ``status.json``
(running / finished / stopped / errored + reason), TensorBoard events with an HParams session
written at the start, and Ray's checkpoints.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from .config import get_path, to_dict
from .events import EventLogger
from .study import StudyConfig, grid, num_trials, run_config
from .train import CHECKPOINT, METRICS, DivergenceError, Trainer, checkpoint_epoch, keep_epochs_up_to

STATUS = "status.json"
OPTUNA_DB = "optuna.db"
ORPHANS = ".orphaned"
REPORT_PREFIX = ".report-"  # a trial's temporary folder handing its checkpoint to Ray
optuna.logging.set_verbosity(optuna.logging.WARNING)  # Ray's trial table is the progress display
TrialState = optuna.trial.TrialState
STARTED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def write_json(path: Path, data: dict) -> None:
    """Atomic, so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# -- the trainable ---------------------------------------------------------------------------------


def train_trial(config: dict, study: StudyConfig, study_dir: str) -> None:
    """One trial: build the trainer from the sampled values, train epoch by epoch, report each epoch.

    Resumes from Ray's checkpoint, or from the trial's own ``checkpoint.pt`` when that is newer
    (the driver may have been killed after the trial went on), so no epoch runs twice.
    """
    trial_dir = Path(study_dir) / os.path.basename(tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    params = config["params"]
    cfg = run_config(study, params)
    write_json(trial_dir / "trial.json", {"trial_id": tune.get_context().get_trial_id(), "number": config["number"], "params": params})

    trainer = Trainer(cfg)
    restored = tune.get_checkpoint()
    if restored:
        with restored.as_directory() as d:
            trainer.load(Path(d) / CHECKPOINT)
    own = trial_dir / CHECKPOINT
    if own.exists() and checkpoint_epoch(own) > trainer.epoch:
        trainer.load(own)
    keep_epochs_up_to(trial_dir / METRICS, trainer.epoch)
    for stale in trial_dir.glob(REPORT_PREFIX + "*"):  # left by a worker killed while reporting
        shutil.rmtree(stale, ignore_errors=True)
    if read_json(trial_dir / STATUS).get("status") in ("finished", "stopped") and trainer.epoch > 0:
        # It ended before the driver died, after Ray's last snapshot: report its end again, train nothing.
        tune.report(_last_metrics(trial_dir / METRICS))
        return
    write_json(trial_dir / STATUS, {"status": "running", "epochs": trainer.epoch, "max_epochs": cfg.train.epochs, "reason": None, "pid": os.getpid()})

    logger = EventLogger(trial_dir, {**params, "trial": trial_dir.name})
    node = {"node": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id()[:12]}
    try:
        while trainer.epoch < cfg.train.epochs:
            metrics = {**trainer.run_epoch(), **node}
            logger.log(metrics, metrics["epoch"])
            if trainer.epoch == cfg.train.epochs:
                logger.close(finished=True)  # before the last report: Ray ends the function there
            with (trial_dir / METRICS).open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            trainer.save(own)
            with tempfile.TemporaryDirectory(prefix=REPORT_PREFIX, dir=trial_dir) as tmp:
                link_or_copy(own, Path(tmp) / CHECKPOINT)  # Ray copies it into its checkpoint folder
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    except DivergenceError as e:
        write_json(trial_dir / STATUS, {"status": "errored", "epochs": trainer.epoch, "max_epochs": cfg.train.epochs, "reason": str(e)})
        logger.close(finished=False)
        raise


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system has them: the checkpoint is then written once, not twice."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def _last_metrics(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


# -- the searcher ----------------------------------------------------------------------------------


def make_sampler(study: StudyConfig) -> optuna.samplers.BaseSampler:
    algo, seed = study.search.algorithm, study.seed
    if algo == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=study.search.n_startup_trials)
    # grid: the cells are enqueued in order (see OptunaStudySearcher); Optuna's GridSampler is not
    # used because it calls Study.stop() when the grid is exhausted, which fails outside optimize().
    return optuna.samplers.RandomSampler(seed=seed)


def sample(trial: optuna.Trial, study: StudyConfig) -> dict:
    """Define-by-run sampling of the search space (conditional entries only when they apply)."""
    sampled: dict = {}
    grid_space = grid(study) if study.search.algorithm == "grid" else {}
    for p in study.params():
        if p.type == "fixed" or not p.applies(sampled):
            continue
        if p.type == "choice":
            sampled[p.name] = trial.suggest_categorical(p.name, p.values)
        elif p.type == "int":
            sampled[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1)
        else:
            sampled[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.type == "loguniform", step=p.step)
    for name, values in grid_space.items():  # grid-only entries such as train.seed for repeats
        if name not in sampled:
            sampled[name] = trial.suggest_categorical(name, values)
    return sampled


class OptunaStudySearcher(Searcher):
    """Proposes trials from an Optuna study and records every outcome in it as it happens."""

    def __init__(self, study: StudyConfig, study_dir: Path, storage_url: str):
        super().__init__(metric="score", mode="max")
        self.study, self.study_dir, self.storage_url = study, Path(study_dir), storage_url
        self.optuna = optuna.create_study(
            study_name=study.name, storage=storage_url, direction="maximize", sampler=make_sampler(study), load_if_exists=True
        )
        self.live: dict[str, optuna.Trial] = {}  # Ray trial id -> Optuna trial
        if not self.optuna.trials:
            if study.search.enqueue_base:
                self.optuna.enqueue_trial(_base_values(study))
            if study.search.algorithm == "grid":
                space = grid(study)
                for cell in itertools.product(*space.values()):
                    self.optuna.enqueue_trial(dict(zip(space, cell)))

    def __getstate__(self) -> dict:
        # Ray pickles the searcher with the experiment; the Optuna study is re-opened from its storage.
        return {"study": self.study, "study_dir": self.study_dir, "storage_url": self.storage_url, "live": self.get_state()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["study"], state["study_dir"], state["storage_url"])
        self.set_state(state["live"])

    def suggest(self, trial_id: str):
        trial = self._rebind_orphan(trial_id)
        if trial is None:
            # A trial can end after Ray's last snapshot and before a driver crash: Ray then does not
            # count it, but Optuna (and its folder) do, so the total is counted here.
            if len(self.optuna.get_trials(deepcopy=False, states=STARTED)) >= num_trials(self.study):
                return Searcher.FINISHED
            trial = self.optuna.ask()
        trial.set_user_attr("ray_trial_id", trial_id)
        self.live[trial_id] = trial
        return {"params": sample(trial, self.study), "number": trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(self.live.get(trial_id), result)

    def _report(self, trial: optuna.Trial | None, result: dict | None) -> None:
        if trial is None or not result or "score" not in result or not self._is_running(trial):
            return
        frozen = self.optuna._storage.get_trial(trial._trial_id)
        if int(result["epoch"]) not in frozen.intermediate_values:
            trial.report(result["score"], step=int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.live.pop(trial_id, None)
        trial_dir = self.study_dir / f"trial_{trial_id}"
        status = read_json(trial_dir / STATUS)
        epochs = int((result or {}).get("epoch", status.get("epochs", 0)) or 0)
        if error:
            reason = status.get("reason") if status.get("status") == "errored" else None
            reason = reason or "the trial's worker failed; see error.txt in the trial folder"
            outcome = {"status": "errored", "reason": reason}
        elif epochs < self.study.epochs:
            outcome = {"status": "stopped", "reason": f"stopped by ASHA after epoch {epochs}"}
        else:
            outcome = {"status": "finished", "reason": None}
        if trial_dir.exists():
            write_json(trial_dir / STATUS, {**outcome, "epochs": epochs, "max_epochs": self.study.epochs})
        if trial is None or not self._is_running(trial):
            return  # already told (a trial that finished before a driver crash)
        self._report(trial, result)  # Ray hands the last epoch's result only to on_trial_complete
        if outcome["status"] == "errored":
            trial.set_user_attr("fail_reason", outcome["reason"])
            self.optuna.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif outcome["status"] == "stopped":
            self.optuna.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.optuna.tell(trial, result["score"])

    def _is_running(self, trial: optuna.Trial) -> bool:
        return self.optuna._storage.get_trial(trial._trial_id).state == optuna.trial.TrialState.RUNNING

    # Resume: Ray restores this searcher from its pickled state, with the Optuna study re-opened.

    def get_state(self) -> dict:
        return {"live": {tid: t.number for tid, t in self.live.items()}}

    def set_state(self, state: dict) -> None:
        by_number = {t.number: t for t in self.optuna.get_trials(deepcopy=False)}
        self.live = {tid: optuna.Trial(self.optuna, by_number[n]._trial_id) for tid, n in state["live"].items() if n in by_number}

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))

    def _rebind_orphan(self, trial_id: str) -> optuna.Trial | None:
        """An Optuna trial left RUNNING by a killed driver, that Ray never recorded, is reused
        (same parameters) instead of being left dangling; its stale folder is set aside."""
        known = {t.number for t in self.live.values()}
        for frozen in self.optuna.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.number in known:
                continue
            stale = self.study_dir / f"trial_{frozen.user_attrs.get('ray_trial_id')}"
            if stale.exists():
                (self.study_dir / ORPHANS).mkdir(exist_ok=True)
                shutil.move(str(stale), self.study_dir / ORPHANS / stale.name)
            return optuna.Trial(self.optuna, frozen._trial_id)
        return None


def _base_values(study: StudyConfig) -> dict:
    """The base configuration's value of every sampled entry (the trial ``enqueue_base`` runs)."""
    base = to_dict(study.base)
    return {p.name: get_path(base, p.name) for p in study.params() if p.type != "fixed"}


# -- the study -------------------------------------------------------------------------------------


def make_scheduler(study: StudyConfig):
    s = study.scheduler
    if s.type == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch", max_t=study.epochs, grace_period=min(s.grace_period, study.epochs),
        reduction_factor=s.reduction_factor, brackets=s.brackets,
    )


def make_tuner(study: StudyConfig, study_dir: Path, resume: bool, reporter=None) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored (``resume``) with a fresh searcher on the same Optuna storage."""
    storage_url = f"sqlite:///{study_dir / OPTUNA_DB}"
    searcher = ConcurrencyLimiter(OptunaStudySearcher(study, study_dir, storage_url), max_concurrent=study.search.max_concurrent)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, study=study, study_dir=str(study_dir)),
        {"cpu": study.resources.cpu, "gpu": study.resources.gpu},
    )
    if resume and tune.Tuner.can_restore(str(study_dir)):
        return tune.Tuner.restore(
            str(study_dir), trainable, resume_unfinished=True, resume_errored=False, restart_errored=False,
        )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric="score", mode="max", search_alg=searcher, scheduler=make_scheduler(study),
            num_samples=num_trials(study), trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname,
            reuse_actors=True,  # a worker process runs trial after trial: torch is imported once per slot
        ),
        run_config=tune.RunConfig(
            name=study.name, storage_path=str(study_dir.parent),
            failure_config=tune.FailureConfig(max_failures=study.failure.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            progress_reporter=reporter, verbose=1 if reporter else 0,
        ),
    )
