"""Arms against a baseline, per varied parameter: the study at its budget as compare.py's inputs.

For one parameter, each row of its ablation table (a value, or a bin of values) is an *arm*, and
a *unit* is one run, a (trial, seed), at the budget's epoch. Units pair by ``pair`` = the seed and
the values of every other varied parameter (seeds aside), so an arm's run is set beside the
baseline's run with the same seed and the same other settings. Where one arm holds two runs with
the same key (a bin of a continuous parameter, or a configuration sampled twice with one seed),
runs cannot be matched one to one: that parameter is compared unpaired (each unit its own key),
and the notes say so.

The baseline arm: the one holding the base configuration's value (the study file's ``base`` at
the parameter's dotted key); when that value is not among the arms, the arm of the search space's
first value (its first choice, or its lower bound), else the first arm, and the notes say so.
``--baseline VALUE`` picks the arm holding VALUE instead, for every parameter that has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import yaml

from geoloc.common.validation import get_path

from . import compare, roles
from .budget import Budget
from .load import AnalysisError, Study
from .roles import is_seed
from .tables import arms as trial_arms
from .tables import fmt_value


@dataclass
class Arms:
    param: str
    baseline: str  # the baseline arm's label
    units: pd.DataFrame  # the budget's units with arm (ordered categorical) and pair
    curves: pd.DataFrame  # those units' error curves on the primary evaluation set: arm, pair, km, acc
    requested: bool = False  # the baseline is the one --baseline asked for
    notes: list[str] = field(default_factory=list)  # how the baseline was chosen, why units are unpaired


def level_of(value, level: pd.Series, raw: pd.Series, binned: bool) -> str | None:
    """The arm (level label) holding ``value``, or None. level, raw: each trial's label and value."""
    if value is None:
        return None
    if binned:
        number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
        numeric = pd.to_numeric(raw, errors="coerce")
        for label in level.cat.categories:
            members = numeric[level == label]
            if len(members) and members.min() <= number <= members.max():
                return label
        return None
    label = fmt_value(value)  # the labels are the values as `tables.levels` prints them
    return label if label in set(level) else None


def _requested(value, level: pd.Series, raw: pd.Series, binned: bool) -> str | None:
    """--baseline VALUE: as written ("0.15", "gps") or as YAML reads it (0.15, true)."""
    candidates = [value]
    if isinstance(value, str):
        try:
            candidates.append(yaml.safe_load(value))
        except yaml.YAMLError:
            pass
    return next((label for c in candidates if (label := level_of(c, level, raw, binned)) is not None), None)


def _default_baseline(study: Study, param: str, level: pd.Series, raw: pd.Series, binned: bool):
    """(label, note): the base configuration's arm, else the search space's first value's, else the first arm."""
    config = study.config
    try:
        base = get_path(config.base.model_dump(mode="json"), param) if config is not None else None
    except KeyError:  # not a key of the run configuration (a hand-made folder's parameter)
        base = None
    label = level_of(base, level, raw, binned)
    if label is not None:
        return label, None
    why = (
        f"the base value {fmt_value(base)} is not among the arms"
        if base is not None
        else "study.yaml gives no base value"
    )
    entry = config.search_space.get(param) if config is not None else None
    first = entry.extremes()[0] if entry is not None else None
    label = level_of(first, level, raw, binned)
    if label is not None:
        return label, f"{param}: {why}; baseline = the search space's first value, {label}"
    label = next(a for a in level.cat.categories if a in set(level))
    return label, f"{param}: {why}; baseline = the first arm, {label}"


def _pairs(study: Study, units: pd.DataFrame, param: str) -> pd.Series:
    """Each unit's pairing key: its seed and the values of every other varied non-seed parameter."""
    others = [p for p in study.varied if p != param and not is_seed(p)]
    return pd.Series(
        ["|".join([f"seed={u['seed']}", *(f"{p}={u[p]}" for p in others)]) for u in units.to_dict("records")],
        index=units.index,
    )


def arms_of(study: Study, budget: Budget, param: str, bins: int, requested=None) -> Arms | None:
    """``param``'s arms at the budget (None with fewer than two); ``requested``: --baseline VALUE,
    which applies only when one of this parameter's arms holds it."""
    level, binned = trial_arms(study, budget, param, bins)
    if level.nunique() < 2:
        return None
    raw = budget.trials.set_index("trial_id")[param]
    notes = []
    baseline = _requested(requested, level, raw, binned) if requested is not None else None
    requested_here = baseline is not None
    if baseline is None:
        baseline, note = _default_baseline(study, param, level, raw, binned)
        notes += [note] if note else []
    units = budget.units.copy()
    units["arm"] = pd.Categorical(units["trial_id"].map(level), categories=level.cat.categories, ordered=True)
    if units["arm"].nunique() < 2 or baseline not in set(units["arm"]):
        return None  # trials without per-seed rows at this epoch (a seeds.jsonl cut short): nothing to pair
    units["pair"] = _pairs(study, units, param)
    if units.duplicated(["arm", "pair"]).any():
        units["pair"] = units["trial_id"].astype(str) + "|seed=" + units["seed"].map(str)  # map: NaN as "nan"
        notes.append(
            f"{param}: an arm holds several runs with the same seed and other settings "
            "(a bin of values, or a configuration run twice), so runs cannot be matched one to one: compared unpaired"
        )
    elif not (set(units.loc[units["arm"] == baseline, "pair"]) & set(units.loc[units["arm"] != baseline, "pair"])):
        others = [p for p in study.varied if p != param and not is_seed(p)]
        notes.append(
            f"{param}: no run shares its seed{' and ' + ', '.join(others) if others else ''} with a baseline run, "
            "so every arm is compared unpaired"
        )
    curves = budget.curves[budget.curves["set"] == study.primary_set]
    curves = curves.merge(units[["trial_id", "seed", "arm", "pair"]], on=["trial_id", "seed"], how="inner")
    return Arms(param, baseline, units, curves[["arm", "pair", "km", "acc"]], requested_here, notes)


def all_arms(study: Study, budget: Budget, params: list[str], bins: int, requested=None) -> list[Arms]:
    """The arms of each parameter (seeds are replicates, never compared); AnalysisError when
    ``requested`` (--baseline) is the value of none of them."""
    found = [a for p in params if not is_seed(p) and (a := arms_of(study, budget, p, bins, requested)) is not None]
    # With nothing compared yet (a study just started) there is no value to miss.
    if requested is not None and found and not any(a.requested for a in found):
        have = "; ".join(f"{a.param}: {', '.join(map(str, a.units['arm'].cat.categories))}" for a in found)
        raise AnalysisError(f"--baseline {requested}: no compared parameter has this value ({have})")
    return found


def comparison(study: Study, budget: Budget, arms: list[Arms]) -> pd.DataFrame:
    """compare.compare for each parameter on ``roles.compared``'s metrics (one Holm family per
    parameter, as each ablation table is one), stacked with a leading ``param`` column."""
    keys = roles.compared(study, budget.units)
    directions = {m: study.registry.direction(m) for m in keys}
    tables = [compare.compare(a.units, a.baseline, keys, directions).assign(param=a.param) for a in arms]
    columns = ["param", *compare.COLUMNS]
    return pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)
