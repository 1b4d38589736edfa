"""``python -m planner.calibration report``: the three agreement tables say what the data files hold.

The counts are read from the committed files as plain JSON here, and the median published
tokens/s error is recomputed from the points' own plan options (``predicted_tokens_per_s_per_gpu``),
not from the records the report reads, so a report that drops, repeats or mislabels rows fails.
"""

from __future__ import annotations

import json
import re
import statistics

import pytest

from planner.calibration import report
from planner.calibration.__main__ import main as dispatch
from planner.calibration.agreement import PUBLISHED_MEDIAN_ABS_ERROR_MAX
from planner.calibration.published import predicted_tokens_per_s_per_gpu, published_memory, published_throughput
from planner.catalog import data_dir


def _lines_with_result(folder: str) -> int:
    n = 0
    for path in sorted((data_dir() / "measurements" / folder).rglob("*.jsonl")):
        n += sum(json.loads(line)["result"] is not None for line in path.read_text().splitlines() if line.strip())
    return n


def _raw(name: str) -> dict:
    return json.loads((data_dir() / "published" / name).read_text())


@pytest.fixture(scope="module")
def printed() -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert report.main([]) == 0
    return buf.getvalue()


def _section(printed: str, heading: str) -> str:
    start = printed.index(heading)
    nxt = printed.find("\n=", start + 1)
    return printed[start : nxt if nxt >= 0 else len(printed)]


def test_the_trace_table_counts_every_committed_trace(printed):
    n = _lines_with_result("trace")
    assert n >= 30
    assert re.search(rf"= planner vs trace: {n} committed records =", printed)
    # every record gets its peak row, and every one agrees (the tests hold it to that)
    assert _section(printed, "planner vs trace:").count("│ peak ") == n
    assert " NO " not in _section(printed, "planner vs trace:")


def test_the_published_table_has_every_figure_of_the_data_files(printed):
    throughput, memory = _raw("throughput.json")["points"], _raw("memory.json")["points"]
    figures = len(throughput) + sum(1 + (p.get("tokens_per_s_per_gpu") is not None) for p in memory)
    assert re.search(rf"= planner vs published points: {figures} figures", printed)
    section = _section(printed, "planner vs published points:")
    for p in throughput + memory:
        assert f"│ {p['id']}" in section, p["id"]
    n_tokens = len(throughput) + sum(p.get("tokens_per_s_per_gpu") is not None for p in memory)
    assert f"tokens/s per GPU: {n_tokens} points," in section
    assert f"peak memory per GPU: {len(memory)} point{'s' if len(memory) != 1 else ''}," in section


def test_the_median_published_tokens_error_is_the_one_computed_here(printed):
    points = [*published_throughput(), *(m for m in published_memory() if m.tokens_per_s_per_gpu is not None)]
    errors = [abs(predicted_tokens_per_s_per_gpu(p) / p.tokens_per_s_per_gpu - 1) for p in points]
    median = statistics.median(errors)
    assert median <= PUBLISHED_MEDIAN_ABS_ERROR_MAX  # the README's 9.4 %
    shown = re.search(r"tokens/s per GPU: (\d+) points, median \|error\| ([\d.]+)%", printed)
    assert shown is not None
    assert int(shown[1]) == len(points)
    assert shown[2] == f"{median * 100:.1f}"


def test_the_run_table_has_a_row_per_committed_run(printed):
    n = _lines_with_result("run")
    assert n >= 24
    assert re.search(rf"= planner vs real runs: {n} records, median \|phase error\| [\d.]+% =", printed)
    section = _section(printed, "planner vs real runs:")
    rows = [line for line in section.splitlines() if re.match(r"│ \S+-tiny ", line)]
    assert len(rows) == n
    # each row: three phase errors, then the measured peak in MiB
    assert all(len(re.findall(r"[+-]\d+\.\d%", row)) == 3 for row in rows)


def test_the_output_is_plain_and_fixed_width(printed):
    assert "\x1b[" not in printed  # no colour codes, even where a terminal would get them
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= report.WIDTH
    assert all(line == line.rstrip() for line in lines)


def test_the_dispatcher_runs_it(capsys):
    assert dispatch(["report"]) == 0
    assert "planner vs real runs:" in capsys.readouterr().out
