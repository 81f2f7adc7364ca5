"""The compute step of ``analyse()``: every number of the generic analysis at one budget, as a
`Findings` record (the task's section computes its own beside it, ``analysis/sections/``).

Nothing here writes or renders: a user's mistake found while computing (an unknown
``--baseline``) is raised before any file exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from . import tables
from .budget import Budget
from .importance import Importance
from .load import Study
from .tables import Ablation

if TYPE_CHECKING:  # arms.py loads scipy and pareto.py moocore, which `import analysis` need not
    from .arms import Arms
    from .pareto import Front


@dataclass
class Findings:
    """Everything the generic tables, figures and summary are made from."""

    ablations: list[Ablation]  # one per parameter tabulated (--by), marked against its baseline
    arms: list[Arms]  # each compared parameter's arms, units and baseline (arms.py)
    comparison: pd.DataFrame  # arms.comparison: param, then compare.COLUMNS
    importance: Importance
    front: Front | None = None  # a Pareto study's front (pareto.front); None for a score study
    warnings: list[str] = field(default_factory=list)  # thin ablation cells, unusable objective metrics

    @property
    def arm_notes(self) -> list[str]:
        """How baselines were chosen, which parameters are compared unpaired."""
        return [note for a in self.arms for note in a.notes]


def compute(study: Study, budget: Budget, by: list[str], bins: int, baseline=None) -> Findings:
    """The generic analysis of ``study`` at ``budget``: ablation tables of the ``by`` parameters,
    arms against their baselines (``baseline``: --baseline VALUE), importance and a Pareto study's front."""
    # scipy, matplotlib and optuna take seconds to import: only once there is a study to analyse,
    # so that a wrong path or epoch is answered at once.
    from . import arms, compare, pareto
    from .importance import importances

    every_arm = arms.all_arms(study, budget, by, bins, baseline)  # an unknown --baseline stops here
    comparison = arms.comparison(study, budget, every_arm)
    ablations = [tables.ablation(study, budget, p, bins) for p in by] if len(budget.trials) else []
    baselines = {a.param: a.baseline for a in every_arm}
    warnings = []
    for ab in ablations:
        warnings += ab.warnings
        if ab.param in baselines:
            rule = f"Holm-corrected t-test p < {compare.ALPHA:g}; see the paired comparisons"
            tables.mark(ab, comparison[comparison["param"] == ab.param], baselines[ab.param], rule)
    importance = importances(study, budget.trials)
    front, notes = pareto.front(study)  # None for a score study
    return Findings(ablations, every_arm, comparison, importance, front, warnings + notes)
