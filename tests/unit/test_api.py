"""The Python API (issue 6): ``from planner import plan`` returns what ``plan --json`` prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import planner
from planner import Plan, PlannerError, plan
from planner.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    ("kwargs", "argv"),
    [
        ({"method": "lora", "instance": "p4de.24xlarge"}, ["--method", "lora", "--instance", "p4de.24xlarge"]),
        (
            {"method": "full", "gpu": "h100", "gpus": 8, "batch_size": "max", "grad_ckpt": False, "zero": 2, "offload": "none"},
            ["--method", "full", "--gpu", "h100", "--gpus", "8", "--batch-size", "max", "--no-grad-ckpt"]
            + ["--zero", "2", "--offload", "none"],
        ),
        ({"gpu": "a100", "lora_targets": ["q_proj", "v_proj"], "lora_rank": 16}, ["--gpu", "a100", "--lora-targets=q_proj,v_proj", "-r16"]),
    ],
)
def test_plan_is_the_cli_json(capsys, kwargs, argv):
    got = plan("70b", **kwargs)
    assert isinstance(got, Plan)
    assert main(["--model", "70b", *argv, "--json"]) == 0
    assert got.model_dump(mode="json") == json.loads(capsys.readouterr().out)


def test_bad_input_raises_the_cli_message():
    with pytest.raises(PlannerError, match="unknown gpu 'nope'"):
        plan("7b", gpu="nope")
    with pytest.raises(PlannerError, match="No such option"):
        plan("7b", gpu="a100", frobnicate=1)
    with pytest.raises(PlannerError, match="command-line only"):
        plan("7b", gpu="a100", emit="/tmp/x")


def test_the_public_surface_is_typed_and_listed():
    assert set(planner.__all__) == {"DeepSpeedConfig", "Plan", "PlannerError", "TrainingSpec", "__version__", "plan"}
    for name in planner.__all__:
        assert getattr(planner, name) is not None
    assert plan.__annotations__["return"] in ("Plan", Plan)


def test_the_readme_example_runs():
    """The README's Python example, as written."""
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["p"], Plan)
