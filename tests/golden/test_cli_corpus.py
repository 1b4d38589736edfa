"""Every recorded ``plan`` invocation prints, exits and writes exactly what it did when the
corpus was recorded (``tests/golden/cli_corpus.py``): the CLI's behaviour is a public contract.
Record again only for an intended change, and say why in the CHANGELOG."""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("cli_corpus", Path(__file__).with_name("cli_corpus.py"))
assert _spec is not None and _spec.loader is not None
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

CASES = corpus.load()


def test_the_corpus_covers_every_command_and_its_errors():
    """At least 300 invocations, each command among them, refusals with their exit code 2."""
    assert len(CASES) >= 300
    first = {c["argv"][0] if c["argv"][0] in ("compare", "sweep", "cheapest", "list") else "plan" for c in CASES}
    assert first == {"plan", "compare", "sweep", "cheapest", "list"}
    assert sum(c["rc"] == 2 for c in CASES) >= 100 and sum(c["rc"] == 0 for c in CASES) >= 200
    assert [c["argv"] for c in CASES] == [c["argv"] for c in corpus.cases()]  # the recording is of today's list


def _diff(want: str, got: str) -> str:
    return "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "recorded", "now", n=2))[:60])


@pytest.mark.parametrize("case", CASES, ids=[f"{c['id']}:{' '.join(c['argv'])[:80]}" for c in CASES])
def test_invocation_is_byte_identical(case, tmp_path, monkeypatch):
    monkeypatch.chdir(corpus.ROOT)
    monkeypatch.delenv("PLANNER_DATA_DIR", raising=False)
    monkeypatch.setenv("COLUMNS", os.environ.get("COLUMNS", "160"))
    got = corpus.run_case(case["argv"], tmp_path)
    assert got["stderr"] == case["stderr"], _diff(case["stderr"], got["stderr"])
    assert got["rc"] == case["rc"]
    assert got["stdout"] == case["stdout"], _diff(case["stdout"], got["stdout"])
    assert got["written"].keys() == case["written"].keys()
    for name, text in case["written"].items():
        assert got["written"][name] == text, f"{name}:\n" + _diff(text, got["written"][name])
