"""Figures a reader can tell apart (analysis/canvas.py): a factor of few values gets tab10's distinct
colours in value order and a legend, many values a colour bar; no label, tick label, title or legend
covers another, checked by ``overlaps`` on every figure the analysis draws."""

from __future__ import annotations

import matplotlib
import pytest

from analysis import analyse, read_study
from analysis.canvas import DISCRETE_LIMIT, colouring, figure, overlaps, palette
from analysis.plots import learning_curves
from geoloc.study.folders import Status, StatusRecord

from .test_analysis import build_known
from .test_analysis_budget import build_asha, build_seeded, row, write_study, write_trial
from .test_analysis_pareto import build as build_pareto

SIGMA = "train.noise.batch_sigma"
NOISE_KM = [25.0, 0.0, 5.0, 1.0]  # studies/noise_tradeoff.yaml's values, written out of order


def build_noise_tradeoff(root, values=NOISE_KM, key=SIGMA, kind="choice"):
    """One finished trial of two epochs per value of ``key``, the study file's only search-space entry."""
    entry = {"type": "choice", "values": sorted(values)} if kind == "choice" else {"type": kind, "low": 1, "high": 99}
    write_study(root, {"name": "noise_tradeoff", "base": {"train": {"epochs": 2}}, "search_space": {key: entry}})
    for k, value in enumerate(values):
        rows = [row(e, 0.1 + 0.01 * k, 0.3, 3.0 - 0.1 * k) for e in (1, 2)]
        write_trial(root, k, {key: value}, StatusRecord(Status.FINISHED, 2, 2), rows, seed=0)
    return root


def test_overlap_check_catches_a_label_over_its_tick_labels_and_passes_a_clean_figure():
    def drawn(label_x: float):
        fig, axes = figure(1, 2, (6, 3))
        for ax in axes[0]:
            ax.plot([0, 1], [1000.0, 2000.0])
            ax.set_ylabel("acc_1km")
            ax.yaxis.set_label_coords(label_x, 0.5)
        return fig

    assert overlaps(drawn(-0.25)) == []
    assert overlaps(drawn(-0.05)) == [  # each label on top of its "1000"
        "axes 0 y tick labels and axes 0 y label",
        "axes 1 y tick labels and axes 1 y label",
    ]
    fig, axes = figure(1, 1, (4, 3))
    axes[0, 0].set_title("a title")
    axes[0, 0].legend(
        handles=[matplotlib.lines.Line2D([], [], label="x")], loc="lower center", bbox_to_anchor=(0.5, 0.98)
    )
    assert overlaps(fig) == ["axes 0 title and axes 0 legend"]


def test_a_factor_of_few_values_gets_distinct_colours_in_value_order():
    tab10 = matplotlib.colormaps["tab10"]
    colours = palette(NOISE_KM)
    assert list(colours) == [0.0, 1.0, 5.0, 25.0]
    assert list(colours.values()) == [tab10(0), tab10(1), tab10(2), tab10(3)]
    assert len(set(colours.values())) == 4
    with pytest.raises(ValueError):
        palette(range(DISCRETE_LIMIT + 1))


def test_learning_curves_of_the_noise_study_tell_its_four_values_apart(tmp_path):
    study = read_study(build_noise_tradeoff(tmp_path / "study"))
    colours = colouring(study)
    assert colours.key == SIGMA and colours.scale is None
    assert list(colours.palette) == ["0", "1", "5", "25"]
    chart = learning_curves(study)
    (legend,) = chart.figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["0", "1", "5", "25"]
    assert not [ax for ax in chart.figure.axes if ax.get_label() == "<colorbar>"]
    by_value = {value: palette(NOISE_KM)[value] for value in NOISE_KM}
    curves = [line for line in chart.figure.axes[0].lines if len(line.get_xdata()) == 2]
    assert [matplotlib.colors.to_rgba(line.get_color()) for line in curves] == [by_value[v] for v in NOISE_KM]
    assert overlaps(chart.figure) == []


def test_a_factor_of_many_values_keeps_a_colour_bar(tmp_path):
    values = [float(v) for v in range(1, DISCRETE_LIMIT + 3)]
    study = read_study(build_noise_tradeoff(tmp_path / "study", values, "train.queue_size", kind="int"))
    colours = colouring(study)
    assert colours.palette is None and colours.scale is not None
    chart = learning_curves(study)
    assert not chart.figure.legends and [ax for ax in chart.figure.axes if ax.get_label() == "<colorbar>"]
    assert overlaps(chart.figure) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["noise_tradeoff", "known", "asha", "seeded", "pareto"])
def test_every_figure_of_every_study_kind_is_readable(tmp_path, kind):
    """The planted studies of the analysis tests cover every figure the shipped studies draw (learning
    curves, accuracy against threshold, metrics against numeric, categorical and log-scaled parameters,
    parallel coordinates, importance, loss against accuracy, error curves, a Pareto front, hypervolume)."""
    root = tmp_path / "study"
    builders = {
        "noise_tradeoff": build_noise_tradeoff,
        "known": build_known,
        "asha": build_asha,
        "seeded": build_seeded,
        "pareto": lambda r: build_pareto(r, {"type": "pareto", "metrics": ["acc_1km", "acc_2500km"]}),
    }
    builders[kind](root)
    result = analyse(root, tmp_path / "out", echo_warnings=False)
    assert len(result["plots"]) >= 5
    assert [w for w in result["warnings"] if "overlap" in w] == []
