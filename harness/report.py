"""Rich tables for what the harness measured (GiB at display only)."""

from __future__ import annotations

import sys
from typing import Any

from planner.measurement import CATEGORIES, PHASES

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
