"""Rich tables for what the harness measured (GiB at display only)."""

from __future__ import annotations

import sys
from typing import Any

from planner.schema.memory import CATEGORIES
from planner.schema.memory import MEASURED_PHASES as PHASES

GIB = 2**30


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def render_trace(record: Any, console: Any = None) -> None:
    from rich.table import Table

    console = console or _console()
    r = record.result
    s = record.spec
    title = (
        f"{record.model} {s.method}  b={s.micro_batch_size} s={s.seq_len}  {s.precision}  {s.attention}  "
        f"grad-ckpt {'on' if s.grad_ckpt else 'off'}" + (f"  FSDP2 x{s.world_size} (per rank)" if record.sharding == "fsdp2" else "")
    )
    t = Table(title=f"Trace (steady-state step): {title}", title_justify="left")
    t.add_column("GiB", justify="left")
    for c in CATEGORIES:
        t.add_column(c.replace("_", " "), justify="right")
    t.add_column("total", justify="right", style="bold")
    for p in PHASES:
        split = r.phase_split_bytes.get(p)
        if split is None:
            continue
        mark = " (peak)" if p == r.peak_phase else ""
        t.add_row(p + mark, *(f"{getattr(split, c) / GIB:.2f}" for c in CATEGORIES), f"{split.total / GIB:.2f}")
    console.print(t)
    params = r.parameters
    console.print(f"parameters: {params.total:,} total, {params.trainable:,} trainable")
    if r.flops is not None:
        console.print(f"FLOPs per step: forward {r.flops.forward:.4g}, backward {r.flops.backward:.4g}")
    if len(r.steps) > 1:
        console.print(
            f"first step peak {r.steps[0].peak_bytes / GIB:.2f} GiB ({r.steps[0].peak_phase}); steady {r.peak_bytes / GIB:.2f} GiB"
        )
    console.print(f"traced in {r.wall_s:.1f} s, max RSS {r.max_rss_bytes / GIB:.2f} GiB")


def render_run(record: Any, console: Any = None) -> None:
    """``harness run``: per phase the measured live tensors by category next to the planner's
    prediction for the same spec, then speed and checkpoint files. MiB (2^20 bytes)."""
    from rich.table import Table

    from planner.catalog import find_model, load_calibration
    from planner.estimate.memory import gpu_memory

    console = console or _console()
    r, s = record.result, record.spec
    mib = 2**20
    predicted = gpu_memory(find_model(record.model), s, load_calibration()).phases
    title = (
        f"{record.model} {s.method}  ZeRO-{s.zero_stage} x{r.world_size}  offload {s.offload}  b={s.micro_batch_size} s={s.seq_len}  "
        f"{s.precision}  grad-ckpt {'on' if s.grad_ckpt else 'off'}  on {r.device}"
    )
    t = Table(title=f"Real step (rank 0, live tensors, MiB; planner in brackets): {title}", title_justify="left")
    t.add_column("phase", justify="left")
    for c in CATEGORIES:
        t.add_column(c.replace("_", " "), justify="right")
    t.add_column("total", justify="right", style="bold")
    t.add_column("planner error", justify="right")
    for p in PHASES:
        ph = r.phases.get(p)
        if ph is None:
            continue
        pred = predicted[p]
        mark = " (peak)" if p == r.peak_phase else ""
        cells = [f"{getattr(ph.at_peak_bytes, c) / mib:.2f} [{getattr(pred, c) / mib:.2f}]" for c in CATEGORIES]
        err = pred.total / ph.peak_bytes - 1 if ph.peak_bytes else 0.0
        t.add_row(p + mark, *cells, f"{ph.peak_bytes / mib:.2f} [{pred.total / mib:.2f}]", f"{err:+.1%}")
    console.print(t)
    console.print(
        f"tokens/s (all ranks): {r.tokens_per_s:,.0f}   median step {r.median_step_s:.3f} s over {len(r.step_times_s)} steps   "
        f"max RSS {r.max_rss_bytes / mib:,.0f} MiB"
    )
    if r.checkpoint is not None:
        ck = r.checkpoint
        files = Table(title="Checkpoint files (bytes)", title_justify="left")
        files.add_column("file")
        files.add_column("bytes", justify="right")
        for name, n in ck.files_bytes.items():
            files.add_row(name, f"{n:,}")
        console.print(files)
        console.print(
            f"save_pretrained tensor payload: {ck.pretrained_tensor_bytes:,} bytes; "
            f"host RSS rise while saving {ck.save_rss_rise_bytes / mib:.1f} MiB"
        )


def render_calibration(cal: Any, path: Any, records: list[Any], console: Any = None) -> None:
    """The fitted coefficients (against the cited defaults) and the residuals per quantity."""
    from rich.table import Table

    from planner.catalog import load_calibration

    console = console or _console()
    base = load_calibration("default")
    failed = sum(1 for m in records if m.result is None)
    t = Table(title=f"Calibration {cal.id} -> {path}", title_justify="left")
    for c, j in (("coefficient", "left"), ("default", "right"), ("fitted", "right"), ("unit", "left")):
        t.add_column(c, justify=j)  # type: ignore[arg-type]
    for k, c in cal.coefficients.items():
        if c.calibrated:
            t.add_row(k, f"{base.value(k):.4g}", f"{c.value:.4g}", c.unit)
    console.print(t)
    r = Table(title=f"Residuals: planner with these coefficients vs {cal.n_records} measured runs ({failed} failed run(s) recorded)",
              title_justify="left")
    for c in ("quantity", "n", "median |err|", "p90 |err|", "worst |err|", "bias"):
        r.add_column(c, justify="left" if c == "quantity" else "right")
    for k, v in (cal.residuals or {}).items():
        r.add_row(k, str(v.n), f"{v.median_rel:.1%}", f"{v.p90_rel:.1%}", f"{v.max_rel:.1%}", f"{v.bias_rel:+.1%}")
    console.print(r)
