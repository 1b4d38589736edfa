"""Pictures (issue 6): ``--plot FILE.png`` for plan, compare and sweep, and the calibration
scatter; matplotlib is optional and its absence is a one-line error."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from planner import plan
from planner.cli import main
from planner.errors import PlannerError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs the plot extra (matplotlib)")
PNG = b"\x89PNG\r\n\x1a\n"


def _texts(fig) -> str:
    out = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels()]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return " | ".join(out)


def test_the_plan_picture_has_every_phase_category_and_the_capacity():
    from planner.render.plots import plan_figure

    text = _texts(plan_figure(plan("70b", method="lora", instance="p4de.24xlarge")))
    axes = ("memory per GPU (GiB)", "forward", "backward *", "optimizer step", "checkpoint save", "GPU memory usable (79 GiB)")
    legend = ("parameters", "gradients", "optimizer states", "activations", "temporaries", "allocator reserve + CUDA context")
    for needle in (*axes, *legend):
        assert needle in text, needle


def test_the_compare_picture_has_per_gpu_and_per_node_against_capacity():
    from planner.render.plots import compare_figure

    plans = [plan("7b", method=m, instance="p4de.24xlarge", offload="none") for m in ("full", "lora")]
    fig = compare_figure(plans)
    text = _texts(fig)
    assert "per GPU" in text and "per node" in text and "host RAM" in text and "capacity" in text and "(GiB)" in text
    # the stacked bars add up to each plan's peak per GPU
    bars = [b for b in fig.axes[0].patches]
    tops = {round(b.get_x() + b.get_width() / 2): 0.0 for b in bars}
    for b in bars:
        tops[round(b.get_x() + b.get_width() / 2)] += b.get_height()
    for i, p in enumerate(plans):
        assert tops[i] == pytest.approx(p.memory.per_gpu.peak_bytes / 2**30, rel=1e-9)


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "70b", "--instance", "p4de.24xlarge"],
        ["compare", "--model", "7b", "--instance", "p4de.24xlarge"],
        ["sweep", "--model", "7b,70b", "--method", "full,lora", "--instance", "p4de.24xlarge,g5.48xlarge", "--batch-size", "max"],
    ],
)
def test_plot_writes_a_png(tmp_path, capsys, argv):
    out = tmp_path / "p.png"
    assert main([*argv, "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000


def test_plot_errors_are_one_line(tmp_path, capsys):
    hw = ["--model", "7b", "--instance", "p4de.24xlarge"]
    assert main([*hw, "--plot", str(tmp_path / "p.jpg")]) == 2
    assert "give a .png file name" in capsys.readouterr().err
    assert main([*hw, "--plot", str(tmp_path / "missing" / "p.png")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main(["cheapest", "--model", "7b", "--plot", str(tmp_path / "p.png")]) == 2


def test_without_matplotlib_plot_says_how_to_get_it(monkeypatch):
    from planner.render import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlannerError, match=r"pip install 'ft-planner\[plot\]'"):
        plots.plan_figure(plan("7b", gpu="a100"))


def test_the_calibration_picture(tmp_path):
    from planner.calibration.__main__ import main

    out = tmp_path / "c.png"
    assert main(["plot", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
