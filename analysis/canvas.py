"""Figures as ``Chart`` records: a matplotlib ``Figure`` drawn on an Agg canvas, written as PNG later.

Figures are built as ``Figure`` objects on an Agg canvas rather than through pyplot: no display
is needed on a cluster node, and a launcher or notebook that calls ``analyse()`` keeps its own
backend and pyplot state untouched. Drawing (``plots.py``, a task's section) and writing
(``pipeline.py``) are apart: a chart knows its file name and how to save itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.colors
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import roles
from .load import Study

DPI = 110
CMAP = "viridis"


@dataclass
class Chart:
    """One figure, drawn and not yet written."""

    name: str  # the file name without .png (``names.py``)
    figure: Figure
    alt: str  # how report.md describes it
    # tight_layout, else a bounding box fitted at saving (figures whose colorbar spans several axes,
    # which tight_layout cannot place).
    tight: bool = True

    def save(self, out_dir: Path) -> Path:
        path = out_dir / f"{self.name}.png"
        if self.tight:
            self.figure.tight_layout()
            self.figure.savefig(path, dpi=DPI)
        else:
            self.figure.savefig(path, dpi=DPI, bbox_inches="tight")
        return path


def figure(nrows: int, ncols: int, figsize) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def colour_key(study: Study) -> tuple[str | None, pd.Series]:
    """Colour trials by the study's first factor (``roles.first_factor``, the question it asks first)
    when it is a number, else one colour."""
    key = roles.first_factor(study)
    if key is not None and study.param_kinds.get(key) in ("int", "float"):
        return key, pd.to_numeric(study.trials.set_index("trial_id")[key], errors="coerce")
    return None, pd.Series(0.0, index=study.trials["trial_id"])


def norm(values: pd.Series):
    lo, hi = np.nanmin(values.to_numpy(float)), np.nanmax(values.to_numpy(float))
    return matplotlib.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
