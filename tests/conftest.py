"""Shared fixtures: the catalog and the golden counts from transformers/peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.catalog import find_gpu, find_instance, find_model
from planner.schemas import Architecture
from planner.spec import TrainingSpec

GOLDEN = Path(__file__).parent / "golden" / "reference_counts.json"


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="session")
def p4de():
    inst = find_instance("p4de.24xlarge")
    return inst, find_gpu(inst.gpu)


def arch(name: str) -> Architecture:
    return find_model(name)


def spec(**kw) -> TrainingSpec:
    return TrainingSpec(**kw)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the planner-vs-trace table (data/measurements/trace) at the end of every run."""
    import io

    from rich.console import Console

    from planner.agreement import compare, label
    from planner.catalog import data_dir
    from planner.measurement import read_measurements
    from planner.render import render_agreement

    if terminalreporter.config.getoption("benchmark_only", False):
        return  # the benchmark step of .ci/run: only the timings
    folder = data_dir() / "measurements" / "trace"
    if not folder.is_dir():
        return
    records = [m for m in read_measurements(folder) if m.result is not None]
    buf = io.StringIO()
    render_agreement([(label(m), compare(m)) for m in records], Console(file=buf, width=130, color_system=None))
    terminalreporter.write_sep("=", f"planner vs trace: {len(records)} committed records")
    terminalreporter.write(buf.getvalue())

    from rich.table import Table

    from planner.published import predicted_tokens_per_s_per_gpu, published_throughput

    points = published_throughput()
    rows = [(p, predicted_tokens_per_s_per_gpu(p)) for p in points]
    tab = Table(title="Throughput: planner vs published (tokens/s per GPU; cited default coefficients)", title_justify="left")
    for col in ("point", "published", "planner", "error"):
        tab.add_column(col, justify="left" if col == "point" else "right")
    for p, pred in rows:
        tab.add_row(p.id, f"{p.tokens_per_s_per_gpu:,.0f}", f"{pred:,.0f}", f"{pred / p.tokens_per_s_per_gpu - 1:+.1%}")
    import statistics

    med = statistics.median(abs(pred / p.tokens_per_s_per_gpu - 1) for p, pred in rows)
    buf = io.StringIO()
    Console(file=buf, width=130, color_system=None).print(tab)
    terminalreporter.write_sep("=", f"planner vs published throughput: {len(rows)} points, median |error| {med:.1%}")
    terminalreporter.write(buf.getvalue())

    from planner.agreement import compare_run

    runs = [m for m in read_measurements(data_dir() / "measurements" / "run") if m.result is not None] if (
        data_dir() / "measurements" / "run"
    ).is_dir() else []
    if runs:
        tab = Table(title="Real DeepSpeed runs on the CPU (rank 0): planner / measured - 1 of each phase's live peak", title_justify="left")
        for col in ("run", "forward", "backward", "optimizer step", "measured peak MiB"):
            tab.add_column(col, justify="left" if col == "run" else "right")
        errors = []
        for m in runs:
            totals = {r.what.split(".")[0]: r.error_rel for r in compare_run(m) if r.what.endswith(".total")}
            errors += list(totals.values())
            tab.add_row(
                label(m),
                *(f"{totals.get(p, float('nan')):+.1%}" for p in ("forward", "backward", "optimizer_step")),
                f"{m.result.peak_bytes / 2**20:,.1f}",
            )
        buf = io.StringIO()
        Console(file=buf, width=130, color_system=None).print(tab)
        med = statistics.median(abs(e) for e in errors)
        terminalreporter.write_sep("=", f"planner vs real runs: {len(runs)} records, median |phase error| {med:.1%}")
        terminalreporter.write(buf.getvalue())
