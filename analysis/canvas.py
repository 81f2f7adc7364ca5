"""Figures as ``Chart`` records: a matplotlib ``Figure`` drawn on an Agg canvas, written as PNG later.

Figures are built as ``Figure`` objects on an Agg canvas rather than through pyplot: no display
is needed on a cluster node, and a launcher or notebook that calls ``analyse()`` keeps its own
backend and pyplot state untouched. Drawing (``plots.py``, a task's section) and writing
(``pipeline.py``) are apart: a chart knows its file name and how to save itself.

Colours by the study's first factor (``colouring``): a factor of at most ``DISCRETE_LIMIT`` values
gets tab10's distinct colours in value order and a legend (0 and 1 km must not look alike); more
numeric values keep a continuous map with a colour bar. Every figure is laid out by matplotlib's
constrained layout, and ``overlaps`` finds labels, tick labels, titles and legends that still cover
each other once drawn (``pipeline.py`` warns of any; the tests require none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.cm
import matplotlib.colors
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import roles
from .load import Study
from .tables import fmt_value

DPI = 110
CMAP = "viridis"
DISCRETE_LIMIT = 10  # a factor of at most this many values gets distinct colours (tab10 has ten)


@dataclass
class Chart:
    """One figure, drawn and not yet written."""

    name: str  # the file name without .png (``names.py``)
    figure: Figure
    alt: str  # how report.md describes it

    def save(self, out_dir: Path) -> Path:
        path = out_dir / f"{self.name}.png"
        self.figure.savefig(path, dpi=DPI)
        return path


def figure(nrows: int, ncols: int, figsize) -> tuple[Figure, np.ndarray]:
    """A figure laid out by constrained layout: labels, colour bars and legends outside the axes get room."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


@dataclass
class Colouring:
    """Each trial's colour by the study's first factor, and the key that explains it (legend or colour bar)."""

    key: str | None  # the factor; None: one colour for every trial
    by_trial: dict  # trial id -> RGBA
    palette: dict[str, tuple] | None = None  # a factor of few values: its label -> colour, in value order
    scale: matplotlib.cm.ScalarMappable | None = None  # a factor of many numeric values

    def of(self, trial_id) -> tuple:
        return self.by_trial.get(trial_id, UNSET)

    def explain(self, fig: Figure, axes) -> None:
        """The legend of a few values, outside the axes on the right, or a colour bar beside ``axes``."""
        if self.palette:
            handles = [Line2D([], [], ls="-", marker="o", color=c, label=label) for label, c in self.palette.items()]
            fig.legend(handles=handles, title=self.key, loc="outside right upper", fontsize=8, title_fontsize=8)
        elif self.scale is not None:
            fig.colorbar(self.scale, ax=axes, label=self.key)


UNSET = matplotlib.colors.to_rgba("lightgrey")  # a trial without a value of the factor (a conditional entry)


def palette(values) -> dict:
    """Each distinct value, in value order, -> tab10's colour of its rank (at most ``DISCRETE_LIMIT`` values)."""
    tab10 = matplotlib.colormaps["tab10"]
    ordered = sorted(set(values))
    if len(ordered) > DISCRETE_LIMIT:
        raise ValueError(f"{len(ordered)} values: a palette holds at most {DISCRETE_LIMIT}")
    return {value: tab10(rank) for rank, value in enumerate(ordered)}


def colouring(study: Study) -> Colouring:
    """Colour trials by the study's first factor (``roles.first_factor``, the question it asks first):
    a few values (numbers or names) by tab10, many numbers by a continuous map, else one colour."""
    key = roles.first_factor(study)
    trials = study.trials.set_index("trial_id")
    if key is None or key not in trials:
        return Colouring(None, {})
    numeric = study.param_kinds.get(key) in ("int", "float")
    raw = pd.to_numeric(trials[key], errors="coerce") if numeric else trials[key]
    present = raw.dropna()
    distinct = sorted(set(present if numeric else present.map(str)))
    if 0 < len(distinct) <= DISCRETE_LIMIT:
        colours = palette(distinct)
        label = {value: fmt_value(value) for value in distinct}
        by_trial = {t: colours[v if numeric else str(v)] for t, v in present.items()}
        shown = {label[value]: colour for value, colour in colours.items()}
        return Colouring(key, by_trial, shown | ({"(unset)": UNSET} if len(present) < len(raw) else {}))
    if numeric and len(distinct):
        lo, hi = min(distinct), max(distinct)
        scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1), CMAP)
        return Colouring(key, {t: scale.to_rgba(v) for t, v in present.items()}, scale=scale)
    return Colouring(None, {})


def overlaps(fig: Figure) -> list[str]:
    """Pairs of texts of ``fig`` whose boxes cover each other once drawn: each axes' labels, title, tick
    labels and legend, the figure's title and legends (a colour bar is an axes too). Tick labels of one
    axis are compared with every other text, not with each other. Empty for a readable figure."""
    fig.draw_without_rendering()  # places the layout (constrained, colour bars) and the ticks, draws no pixels
    renderer = fig.canvas.get_renderer()
    boxes = []
    for index, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        name = f"axes {index}"
        for axis in (ax.xaxis, ax.yaxis):
            group = f"{name} {axis.axis_name} tick labels"
            boxes += [(group, group, label) for label in _tick_labels(axis)]
            boxes.append((f"{name} {axis.axis_name} label", None, axis.label))
        boxes.append((f"{name} title", None, ax.title))
        if ax.get_legend() is not None:
            boxes.append((f"{name} legend", None, ax.get_legend()))
    boxes += [("figure legend", None, legend) for legend in fig.legends]
    if fig._suptitle is not None:
        boxes.append(("figure title", None, fig._suptitle))
    drawn = [(what, group, artist.get_window_extent(renderer)) for what, group, artist in boxes if _shown(artist)]
    found = []
    for i, (what, group, box) in enumerate(drawn):
        for other, other_group, other_box in drawn[i + 1 :]:
            if group is not None and group == other_group:
                continue
            if _intersection(box, other_box) > 1.0 and (pair := f"{what} and {other}") not in found:
                found.append(pair)
    return found


def _tick_labels(axis) -> list:
    """The tick labels drawn: the ticks inside the view (an axis keeps labels of ticks beyond it, undrawn)."""
    lo, hi = sorted(axis.get_view_interval())
    margin = 1e-9 * (hi - lo)
    ticks = [t for t in axis.get_major_ticks() + axis.get_minor_ticks() if lo - margin <= t.get_loc() <= hi + margin]
    return [label for t in ticks for label in (t.label1, t.label2) if label.get_visible() and label.get_text()]


def _shown(artist) -> bool:
    return artist.get_visible() and not (hasattr(artist, "get_text") and not artist.get_text())


def _intersection(a, b) -> float:
    """The smaller side, in pixels, of the rectangle two boxes share (0 when apart or only touching)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, min(width, height))
