"""Measure DeepSpeed ZeRO-3's host (Python) time per module call, the planner's
``zero3_fetch_s_per_module`` and ``zero3_hook_s_per_module``.

ZeRO-3 wraps every module in pre/post forward and backward hooks: a module that holds
partitioned parameters gathers them before it runs and releases them after; every other module
still runs the hook bookkeeping. This host time does not shrink with the micro batch, so it is
what makes small micro batches slow under ZeRO-3 (and LoRA, with four more modules per adapted
linear, slower still). It is measured here on the CPU, where it is all there is: a stack of
tiny linears (compute is negligible) under ZeRO stage 0 and stage 3, with and without one
parameter-free module (``nn.Dropout(0)``) after each linear, one process, gloo.

    python -m harness.hook_overhead [--blocks 32] [--steps 10] [--out data/measurements/hooks/cpu.jsonl]

The difference stage 3 - stage 0 per linear per pass is the fetch cost; the extra difference
that the parameter-free modules add, per such module per pass, is the hook cost. A pass is one
forward or one backward of the module (a checkpointed re-run is a third).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HIDDEN = 16
LINEARS_PER_BLOCK = 9


def _setup_env() -> None:
    env = {"DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    for key, value in env.items():
        os.environ.setdefault(key, value)


def _model(blocks: int, empty: bool) -> Any:
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.ModuleList(torch.nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(LINEARS_PER_BLOCK))
            self.empty = torch.nn.ModuleList(torch.nn.Dropout(0.0) for _ in range(LINEARS_PER_BLOCK if empty else 0))

        def forward(self, x: Any) -> Any:
            for i, lin in enumerate(self.lin):
                y = lin(x)
                x = x + (self.empty[i](y) if empty else y)
            return x

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(Block() for _ in range(blocks))

        def forward(self, x: Any) -> Any:
            for b in self.blocks:
                x = b(x)
            return x.pow(2).mean()

    return Stack()


def _time_steps(stage: int, blocks: int, empty: bool, steps: int) -> tuple[float, float]:
    """Median forward and backward seconds of one micro-step."""
    import deepspeed
    import torch

    model = _model(blocks, empty)
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    x = torch.randn(4, HIDDEN)
    fwd, bwd = [], []
    for i in range(steps + 3):  # three warm-up steps
        t0 = time.perf_counter()
        loss = engine(x)
        t1 = time.perf_counter()
        engine.backward(loss)
        t2 = time.perf_counter()
        engine.step()
        if i >= 3:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    engine.destroy()
    return statistics.median(fwd), statistics.median(bwd)


def measure(blocks: int = 32, steps: int = 10, progress: Any = None) -> dict[str, Any]:
    _setup_env()
    import deepspeed
    import torch
    from deepspeed import ops

    torch.set_num_threads(1)
    ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip compiling the shared-memory op (~90 s)
    deepspeed.init_distributed(dist_backend="gloo")
    times: dict[str, tuple[float, float]] = {}
    for stage in (0, 3):
        for empty in (False, True):
            key = f"z{stage}{'_empty' if empty else ''}"
            if progress:
                progress(key)
            times[key] = _time_steps(stage, blocks, empty, steps)
    linears = blocks * LINEARS_PER_BLOCK
    fetch = [(times["z3"][p] - times["z0"][p]) / linears for p in (0, 1)]
    extra = [(times["z3_empty"][p] - times["z0_empty"][p]) - (times["z3"][p] - times["z0"][p]) for p in (0, 1)]
    hook = [e / linears for e in extra]
    return {
        "kind": "zero3_host_overhead",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m harness.hook_overhead " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 1},
        "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "python": platform.python_version()},
        "setup": {"blocks": blocks, "linears": linears, "hidden": HIDDEN, "steps": steps, "world_size": 1, "backend": "gloo"},
        "seconds": {k: {"forward": v[0], "backward": v[1]} for k, v in times.items()},
        "fetch_s_per_module": {"forward": fetch[0], "backward": fetch[1], "mean": sum(fetch) / 2},
        "hook_s_per_module": {"forward": hook[0], "backward": hook[1], "mean": sum(hook) / 2},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="append the record (one JSON line) to this file")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.steps < 1:
        parser.error("--blocks and --steps must be at least 1")
    import json

    record = measure(args.blocks, args.steps, progress=lambda k: print(f"timing {k} ...", file=sys.stderr))
    line = json.dumps(record)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
