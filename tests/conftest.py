"""Shared fixtures: the catalog and the golden counts from transformers/peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.catalog import find_gpu, find_instance, find_model
from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec

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

    from planner.calibration.agreement import compare, label
    from planner.catalog import data_dir
    from planner.render.tables import render_agreement
    from planner.schema.records import read_measurements

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

    import statistics

    from rich.table import Table

    from planner.calibration.published import compare_published, published_measurements
    from planner.schema.records import PublishedResult

    rows = [(m, m.result, c) for m in published_measurements() if isinstance(m.result, PublishedResult) for c in compare_published(m)]
    tab = Table(
        title="Planner vs published points (data/measurements/published; cited default coefficients). "
        "* the planner knowingly does not model part of the run (known_gap); llm-foundry's MPT runs count as the Llama of the same size",
        title_justify="left",
    )
    for col in ("id", "model", "method", "GPU", "published", "planner", "rel error"):
        tab.add_column(col, justify="left" if col in ("id", "model", "method", "GPU") else "right")

    def show(what: str, value: float) -> str:
        return f"{value:,.1f} tok/s" if what == "tokens_per_s_per_gpu" else f"{value / 2**30:,.1f} GiB"

    for m, r, c in rows:
        gpus = f"{m.spec.nodes}x {r.instance}" if r.instance else f"{m.spec.world_size}x {r.gpu}"
        point = r.source_id + (" *" if r.known_gap else "")
        tab.add_row(point, m.model, m.spec.method, gpus, show(c.what, c.published), show(c.what, c.predicted), f"{c.error_rel:+.1%}")
    summary = []
    for what, name in (("tokens_per_s_per_gpu", "tokens/s per GPU"), ("peak_memory_bytes_per_gpu", "peak memory per GPU")):
        errs = [(abs(c.error_rel), r.source_id, c.error_rel) for _, r, c in rows if c.what == what]
        if errs:
            _, worst_id, worst = max(errs)
            med = statistics.median(e for e, _, _ in errs)
            n = f"{len(errs)} point" + ("s" if len(errs) != 1 else "")
            summary.append(f"{name}: {n}, median |error| {med:.1%}, worst {worst:+.1%} ({worst_id})")
    tab.caption, tab.caption_justify = "\n".join(summary), "left"
    buf = io.StringIO()
    Console(file=buf, width=150, color_system=None).print(tab)
    terminalreporter.write_sep("=", f"planner vs published points: {len(rows)} figures; " + "; ".join(summary))
    terminalreporter.write(buf.getvalue())

    from planner.calibration.agreement import compare_run

    runs = (
        [m for m in read_measurements(data_dir() / "measurements" / "run") if m.result is not None]
        if (data_dir() / "measurements" / "run").is_dir()
        else []
    )
    if runs:
        from planner.calibration.agreement import device_calibration

        cal = device_calibration(runs[0])
        tab = Table(
            title=f"Real DeepSpeed runs on the CPU (rank 0): planner ({cal.id}) / measured - 1 of each phase's live peak",
            title_justify="left",
        )
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
