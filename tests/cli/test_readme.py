"""The README's two commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _commands() -> list[str]:
    return re.findall(r"```bash\n(python3 -m venv[^\n]+)\n```", (ROOT / "README.md").read_text())


def test_readme_has_a_run_command_and_a_test_command():
    run, test = _commands()[:2]
    assert run.endswith("plan --model 70b --method lora --instance p4de.24xlarge")
    assert "pytest" in test and "pip install torch==2.13.0" in test


def test_ci_runs_exactly_the_readme_test_command():
    test = _commands()[1]
    ci_lines = [x.strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines


def test_run_command_installs_no_torch():
    run = _commands()[0]
    assert "torch" not in run.split("&& plan")[0] and "[dev]" not in run
