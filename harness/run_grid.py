"""Run a grid of ``harness run`` specs and append the records, resumably.

    python -m harness.run_grid [--out data/measurements/run/cpu.jsonl] [--grid cpu]

A spec already in the output file (same model, spec and process count, measured or failed) is
not run again, so an interrupted grid picks up where it stopped and nothing is repeated or
lost (each record is appended whole as soon as its run ends). The ``cpu`` grid: the tiny
Llama shapes, full and LoRA, ZeRO 0-3, 1 and 2 processes, gradient checkpointing on, plus
checkpointing off for ZeRO 2 and 3.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from planner.catalog import find_model
from planner.inputs import make_spec
from planner.measurement import append_measurement, read_measurements
from planner.spec import TrainingSpec

GRIDS = ("cpu",)


def cpu_grid() -> Iterator[tuple[str, TrainingSpec, int]]:
    for model in ("7b-tiny", "gqa-tiny"):
        arch = find_model(model)
        for method in ("lora", "full"):
            for zero in (0, 1, 2, 3):
                for nproc in (1, 2):
                    for ckpt in (True, False) if zero >= 2 else (True,):
                        fields: dict[str, Any] = {"zero_stage": zero, "offload": "none", "seq_len": 128, "grad_ckpt": ckpt}
                        yield arch.name, make_spec(arch, fields, method, nproc, 4), nproc


def key(model: str, spec: TrainingSpec, nproc: int) -> str:
    return f"{model}|{nproc}|{spec.model_dump_json()}"


def run_grid(out: Path, grid: str = "cpu", limit: int | None = None, progress: Any = print) -> int:
    """Run what ``out`` lacks; returns how many runs were made."""
    from harness.run import RunOptions, run_record

    done = {key(m.model, m.spec, m.spec.world_size) for m in read_measurements(out)} if out.exists() else set()
    made = 0
    jobs = list(cpu_grid())
    for i, (model, spec, nproc) in enumerate(jobs, start=1):
        if key(model, spec, nproc) in done:
            continue
        if limit is not None and made >= limit:
            break
        progress(f"[{i}/{len(jobs)}] {model} {spec.method} ZeRO-{spec.zero_stage} x{nproc} ckpt={spec.grad_ckpt}")
        command = f"python -m harness.run_grid --grid {grid} --out {out}"
        opts = RunOptions(steps=2, warmup=1, save=spec.zero_stage != 1)
        record = run_record(find_model(model), spec, opts, command=command)
        append_measurement(out, record)
        made += 1
        if record.error:
            progress(f"  failed (recorded): {record.error[:200]}")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/measurements/run/cpu.jsonl"))
    parser.add_argument("--grid", choices=GRIDS, default="cpu")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many missing specs")
    args = parser.parse_args(argv)
    made = run_grid(args.out, args.grid, args.limit, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{made} run(s) made; records in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
