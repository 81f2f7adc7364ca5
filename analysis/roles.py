"""The role each metric key and hyperparameter plays in the generic analysis, from the registry
(``metrics.json``) and the task seam (``geoloc.tasks``) only: no key of one task is named here.

Metrics (only those the trials reported):

- the *headline*: the key the report leads with, the task's ``headline`` (GeoCLIP: acc_1km);
  when the trials did not report it (other thresholds), the registry's first accuracy, else ``score``.
- *outcomes*: what a run achieved, the keys with a better direction that the registry lists for
  TensorBoard's HParams (``hparam``), losses aside (GeoCLIP: the accuracies, median_km, mean_km, geoscore,
  score).
- *diagnostics*: what a run did, measured: keys without a better direction, neither training
  settings, times nor ceilings (GeoCLIP: the encoder's resolution, what the batch sampler did). A
  diagnostic the registry lists for HParams is the task's mechanism: it sits beside the headline
  and is compared like an outcome. A diagnostic that is the same in every unit at the budget says
  nothing about the arms: it is left out of the tables and comparisons (`constant`).

Hyperparameters: the study's *factors* are its search-space entries that were sampled (not
fixed), in the study file's order; the first is the question the study asks first (it colours
the figures). Seeds are replicates: varied on purpose, never a factor or an effect.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geoloc.study.space import FixedEntry
from geoloc.tasks import DEFAULT_TASK, Task, task_named, task_of

from .load import Study

NOT_DIAGNOSTIC = ("train", "time", "ceiling")  # registry kinds without a direction that are no diagnostic


def task(study: Study) -> Task:
    """The study's task: its base configuration's, the default task for a folder without a study file."""
    return task_of(study.config.base) if study.config is not None else task_named(DEFAULT_TASK)


def _reported(study: Study, keys) -> list[str]:
    return [k for k in dict.fromkeys(keys) if k in study.metrics]


def _evaluated(metric) -> bool:
    """A key of a run's own (training) or of the primary evaluation set: not of a further set."""
    return metric.eval_set is None or metric.primary


def headline(study: Study) -> str | None:
    """The key the report leads with (module docstring); None when the trials reported none of them."""
    found = _reported(study, [task(study).headline, *study.accuracies, "score"])
    return found[0] if found else None


def outcomes(study: Study) -> list[str]:
    """What a run achieved, in registry order (module docstring)."""
    keys = [m.key for m in study.registry if m.hparam and m.direction and m.kind != "loss" and _evaluated(m)]
    return _reported(study, keys)


def losses(study: Study) -> list[str]:
    """The training and primary evaluation losses (GeoCLIP: train_loss, val_loss)."""
    return _reported(study, [m.key for m in study.registry if m.kind == "loss" and _evaluated(m)])


def diagnostics(study: Study, mechanism: bool | None = None) -> list[str]:
    """What a run did (module docstring); ``mechanism``: only those the registry lists for HParams
    (True) or only the others (False)."""
    keys = [
        m.key
        for m in study.registry
        if m.direction is None
        and m.kind not in NOT_DIAGNOSTIC
        and _evaluated(m)
        and (mechanism is None or m.hparam == mechanism)
    ]
    return _reported(study, keys)


def constant(units: pd.DataFrame, keys: list[str]) -> dict[str, float]:
    """The keys whose value is the same in every unit that has one, two units or more (one unit is
    no evidence of anything being constant): key -> that value."""
    same = {}
    for key in keys:
        values = pd.to_numeric(units[key], errors="coerce").dropna().to_numpy(float) if key in units else []
        if len(values) >= 2 and np.all(values == values[0]):
            same[key] = float(values[0])
    return same


def table_columns(study: Study, units: pd.DataFrame) -> list[str]:
    """The metric columns of every ablation table: the headline, the task's mechanism beside it, the
    other outcomes, then the other diagnostics; diagnostics constant over ``units`` left out."""
    lead = _reported(study, [headline(study)]) if headline(study) else []
    columns = [*lead, *diagnostics(study, mechanism=True), *outcomes(study), *diagnostics(study, mechanism=False)]
    dropped = constant(units, diagnostics(study))
    return [key for key in dict.fromkeys(columns) if key not in dropped]


def compared(study: Study, units: pd.DataFrame) -> list[str]:
    """What arms are compared on: every accuracy, the headline, the score and the task's mechanism
    (unless constant over ``units``)."""
    head = [headline(study)] if headline(study) else []
    mechanism = [k for k in diagnostics(study, mechanism=True) if k not in constant(units, [k])]
    return _reported(study, [*study.accuracies, *head, "score", *mechanism])


def shown(study: Study) -> list[str]:
    """The metrics the short views show (figures, the summary's best trial, the row before training):
    every accuracy, the headline and the score."""
    head = [headline(study)] if headline(study) else []
    return _reported(study, [*study.accuracies, *head, "score"])


def is_seed(param: str) -> bool:
    """Seeds are replicates: varied on purpose, never an effect worth a sentence."""
    return param.split(".")[-1].endswith("seed")


def factors(study: Study) -> list[str]:
    """The study's factors (module docstring) that its trials hold; for a folder without a study file,
    its varied hyperparameters; seeds aside."""
    if study.config is not None:
        named = [e.name for e in study.config.space if not isinstance(e, FixedEntry)]
    else:
        named = list(study.varied)
    return [p for p in named if p in study.params and not is_seed(p)]


def first_factor(study: Study) -> str | None:
    """The study's first factor: the question its study file asks first (module docstring)."""
    found = factors(study)
    return found[0] if found else None
