"""The Python API: ``plan``, ``compare``, ``sweep`` and ``cheapest`` return what the matching
command prints with ``--json``, print nothing, raise the command line's one-line message, and
give the same answers from several threads at once."""

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
    assert set(planner.__all__) == {
        "CompareRow", "DeepSpeedConfig", "Plan", "PlanRequest", "PlannerError", "Row", "TrainingSpec", "__version__",
        "cheapest", "compare", "plan", "sweep",
    }  # fmt: skip
    from planner import api, search

    assert planner.plan is api.plan and planner.sweep is api.sweep and planner.Row is search.Row
    assert issubclass(planner.PlannerError, ValueError)
    for f, returns in ((api.plan, "Plan"), (api.compare, "list[CompareRow]"), (api.sweep, "list[Row]"), (api.cheapest, "list[Row]")):
        assert f.__annotations__["return"] == returns, f.__name__


def test_the_readme_example_runs():
    """The README's Python example, as written."""
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["p"], Plan)


def _cli_json(capsys, argv: list[str]):
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_sweep_and_cheapest_are_the_cli_json_and_print_nothing(capsys):
    from planner import cheapest, compare, sweep

    capsys.readouterr()
    rows = compare("13b", methods="full,lora", instances=["p4de.24xlarge", "p5.48xlarge"])
    swept = sweep(models="7b,13b", methods="lora", instances="p4de.24xlarge", batch_size="1,max")
    best = cheapest("7b", method="lora", max_nodes=2)
    assert capsys.readouterr() == ("", "")  # nothing printed, on either stream
    assert [r.as_dict() for r in rows] == _cli_json(capsys, ["compare", "--model", "13b", "--methods", "full,lora",
                                                             "--instances", "p4de.24xlarge,p5.48xlarge"])  # fmt: skip
    assert len(rows) == 4 and [r.plan.inputs.spec.method for r in rows] == ["full", "lora", "full", "lora"]
    assert [r.as_dict() for r in swept] == _cli_json(capsys, ["sweep", "-m", "7b,13b", "--method", "lora", "-i", "p4de.24xlarge",
                                                              "-b", "1,max"])  # fmt: skip
    assert len(swept) == 4 and swept[0].usd_per_epoch is not None
    got = _cli_json(capsys, ["cheapest", "--model", "7b", "--method", "lora", "--max-nodes", "2"])
    assert got == {"cheapest": best[0].as_dict(), "candidates": [r.as_dict() for r in best]}
    costs = [r.usd_per_epoch for r in best if r.usd_per_epoch is not None]
    assert costs == sorted(costs) and costs[0] == best[0].usd_per_epoch


def test_a_request_is_the_same_as_its_keywords():
    from planner import PlanRequest

    req = PlanRequest(model="70b", method="full", instance="p4de.24xlarge", offload="none", batch_size=2)
    assert plan(req) == plan("70b", method="full", instance="p4de.24xlarge", offload="none", batch_size="2")
    assert plan(req, batch_size=4).inputs.spec.micro_batch_size == 4  # keywords update a request
    assert req.model_fields_set == {"model", "method", "instance", "offload", "batch_size"}


@pytest.mark.parametrize(
    ("kwargs", "argv"),
    [
        ({"seq_len": 0}, ["--seq-len", "0"]),
        ({"method": "dpo"}, ["--method", "dpo"]),
        ({"zero": 4}, ["--zero", "4"]),
        ({"gpus": 4}, ["--gpus", "4"]),
        ({"lora_rank": 100000}, ["--lora-rank", "100000"]),
        ({"zero": 0}, ["--zero", "0"]),
        ({"epochs": 0}, ["--epochs", "0"]),
        ({"batch_size": "lots"}, ["--batch-size", "lots"]),
        ({"frobnicate": 1}, ["--frobnicate", "1"]),
    ],
)
def test_bad_input_raises_exactly_the_cli_message(capsys, kwargs, argv):
    with pytest.raises(PlannerError) as info:
        plan("7b", instance="p4de.24xlarge", **kwargs)
    capsys.readouterr()
    assert main(["--model", "7b", "--instance", "p4de.24xlarge", *argv, "--json"]) == 2
    assert capsys.readouterr().err == f"plan: error: {info.value}\n"


def _mixed_calls() -> list:
    """200 calls of every function, good and bad input, in a fixed order."""
    from planner import cheapest, compare, sweep

    calls: list = []
    models, methods = ("7b", "13b", "70b", "llama-3.1-8b", "mistral-7b-v0.1"), ("full", "lora", "qlora")
    for i in range(200):
        m, meth = models[i % 5], methods[i % 3]
        kind = i % 10
        if kind < 5:
            calls.append((plan, (m,), {"method": meth, "instance": "p4de.24xlarge", "batch_size": str(1 + i % 16)}))
        elif kind == 5:
            calls.append((plan, (m,), {"method": meth, "gpu": "h100", "gpus": 1 + i % 8, "batch_size": "max", "offload": "none"}))
        elif kind == 6:
            calls.append((compare, (m,), {"instance": "p4de.24xlarge", "seq_len": 256 * (1 + i % 4)}))
        elif kind == 7:
            calls.append((sweep, (), {"models": m, "methods": "lora", "instances": "p4de.24xlarge,p5.48xlarge"}))
        elif kind == 8:
            calls.append((plan, (m,), {"method": meth, "instance": "p4de.24xlarge", "zero": 0}))  # refused: offload needs ZeRO
        else:
            calls.append((cheapest, (m,), {"method": "lora"}) if i % 40 == 9 else (plan, ("no-such-model",), {"gpu": "a100"}))
    return calls


def _outcome(call) -> str:
    f, args, kwargs = call
    try:
        out = f(*args, **kwargs)
    except PlannerError as exc:
        return "error: " + str(exc)
    if isinstance(out, Plan):
        return out.model_dump_json()
    return json.dumps([r.as_dict() for r in out])


def test_two_threads_get_what_serial_calls_get():
    """2 threads x 200 mixed calls (plans, compares, sweeps, refusals, a cheapest) return exactly
    what the same calls return one after another: no call sees another's options or output."""
    from concurrent.futures import ThreadPoolExecutor

    calls = _mixed_calls()
    serial = [_outcome(c) for c in calls]
    assert sum(o.startswith("error: ") for o in serial) == 35 and len(set(serial)) > 100
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(lambda: [_outcome(c) for c in calls])
        second = pool.submit(lambda: [_outcome(c) for c in reversed(calls)])
        a, b = first.result(), second.result()
    assert a == serial
    assert b == serial[::-1]
