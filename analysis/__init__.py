"""Analysis of study directories: trial tables, ablations, the loss-versus-1 km study, importance, plots.

``analyse(study_dir, out_dir=None, by=None, formats=("md", "tex", "csv"), which="final")`` or
``python -m analysis STUDY_DIR``; reads only the files tune_main.py writes (no Ray needed).
``read_study(study_dir)`` gives the study itself: trial and epoch tables and its metric registry.
"""

from .load import AnalysisError, read_study
from .pipeline import analyse

__all__ = ["AnalysisError", "analyse", "read_study"]
