"""Analysis of study directories: trial tables, ablations, paired comparisons, importance, plots, a report.

``analyse(study_dir, out_dir=None, by=None, formats=("md", "tex", "csv"), epoch=None, baseline=None)``
or ``python -m analysis STUDY_DIR``; reads only the files tune_main.py writes (no Ray needed).
``read_study(study_dir)`` gives the study itself: trial, epoch, per-seed and error-curve tables, its
validated study file and its metric registry. Trials are compared at one epoch (``budget.py``).
The generic analysis reads metric keys from the registry and the task seam only (``roles.py``); a
task's own views are its section (``analysis/sections/``; GeoCLIP's loss-versus-1 km question,
crossover distances and gallery ceiling in ``analysis/sections/geoclip/``).
"""

from .load import AnalysisError, read_study
from .pipeline import analyse

__all__ = ["AnalysisError", "analyse", "read_study"]
