"""Equal budgets: trials are compared at one epoch, with their values at that epoch.

Under ASHA most trials stop at the first rung and a few run every epoch. Comparing each trial's
final epoch would mix training budgets: "a lower final train_loss goes with higher acc_1km" would
mostly say that the trials ASHA kept longer are better trained. So every table, correlation,
importance, Pareto front, the ceiling and the summary compare the trials that reached one epoch,
each with its values at that epoch; the others are counted as left out, and their curves are in
the learning-curve plot.

The default epoch: when every counted trial (finished or stopped early by the scheduler) ran the same number of
epochs, that epoch; otherwise the highest epoch that at least half of them reached. Why half:
after the first rung, the trials still training are the ones ASHA kept, a group selected for being
good early. An epoch that most trials reached compares (nearly) the whole study on one budget;
a later one would compare ASHA's survivors only, and say little about the search space.
(When all trials ran the same number of epochs, the rule gives that number too.)

``--epoch final`` or ``best`` remain possible; the report then warns when they mix budgets.

Epoch 0, the evaluation before training (``eval.at_start``), is never a budget: ``load.py`` keeps
it out of the epochs every rule here reads, and ``--epoch 0`` is refused. With a warm start every
trial holds the same model there, and without one, untrained weights: comparing trials at epoch 0
would compare nothing the search varied. It is shown instead as the first row of every ablation
table (`start_units`) and as the first point of the learning curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from geoloc.study.folders import Status

from .frames import START, values_at
from .load import AnalysisError, Study

WHOLE = ("final", "best")  # an epoch per trial rather than one for all


def epoch_label(epoch) -> str:
    """How sentences and axes name an epoch's values: "epoch 4", "final epoch", "best epoch"."""
    return f"{epoch} epoch" if epoch in WHOLE else f"epoch {epoch}"


def parse_epoch(value) -> int | str | None:
    """--epoch as given: None (the default rule), a positive epoch number, "final" or "best"."""
    if value is None or value in WHOLE:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if value == START and not isinstance(value, bool):
        raise AnalysisError(
            f"--epoch {START}: epoch {START} is the evaluation before training (eval.at_start), not a budget to "
            "compare trials at; it is the first row of every ablation table and the first point of the learning curves"
        )
    raise AnalysisError(f"--epoch: expected a positive epoch number, final or best, got {value!r}")


def _reached(study: Study) -> pd.Series:
    """How many counted trials reached each epoch (index: epoch, ascending)."""
    counted = study.epochs[study.epochs["trial_id"].isin(study.counted()["trial_id"])]
    return counted.groupby("epoch")["trial_id"].nunique().sort_index()


def choose(study: Study, requested=None) -> int | str | None:
    """The epoch to compare: ``requested`` (checked against the study), else the default rule.

    None when no trial has finished or been stopped yet (nothing to compare).
    """
    requested = parse_epoch(requested)
    reached = _reached(study)
    if isinstance(requested, int) and requested not in reached.index:
        ran = (
            f"they ran {reached.index.min()} to {reached.index.max()} epochs"
            if len(reached)
            else "no trial has finished or been stopped yet"
        )
        raise AnalysisError(f"--epoch {requested}: no finished or stopped trial reached epoch {requested} ({ran})")
    if not len(reached):
        return None
    if requested is not None:
        return requested
    n = len(study.counted())
    majority = reached[2 * reached >= n]
    return int(majority.index.max()) if len(majority) else int(reached.idxmax())


@dataclass
class Budget:
    """The study at one epoch: what every comparison between trials uses."""

    epoch: int | str | None  # the epoch compared, "final", "best", or None (no counted trial)
    trials: pd.DataFrame  # the compared trials: info, params, each metric at the epoch
    units: pd.DataFrame  # one row per compared trial and seed: info, params, seed, each metric at the epoch
    curves: pd.DataFrame  # the units' error curves at the epoch: trial_id, seed, set, km, acc
    counted: int  # finished or stopped trials
    left_out: int  # counted trials that stopped before the epoch
    final_epochs: tuple[int, int]  # the counted trials' fewest and most epochs
    asked: bool = False  # chosen with --epoch rather than by the default rule

    @property
    def label(self) -> str:
        return epoch_label(self.epoch)

    @property
    def per_seed(self) -> bool:
        """True when some compared trial trained several seeds: units are runs, not trials."""
        return len(self.units) > len(self.trials)

    @property
    def unit_word(self) -> str:
        return "runs" if self.per_seed else "trials"

    @property
    def mixed(self) -> bool:
        """True when final or best values come from trials trained for different numbers of epochs."""
        return self.epoch in WHOLE and self.final_epochs[0] != self.final_epochs[1]

    def describe(self) -> str:
        """Which values of which trials: the caption fragment of every table built on this budget."""
        if self.epoch in WHOLE:
            return f"{self.epoch}-epoch values of the {len(self.trials)} finished or stopped trials"
        left = (
            f"; {self.left_out} stopped earlier and are left out (their curves: learning curves)"
            if self.left_out
            else ""
        )
        return f"epoch-{self.epoch} values of the {len(self.trials)} finished or stopped trials that reached it{left}"

    def reason(self) -> str:
        """Why this epoch, in words."""
        if self.asked:
            return f"as asked (--epoch {self.epoch})"
        lo, hi = self.final_epochs
        if lo == hi:
            return f"every finished or stopped trial ran {hi} epochs"
        return (
            f"the highest epoch that at least half of the {self.counted} finished or stopped trials reached "
            "(later epochs hold only the trials ASHA kept, a selected group)"
        )

    def warning(self) -> str | None:
        """The warning of a final or best comparison that mixes budgets."""
        if not self.mixed:
            return None
        lo, hi = self.final_epochs
        return (
            f"warning: --epoch {self.epoch} mixes budgets: the compared trials ran {lo} to {hi} epochs, so "
            f"differences between them mix training length with hyperparameters; compare at one epoch "
            f"(--epoch N, or the default) for equal budgets"
        )


def full_epochs(study: Study) -> int:
    """The epochs a trial runs when no scheduler stops it: the study file's (``StudyConfig.epochs``),
    else (a hand-made folder) the most epochs a finished or stopped trial ran, else 0 (none has ended)."""
    if study.config is not None:
        return study.config.epochs
    ran = pd.to_numeric(study.counted()["epochs"], errors="coerce").dropna()
    return int(ran.max()) if len(ran) else 0


def start_units(study: Study) -> pd.DataFrame:
    """The finished or stopped trials' runs evaluated before training (epoch 0): one row per trial
    and seed, as ``Budget.units`` (runs with several seeds, else trials); empty without eval.at_start."""
    return study.start_seeds[study.start_seeds["trial_id"].isin(study.counted()["trial_id"])]


def trials_at(study: Study, epoch: int | str) -> pd.DataFrame:
    """The counted trials that reached ``epoch``: info and params (as in trials.csv), each metric at it."""
    counted = study.counted()
    info = counted[[c for c in counted.columns if not c.startswith(("final_", "best_"))]]
    rows = study.epochs[study.epochs["trial_id"].isin(counted["trial_id"])]
    values = values_at(rows, ["trial_id"], epoch, study.metrics, study.registry)
    return info.merge(values, on="trial_id", how="inner")


def at(study: Study, epoch: int | str | None, asked: bool = False) -> Budget:
    """The study at ``epoch`` (see `choose`); ``asked``: the user chose it (--epoch)."""
    counted = study.counted()
    epochs_run = pd.to_numeric(counted["epochs"], errors="coerce")
    span = (int(epochs_run.min()), int(epochs_run.max())) if len(counted) else (0, 0)
    picks = "final" if epoch is None else epoch  # None: no counted trial, so empty tables with every column
    trials = trials_at(study, picks)
    rows = study.seeds[study.seeds["trial_id"].isin(trials["trial_id"])]
    units = values_at(rows, ["trial_id", "seed"], picks, study.metrics, study.registry)
    info = trials[[c for c in trials.columns if c not in study.metrics]]
    units = info.merge(units, on="trial_id", how="inner")
    curves = _curves_at(study, rows, picks)
    return Budget(epoch, trials, units, curves, len(counted), len(counted) - len(trials), span, asked)


def _curves_at(study: Study, rows: pd.DataFrame, epoch: int | str) -> pd.DataFrame:
    """The error curves of the units in ``rows`` (per-seed epoch rows) at ``epoch``.

    "final": each run's last epoch; "best": the epoch of each run's best score (an error curve
    has no best of its own, and the score is what the study optimised).
    """
    keys = ["trial_id", "seed"]
    curves = study.curves[study.curves["trial_id"].isin(rows["trial_id"])]
    if not isinstance(epoch, str):
        return curves[curves["epoch"] == epoch].drop(columns="epoch").reset_index(drop=True)
    if epoch == "best" and "score" in rows:
        score = pd.to_numeric(rows["score"], errors="coerce")
        picked = rows.loc[score.groupby([rows[k] for k in keys], dropna=False).idxmax().dropna()]
    else:
        picked = rows.sort_values([*keys, "epoch"]).groupby(keys, dropna=False).tail(1)
    chosen = picked[[*keys, "epoch"]]
    return curves.merge(chosen, on=[*keys, "epoch"], how="inner").drop(columns="epoch")


def rungs(study: Study, budget: Budget) -> list:
    """The epochs of the cross-trial correlations: one per ASHA rung, and the budget's epoch.

    Rung epochs are grace_period * reduction_factor**k <= the trials' epochs (rounded up: ASHA
    judges a trial at the first epoch past the milestone), from the study file's ``scheduler``
    section; rungs no counted trial reached are left out. The budget's epoch (the one every
    table compares at) is always among them, so the summary quotes the tables' budget. With
    ``type: none`` or ``moasha``, or without a study file (a hand-made folder), it is the only one.
    """
    scheduler = study.config.scheduler if study.config is not None else None
    if budget.epoch is None or scheduler is None or scheduler.type != "asha":
        return [budget.epoch]
    max_t = full_epochs(study)
    reached = set(_reached(study).index)
    out, milestone = [], float(scheduler.grace_period)
    while milestone <= max_t:
        epoch = math.ceil(milestone)
        if epoch in reached and epoch not in out:
            out.append(epoch)
        milestone *= scheduler.reduction_factor
    if isinstance(budget.epoch, int) and budget.epoch not in out:
        out.append(budget.epoch)
    return sorted(out)


def counted_words(study: Study) -> str:
    """Which trials a table built from whole epoch curves uses, and how many are left out."""
    counts = study.trials["status"].value_counts()
    left = len(study.trials) - len(study.counted())
    return (
        f"the {len(study.counted())} trials that finished ({counts.get(Status.FINISHED.value, 0)}) "
        f"or were {study.stopped_words} ({counts.get(Status.STOPPED.value, 0)}); "
        f"{left} running or errored trial(s) left out"
    )
