"""Analysis of study directories: trial tables, ablations, the loss-versus-1 km study, importance, plots.

``analyse(study_dir, out_dir=None, by=None, formats=("md", "tex", "csv"), epoch=None, baseline=None)``
or ``python -m analysis STUDY_DIR``; reads only the files tune_main.py writes (no Ray needed).
``read_study(study_dir)`` gives the study itself: trial, epoch, per-seed and error-curve tables and
its metric registry. Trials are compared at one epoch (``budget.py``).
"""

from .load import AnalysisError, read_study
from .pipeline import analyse

__all__ = ["AnalysisError", "analyse", "read_study"]
