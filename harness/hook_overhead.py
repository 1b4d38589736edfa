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

from harness.run import free_port

HIDDEN = 16
LINEARS_PER_BLOCK = 9


def _init() -> None:
    """One CPU process group (gloo), without compiling DeepSpeed's shared-memory op (~90 s)."""
    _setup_env()
    import deepspeed
    import torch
    from deepspeed import ops

    torch.set_num_threads(1)
    ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")


def _setup_env() -> None:
    env = {"DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    env["MASTER_PORT"] = os.environ.get("MASTER_PORT") or str(free_port())
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
    _init()
    import deepspeed
    import torch

    times: dict[str, tuple[float, float]] = {}
    for stage in (0, 3):
        for empty in (False, True):
            key = f"z{stage}{'_empty' if empty else ''}"
            if progress:
                progress(key)
            times[key] = _time_steps(stage, blocks, empty, steps)
    linears = blocks * LINEARS_PER_BLOCK
    # the extra modules cost ``hook`` per call; the blocks and the stack (blocks + 1 calls per
    # pass) hook too, so the linears' share is what remains
    extra = [(times["z3_empty"][p] - times["z0_empty"][p]) - (times["z3"][p] - times["z0"][p]) for p in (0, 1)]
    hook = [e / linears for e in extra]
    fetch = [((times["z3"][p] - times["z0"][p]) - (blocks + 1) * hook[p]) / linears for p in (0, 1)]
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


def count_zero3_calls(config: dict[str, Any], spec: Any) -> dict[str, int]:
    """Run two real ZeRO-3 steps of a tiny model (transformers + peft as ``spec`` asks) on the CPU
    and count DeepSpeed's pre-forward and pre-backward hook calls of the second, split by
    whether the module holds a partitioned parameter (``ds_numel`` above the persistence
    threshold). Needs ``_init()`` first; the planner's count is
    ``planner.formulas.zero.zero3_module_calls``."""
    import collections

    import deepspeed
    import torch
    from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload
    from transformers import LlamaConfig, LlamaForCausalLM

    from planner.catalog import architecture_from_config
    from planner.formulas.zero import persistence_threshold_elems

    threshold = persistence_threshold_elems(architecture_from_config(config, name="tiny"), spec.deepspeed)
    calls: collections.Counter[str] = collections.Counter()
    orig_f, orig_b = DeepSpeedZeRoOffload.pre_sub_module_forward_function, DeepSpeedZeRoOffload.pre_sub_module_backward_function

    def kind(module: Any) -> str:
        return "fetching" if any(getattr(p, "ds_numel", p.numel()) > threshold for p in module.parameters(recurse=False)) else "hooked"

    def pre_f(self: Any, module: Any) -> Any:
        calls[kind(module)] += 1
        return orig_f(self, module)

    def pre_b(self: Any, module: Any) -> Any:
        calls[kind(module)] += 1
        return orig_b(self, module)

    model = LlamaForCausalLM(LlamaConfig(**config))
    if spec.grad_ckpt:
        model.gradient_checkpointing_enable()
    if spec.method != "full":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                          target_modules=list(spec.lora_targets), modules_to_save=list(spec.modules_to_save) or None)
        model = get_peft_model(model, lora)
    ds = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": threshold},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds)
    engine.train()
    x = torch.randint(0, config["vocab_size"], (1, 8))
    DeepSpeedZeRoOffload.pre_sub_module_forward_function = pre_f  # type: ignore[method-assign]
    DeepSpeedZeRoOffload.pre_sub_module_backward_function = pre_b  # type: ignore[method-assign]
    try:
        for _ in range(2):
            calls.clear()
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()
    finally:
        DeepSpeedZeRoOffload.pre_sub_module_forward_function = orig_f  # type: ignore[method-assign]
        DeepSpeedZeRoOffload.pre_sub_module_backward_function = orig_b  # type: ignore[method-assign]
        engine.destroy()
    return {"fetching": calls["fetching"], "hooked": calls["hooked"]}


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
