"""Analysis of study directories: trial tables, ablations, the loss-versus-1 km study, importance, plots.

``analyse(study_dir, out_dir=None, by=None, formats=("md", "tex", "csv"))`` or
``python -m analysis STUDY_DIR``; reads only the files tune_main.py writes (no Ray needed).
"""

from .load import AnalysisError, load_study
from .pipeline import analyse

__all__ = ["AnalysisError", "analyse", "load_study"]
