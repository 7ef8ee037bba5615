"""figures: what each figure shows, and that a figure is written whole or not at all."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from privbench import figures
from privbench.errors import PrivbenchError


def test_a_figure_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "fig.png"
    figures.save_atomic(figures.roc_curves({"a": (np.array([0, 0.5, 1]), np.array([0, 1, 1]))}, "t"), path)
    first = path.read_bytes()
    assert Image.open(path).format == "PNG"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    fig = figures.similarity_heatmap(torch.eye(2), ["a", "b"], "t")
    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(PrivbenchError, match="cannot write .*fig.png: disk full"):  # one line, not a traceback
        figures.save_atomic(fig, path)
    assert path.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no partial file


def test_colours_mix_by_probability():
    probs = torch.zeros(4, 1, 2)
    probs[1, 0, 0] = 1  # one CSF voxel
    probs[[2, 3], 0, 1] = 0.5  # half GM, half WM
    rgb = figures.colour(probs)
    assert np.allclose(rgb[0, 0], figures.CLASS_COLOURS[1])
    assert np.allclose(rgb[0, 1], (figures.CLASS_COLOURS[2] + figures.CLASS_COLOURS[3]) / 2)


def test_the_heatmap_groups_requests_by_subject():
    sim = torch.tensor([[1.0, 0.1, 0.9], [0.1, 1.0, 0.2], [0.9, 0.2, 1.0]])
    fig = figures.similarity_heatmap(sim, ["b", "a", "b"], "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "b"]
    shown = ax.images[0].get_array()
    assert np.allclose(shown, sim[[1, 0, 2]][:, [1, 0, 2]].numpy())  # the two b scans form a block


def test_roc_curves_are_log_log_and_draw_fpr_zero_at_a_floor():
    fig = figures.roc_curves({"x": (np.array([0.0, 0.01, 1.0]), np.array([0.0, 0.5, 1.0]))}, "t")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlim()[0] == pytest.approx(0.005)  # half the smallest non-zero FPR
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "chance"]


def test_the_tta_curve_plots_every_k():
    table = pd.DataFrame({"k": [1, 2, 5], "msssim": [0.5, 0.6, 0.7], "oracle_a_msssim": [0.6, 0.7, 0.8],
                          "mixture_msssim": 0.4, "template_msssim": 0.3, "linkage_top1": [0.2, 0.5, 0.9],
                          "oracle_a_linkage_top1": [0.3, 0.6, 1.0], "mixture_linkage_top1": 0.2,
                          "chance_top1": 0.05})
    fig = figures.tta_average_curve(table)
    left, right = fig.axes
    assert list(left.lines[0].get_xdata()) == [1, 2, 5] and list(right.lines[0].get_ydata()) == [0.2, 0.5, 0.9]
    assert [t.get_text() for t in left.get_xticklabels()] == ["1", "2", "5"]
