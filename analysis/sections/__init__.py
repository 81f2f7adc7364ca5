"""Task sections: what a task's own analysis adds beside the generic one.

A task names its section in the task seam (``Task.analysis``, ``geoloc/tasks/seam.py``); the
section is the module ``analysis.sections.<name>`` (GeoCLIP's: ``analysis/sections/geoclip/``),
imported only for a study of that task. It provides two functions, the two steps of
``analyse()`` it takes part in:

- ``compute(study, budget, found, bins, *, min_country_images)``: its numbers, a record of its own,
  from the study at the budget and the generic `Findings` (``analysis/findings.py``); no file is
  written yet. ``min_country_images`` is ``--min-country-images`` (a section without countries ignores it).
- ``render(study, budget, numbers, found, plots)``: a `Part`, what it adds to the tables, figures
  and report.md; ``plots`` is False when no figure is wanted.

A study whose registry lacks what a section needs (a task's keys in an unexpected folder) gets
a section with nothing in it, never an error: each view skips the keys it does not find.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

import pandas as pd

from analysis import roles
from analysis.canvas import Chart
from analysis.formats import Table
from analysis.load import Study


@dataclass
class Part:
    """A task section's contribution to the analysis' outputs and report.md."""

    heading: str  # the heading of its block in report.md, after the arms against their baselines
    comparisons: list[Table] = field(default_factory=list)  # shown after the paired comparisons
    comparison_charts: list[Chart] = field(default_factory=list)  # shown after those tables
    tables: list[Table] = field(default_factory=list)  # its block's tables (written even when empty)
    charts: list[Chart] = field(default_factory=list)  # its block's figures (the learning curves follow)
    summary: list[str] = field(default_factory=list)  # summary lines, after the generic effects
    evidence: str = ""  # a clause of the summary's strength of evidence, after its first sentence
    files: dict[str, pd.DataFrame] = field(default_factory=dict)  # plain CSV files: file name -> rows
    result: dict = field(default_factory=dict)  # entries of analyse()'s result


def section_of(study: Study) -> ModuleType | None:
    """The analysis section of the study's task (``Task.analysis``), or None when it has none."""
    name = roles.task(study).analysis
    return importlib.import_module(f"analysis.sections.{name}") if name else None
