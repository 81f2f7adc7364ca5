"""The study launcher: validate a study, start or join Ray, run or resume it, say where results are.

    python tune_main.py studies/NAME.yaml [--address ADDR] [--storage PATH] [--resume [--rebuild-optuna]] [--dry-run]
                        [--set key.path=value ...] [--num-samples N] [--max-concurrent N] [--no-analysis] [--verbose]
    python tune_main.py status STUDY_DIR     (where a study stands; exit 0 running or finished, 1 interrupted
                                              or damaged, 2 not a study: geoloc/tuning/status.py)

Everything a user can get wrong (study file, data, storage path, resources) is checked before
any trial starts: exit status 2 and one line naming the key, file or row; nothing is written.
One launcher runs a study at a time (``geoloc.tuning.lock``): a second one exits 2 naming the first.
Interrupted (Ctrl-C, or SIGTERM from ``ray job stop`` or a scheduler), it says how far the study
got and the command that resumes it, and exits 130.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

import yaml

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic trial table (CLIReporter) with our columns
# Trials write their own metrics.jsonl and TensorBoard events (with HParams at the start);
# Ray's loggers would add a second, differently tagged event file to every trial folder.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

from geoloc.common.validation import ConfigError  # noqa: E402
from geoloc.study.folders import Status, StudyFolder, TrialFolder  # noqa: E402
from geoloc.study.manifest import record_session  # noqa: E402
from geoloc.study.space import ChoiceEntry, FixedEntry, IntEntry  # noqa: E402
from geoloc.study.studyfile import (  # noqa: E402
    StudyConfig,
    load_study_file,
    num_trials,
    resolved_study,
    trial_config,
)
from geoloc.tasks import task_of  # noqa: E402
from geoloc.tuning.lock import StudyLock, StudyLocked  # noqa: E402

INTERRUPTED = 130  # exit status of an interrupted study (128 + SIGINT, as a shell reports Ctrl-C)


class UsageError(Exception):
    """Bad input found before the study starts: exit 2 with this one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tune_main.py", description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="study file (studies/*.yaml)")
    p.add_argument(
        "--address", default=os.environ.get("RAY_ADDRESS"), help="join this Ray cluster (default: start a local one)"
    )
    p.add_argument("--storage", help="storage folder (overrides the study's 'storage'; must be shared on a cluster)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study: finished trials are kept")
    p.add_argument("--dry-run", action="store_true", help="validate and print the resolved study without starting Ray")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a study key, e.g. base.train.epochs=3"
    )
    p.add_argument("--num-samples", type=int, help="override search.num_samples")
    p.add_argument("--max-concurrent", type=int, help="override search.max_concurrent")
    p.add_argument("--no-analysis", action="store_true", help="do not run the analysis at the end")
    p.add_argument(
        "--verbose", action="store_true", help="Ray's trial table and logs instead of one line per trial event"
    )
    p.add_argument(
        "--rebuild-optuna",
        action="store_true",
        help="with --resume: keep a damaged optuna.db aside, rebuild it from the trial folders, then resume",
    )
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> StudyConfig:
    if args.rebuild_optuna and not args.resume:
        raise UsageError("--rebuild-optuna: only with --resume (it rebuilds an interrupted study's Optuna storage)")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item}: expected KEY=VALUE, e.g. base.train.epochs=3")
        overrides[key] = yaml.safe_load(value)
    if args.num_samples is not None:
        overrides["search.num_samples"] = args.num_samples
    if args.max_concurrent is not None:
        overrides["search.max_concurrent"] = args.max_concurrent
    if args.storage:
        overrides["storage"] = args.storage
    try:
        return load_study_file(args.study, overrides)
    except ConfigError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(args.study) else f"{args.study}: {msg}") from None


def check_storage_path(study_dir: Path) -> None:
    """The storage path must be a folder path this process can write."""
    if "://" in str(study_dir):
        raise UsageError(f"storage: {study_dir}: give a shared folder path (NFS); object stores are not supported")
    parent = study_dir.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK) or not probe.is_dir():
        raise UsageError(f"storage: {parent}: cannot write there")


def check_study_folder(study_dir: Path, resume: bool) -> None:
    """A finished study is not overwritten, and only an interrupted one is resumed (checked under the lock)."""
    if not resume and any(p.name not in StudyFolder.LAUNCHER_FILES for p in study_dir.iterdir()):
        raise UsageError(
            f"storage: {study_dir} already holds a study; use --resume to continue it, or --storage elsewhere"
        )
    if resume and not StudyFolder(study_dir).optuna_db.exists():
        raise UsageError(f"--resume: {study_dir} holds no interrupted study to resume")


def check_data(study: StudyConfig) -> None:
    """The task's data built and checked once in the driver, before any trial (``Task.prepare``): the
    offline benchmark, the caches and the gallery, and what every trial reads beside them."""
    from geoloc.data import DataError  # here: status, --help and --dry-run need no data readers

    try:
        trial_config(study, {})
        task_of(study.base).prepare(study.base)
    except DataError as e:
        raise UsageError(f"data: {e}") from None
    except ConfigError as e:  # a combination of keys that the data refuses (the sampler's lists, say)
        raise UsageError(f"base.{e}") from None


def check_optuna(study: StudyConfig, study_dir: Path, args: argparse.Namespace, argv: list[str]) -> None:
    """--resume: a damaged Optuna storage is named in one line, or rebuilt from the trial folders with
    --rebuild-optuna (geoloc.tuning.recovery). An intact one is not rebuilt: that would only lose what the
    folders lack (the params of a trial asked just before a crash, the samplers' caches)."""
    from geoloc.tuning.recovery import (
        RebuildError,
        StorageBusy,
        StorageDamaged,
        check_optuna_storage,
        rebuild_optuna_storage,
    )

    if not args.resume:
        return
    db = StudyFolder(study_dir).optuna_db
    try:
        check_optuna_storage(study_dir, study.name)
    except StorageBusy as e:
        raise UsageError(f"--resume: {e}; stop that process (an optuna-dashboard? a launcher?) and resume") from None
    except StorageDamaged as e:
        if not args.rebuild_optuna:
            raise UsageError(
                f"--resume: the Optuna storage {e}; the study's {len(StudyFolder(study_dir).trials())} trial folders "
                f"are intact; rebuild it from them and resume with: " + resume_command(argv) + " --rebuild-optuna"
            ) from None
        try:
            print(rebuild_optuna_storage(study, study_dir), flush=True)
        except RebuildError as e:
            raise UsageError(f"--rebuild-optuna: {e}; {db} is left as it was") from None
        return
    if args.rebuild_optuna:
        raise UsageError(f"--rebuild-optuna: {db} is intact, nothing to rebuild; resume without --rebuild-optuna")


def dry_run(study: StudyConfig, study_dir: Path) -> None:
    print(yaml.safe_dump({"study": resolved_study(study)}, sort_keys=False).rstrip())
    print("\nsearch space:")
    for entry in study.space:
        if isinstance(entry, FixedEntry):
            shown = [entry.value]
        elif isinstance(entry, ChoiceEntry):
            shown = entry.values
        else:
            step = entry.step if isinstance(entry, IntEntry) and entry.step != 1 else None
            shown = f"[{entry.low}, {entry.high}]" + (f" step {step}" if step else "")
        cond = f"  when {entry.when}" if entry.when else ""
        print(f"  {entry.name:32s} {entry.type:10s} {shown}{cond}")
    first = study.base.train.seed
    seeds = f", each training seeds {first}..{first + study.search.seeds - 1}" if study.search.seeds > 1 else ""
    print(
        f"\ntrials: {num_trials(study)} ({study.search.algorithm}){base_trial(study)}{seeds}, "
        f"at most {study.search.max_concurrent} at once; "
        f"scheduler: {study.scheduler.type}, {study.epochs} epochs max"
    )
    print("objective: " + ", ".join(f"{how} {key}" for key, how in study.objectives().items()))
    print(f"resources per trial: {study.resources.cpu:g} CPU, {study.resources.gpu:g} GPU")
    print(f"results would go to: {study_dir}")


def base_trial(study: StudyConfig) -> str:
    """Where the enqueued base configuration is among the trials (``SearchConfig.enqueue_base``)."""
    if not study.search.enqueue_base:
        return ""
    return (
        ", the base configuration's cell first"
        if study.search.algorithm == "grid"
        else ", the base configuration first"
    )


def start_ray(study: StudyConfig, address: str | None):
    import ray

    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        # "local": a new instance, as --help says; without it Ray would join the last `ray start` of this
        # machine (its /tmp/ray/ray_current_cluster), and hang when that cluster is gone.
        ray.init(
            address="local", include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR"
        )
    total = ray.cluster_resources()
    for kind, need in (("GPU", study.resources.gpu), ("CPU", study.resources.cpu)):
        if need > total.get(kind, 0):
            ray.shutdown()
            raise UsageError(
                f"resources.{kind.lower()}: a trial asks for {need:g} {kind}, the cluster has {total.get(kind, 0):g}"
            )
    return ray


def sampled(row, params: list[str]) -> dict:
    """A trial's own hyperparameters: a conditional one it did not sample is empty (None or NaN) in its row."""
    return {k: row[k] for k in params if row[k] is not None and not (isinstance(row[k], float) and math.isnan(row[k]))}


def params_text(row, params: list[str]) -> str:
    """A trial's own hyperparameters in one short line: ``batch_sigma=1, lr=0.0003``."""
    return ", ".join(
        f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
        for k, v in sampled(row, params).items()
    )


def summarize(study_dir: Path) -> None:
    """Best trial and top table (a pareto study: its Pareto set), read from the trial folders (the
    study's own record, which also holds trials that ended after Ray's last snapshot before a crash)."""
    from analysis.load import AnalysisError, read_study
    from analysis.pareto import front

    try:
        study = read_study(study_dir)
        trials = study.trials.iloc[:0]  # no trial reported a metric: no final_score column
        if "final_score" in study.trials:
            trials = study.trials.dropna(subset=["final_score"]).sort_values(
                "final_score", ascending=False, kind="stable"
            )
        found, _ = front(study)  # None for a score study
    except AnalysisError:
        study, trials, found = None, [], None
    print()
    if not len(trials):
        print("no trial reported a result")
    elif found is not None:
        print_pareto_set(found, study.params)
    else:
        shown = [k for k in study.registry.progress_columns() if k not in ("epoch", "score")]
        best = trials.iloc[0]
        print(f"best trial: {best['trial_dir']}  score={best['final_score']:.4f} after {best['epochs']} epochs")
        for k, v in sampled(best, study.params).items():
            print(f"  {k} = {v}")
        print("  " + "  ".join(f"{m}={best['final_' + m]:.4g}" for m in study.registry.headline()))
        header = " ".join(f"{k:>10s}" for k in shown)
        print(f"\ntop trials:\n  {'trial':22s} {'score':>7s} {header} {'epochs':>6s}  params")
        for _, row in trials.head(10).iterrows():
            values = " ".join(f"{row['final_' + k]:10.4g}" for k in shown)
            params = params_text(row, study.params)
            print(f"  {row['trial_dir']:22s} {row['final_score']:7.4f} {values} {row['epochs']:6d}  {params}")
    print(f"\nresults:      {study_dir}")
    print(f"optuna:       optuna-dashboard {StudyFolder(study_dir).optuna_url}")
    print(f"tensorboard:  tensorboard --logdir {study_dir}")
    print(f"analysis:     python -m analysis {study_dir}")


def print_pareto_set(found, params: list[str]) -> None:
    """The Pareto set found (``analysis.pareto``): the trials that ran every epoch and that no other
    such trial beats on every objective, with their values there."""
    metrics = found.objective.metrics
    members = found.pareto_set()
    print(
        f"Pareto set of {found.objective.describe()}: {len(members)} of the {len(found.trials)} trials that ran "
        f"all {found.epochs} epochs; hypervolume {found.hypervolume:.4g} after {found.epochs_spent} epochs spent"
    )
    print("  " + f"{'trial':22s} " + " ".join(f"{m:>12s}" for m in metrics) + "  params")
    for _, row in members.iterrows():
        shown = params_text(row, [p for p in params if p in row])
        print("  " + f"{'trial_' + row['trial_id']:22s} " + " ".join(f"{row[m]:12.4g}" for m in metrics) + f"  {shown}")


def stop_gracefully_on_sigterm() -> None:
    """``ray job stop`` and schedulers (SLURM's scancel) send SIGTERM, but Tune ends a run gracefully,
    saving its state, only on SIGINT; and Ray's job server starts a job with SIGINT blocked."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))


def resume_command(argv: list[str]) -> str:
    """This launcher's command line, made to resume (a rebuilt Optuna storage is not rebuilt again)."""
    kept = [a for a in argv if a not in ("--resume", "--rebuild-optuna")]
    return shlex.join(["python", "tune_main.py", *kept, "--resume"])


def unfinished(study: StudyConfig, study_dir: Path) -> str | None:
    """None when every trial of the study ended; else how far it got, in one line."""
    trials = StudyFolder(study_dir).trials()
    ended = Counter(r.status for t in trials if (r := t.recorded_status()) and r.status is not Status.RUNNING)
    cut_short = len(trials) - sum(ended.values())
    not_started = max(num_trials(study) - len(trials), 0)
    if not cut_short and not not_started:
        return None
    return (
        f"{ended[Status.FINISHED]} finished, {ended[Status.STOPPED]} stopped early, "
        f"{ended[Status.ERRORED]} errored, {cut_short} cut short (they go on from their last checkpoint), "
        f"{not_started} not started, of {num_trials(study)} trials"
    )


def run(study: StudyConfig, study_dir: Path, args: argparse.Namespace, argv: list[str]) -> int:
    from ray import tune

    from geoloc.tuning.tuner import make_tuner

    ray = start_ray(study, args.address)
    folder = StudyFolder(study_dir)
    created = not (study_dir / folder.STUDY).exists()
    folder.write_study(yaml.safe_dump(resolved_study(study), sort_keys=False))
    registry = study.registry
    registry.save(folder.path / folder.REGISTRY)
    record_session(study_dir, task_of(study.base).data_files(study.base))  # manifest.json: this session
    reporter, callbacks = None, []
    if args.verbose:
        reporter = tune.CLIReporter(
            metric_columns=registry.progress_columns(), max_report_frequency=10, max_progress_rows=20
        )
    else:
        from geoloc.tuning.progress import QuietProgress

        callbacks.append(QuietProgress(study, study_dir.resolve()))
    stop_gracefully_on_sigterm()
    try:
        make_tuner(study, study_dir.resolve(), args.resume, reporter, callbacks).fit()
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: Tune did not finish saving; resuming still works (as after a killed driver)
    except BaseException:
        if created and not any(p.name.startswith(TrialFolder.PREFIX) for p in study_dir.iterdir()):
            for p in study_dir.iterdir():  # nothing ran: leave nothing half-written (the lock, released,
                if p.name not in folder.LAUNCHER_FILES:  # then removes the empty folder)
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        raise
    finally:
        ray.shutdown()
    if progress := unfinished(study, study_dir):
        print(f"\ninterrupted: {progress}.\nresume with: {resume_command(argv)}")
        return INTERRUPTED
    summarize(study_dir)
    if not args.no_analysis:
        # No ImportError is caught here: that once allowed for a checkout without the analysis package,
        # but summarize() reads the study through it, so an ImportError now is a bug to show.
        from analysis import analyse

        out = analyse(study_dir, study_dir / StudyFolder.ANALYSIS)
        print(f"report:       {out['report']}")
    return 0


def status(argv: list[str]) -> int:
    from geoloc.tuning.status import report

    p = argparse.ArgumentParser(
        prog="tune_main.py status", description="where a study stands: its launcher, trials, best so far, commands"
    )
    p.add_argument("study_dir", help="the study's folder (STORAGE/NAME)")
    return report(p.parse_args(argv).study_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:  # where a study stands, without Ray and without its lock (geoloc.tuning.status)
        return status(argv[1:])
    args = parse_args(argv)
    try:
        study = load(args)
        study_dir = Path(study.storage).expanduser() / study.name
        if args.dry_run:
            dry_run(study, study_dir)
            return 0
        check_storage_path(study_dir)
        try:
            with StudyLock(study_dir):
                check_study_folder(study_dir, args.resume)
                check_optuna(study, study_dir, args, argv)
                check_data(study)
                return run(study, study_dir, args, argv)
        except StudyLocked as e:
            raise UsageError(str(e)) from None
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
