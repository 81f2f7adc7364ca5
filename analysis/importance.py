"""Hyperparameter importance for the score and the headline metric (``roles.headline``), from the trial table alone.

An in-memory Optuna study is rebuilt from the compared trials' rows (their values at the budget's
epoch), so importance works for any study directory, with or without its optuna.db, and uses the
same trials and values as every other table.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import pandas as pd

from . import roles
from .load import Study

MIN_TRIALS = 4
MIN_PARAMS = 2


@dataclass
class Importance:
    table: pd.DataFrame  # target, param, importance (sorted within target)
    evaluator: str  # "fANOVA" or "PED-ANOVA"
    notes: list[str] = field(default_factory=list)  # why something is missing, in words


def distribution(values: list, kind: str):
    """The Optuna distribution a column of sampled values came from, as far as the values tell."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if kind == "int":
        return IntDistribution(int(min(values)), int(max(values)))
    if kind == "float":
        lo, hi = float(min(values)), float(max(values))
        # Values spread over two decades or more were almost surely sampled on a log scale (lr, wd).
        return FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)
    return CategoricalDistribution(sorted({str(v) for v in values}))


def importances(study: Study, trials: pd.DataFrame, targets=None) -> Importance:
    """Importance of each varied hyperparameter for each target metric (default: the score and the headline).

    trials: one row per trial, its params and a column per metric (the budget's trials).
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    head = roles.headline(study)
    targets = list(dict.fromkeys(["score", *([head] if head else [])])) if targets is None else list(targets)
    # A param missing from some trials (conditional search space) cannot be compared across all.
    params = [p for p in study.varied if trials[p].notna().all() and trials[p].nunique() > 1] if len(trials) else []
    notes = []
    rows = []
    try:
        evaluator, name = FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator, name = PedAnovaImportanceEvaluator(), "PED-ANOVA"
        notes.append("fANOVA needs scikit-learn, which is not installed; PED-ANOVA was used instead")

    for target in targets:
        if target not in study.metrics:
            notes.append(f"{target}: not reported by this study")
            continue
        part = trials.dropna(subset=[target])
        if len(params) < MIN_PARAMS or len(part) < MIN_TRIALS:
            notes.append(
                f"{target}: not enough trials for importance (needs >= {MIN_PARAMS} varied hyperparameters and "
                f">= {MIN_TRIALS} compared trials; have {len(params)} and {len(part)})"
            )
            continue
        dists = {p: distribution(part[p].tolist(), study.param_kinds[p]) for p in params}
        direction = "minimize" if study.registry.direction(target) == "min" else "maximize"
        optuna_study = optuna.create_study(direction=direction)
        for trial in part.to_dict("records"):
            values = {p: _as_param(trial[p], study.param_kinds[p]) for p in params}
            optuna_study.add_trial(
                optuna.trial.create_trial(params=values, distributions=dists, value=float(trial[target]))
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PED-ANOVA is marked experimental
                result = optuna.importance.get_param_importances(optuna_study, evaluator=evaluator)
        except Exception as exc:  # e.g. every trial has the same value: a fact about the data, not a crash
            notes.append(f"{target}: importance could not be computed ({type(exc).__name__}: {exc})")
            continue
        for param, value in result.items():
            rows.append({"target": target, "param": param, "importance": float(value)})
        if all(math.isclose(v, 0.0, abs_tol=1e-12) for v in result.values()):
            notes.append(f"{target}: every importance is 0 (the target does not vary with the parameters)")
    table = pd.DataFrame(rows, columns=["target", "param", "importance"])
    return Importance(table, name, notes)


def _as_param(value, kind: str):
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)
