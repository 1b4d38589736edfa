"""``plan compare``, ``plan sweep``, ``plan cheapest`` and ``plan list`` are commands of their
own: each documents its own options, and ``plan --model ...`` still plans one job."""

from __future__ import annotations

import re

import pytest

from planner.cli import main


def _raw_help(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def _help(capsys, *argv: str) -> str:
    return " ".join(_raw_help(capsys, *argv).split())


def _options(capsys, *argv: str) -> set[str]:
    """The options a command's help lists (the flag column, not flags named in help texts)."""
    rows = [line.strip().split("  ")[0] for line in _raw_help(capsys, *argv).splitlines() if line.startswith("  -")]
    return {f for row in rows for f in re.findall(r"--[a-z0-9][a-z0-9-]*", row)}


def test_compare_help_is_its_own(capsys):
    text = _help(capsys, "compare")
    assert text.startswith("Usage: plan compare [OPTIONS]") and "Compare methods" in text
    opts = _options(capsys, "compare")
    assert {"--methods", "--instances", "--model", "--instance", "--gpu", "--json", "--plot"} <= opts
    assert not {"--max-nodes", "--models", "--emit"} & opts


def test_sweep_help_is_its_own(capsys):
    text = _help(capsys, "sweep")
    assert text.startswith("Usage: plan sweep [OPTIONS]") and "Sweep models" in text
    assert "-m, --model, --models" in text and "--method, --methods" in text and "-i, --instance, --instances" in text
    assert "Comma list of micro batches" in text
    assert not {"--max-nodes", "--emit"} & _options(capsys, "sweep")


def test_cheapest_help_is_its_own(capsys):
    text = _help(capsys, "cheapest")
    assert text.startswith("Usage: plan cheapest [OPTIONS]") and "cheapest that fits" in text
    opts = _options(capsys, "cheapest")
    assert "--max-nodes" in opts and "--gpu" in opts
    assert not {"--instance", "--instances", "--methods", "--plot", "--emit"} & opts


def test_plan_help_lists_the_commands_and_one_plan_options(capsys):
    text = _help(capsys)
    assert "Commands: compare" in text and "sweep" in text and "cheapest" in text and "list" in text
    opts = _options(capsys)
    assert {"--model", "--instance", "--emit", "--plot", "--json", "--deepspeed"} <= opts
    assert not {"--max-nodes", "--models", "--methods", "--instances", "--mode"} & opts


@pytest.mark.parametrize("command", ["compare", "sweep", "cheapest"])
def test_every_command_takes_the_shared_plan_options(capsys, command):
    """Declared once (``PlanRequest``), so every command spells them alike."""
    from planner.schema.request import PlanRequest

    opts = _options(capsys, command)
    for field in ("seq_len", "zero", "offload", "precision", "lora_rank", "deepspeed", "calibration", "epochs"):
        assert PlanRequest.flag(field) in opts, (command, field)


def test_a_subcommand_refuses_what_is_not_its_option(capsys):
    assert main(["compare", "--model", "7b", "--instance", "p4de.24xlarge", "--max-nodes", "2"]) == 2
    assert "No such option: --max-nodes" in capsys.readouterr().err


def test_from_planner_import_sweep_returns_rows_and_prints_nothing(capsys):
    from planner import Row, sweep

    capsys.readouterr()
    rows = sweep(models="7b", methods="full,lora", instances="p4de.24xlarge")
    assert capsys.readouterr() == ("", "")
    assert len(rows) == 2 and all(isinstance(r, Row) for r in rows)
    assert {r.method for r in rows} == {"full", "lora"} and all(r.hardware == "p4de.24xlarge" for r in rows)
