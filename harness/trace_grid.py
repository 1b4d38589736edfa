"""Regenerate the committed trace records: ``python -m harness.trace_grid [--models 7b,13b,70b]``.

Grid (issue 3): Llama 2 7B/13B/70B x full/LoRA x checkpointing on/off x sdpa/eager at micro
batch 8, sequence 512, bf16-mixed, one GPU without ZeRO; plus FSDP2 (world size 8, batch 1,
checkpointing) records. Records go to ``data/measurements/trace/<model>.jsonl``; a spec already
recorded there is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from harness.cli import check_trace_input, run_trace, trace_spec
from planner.catalog import find_model
from planner.schema.records import Measurement, append_measurement, read_measurements

OUT_DIR = Path(__file__).resolve().parent.parent / "data" / "measurements" / "trace"


def single_gpu_grid(models: list[str]) -> list[tuple[str, dict]]:
    out = []
    for model, method, ckpt, attn in itertools.product(models, ("full", "lora"), (True, False), ("sdpa", "eager")):
        out.append((model, {"method": method, "grad_ckpt": ckpt, "attention": attn, "micro_batch_size": 8, "seq_len": 512}))
    return out


def extra_grid() -> list[tuple[str, dict]]:
    """Records beyond the issue's grid that pin other physics: long sequences (eager attention's
    s x s transients outgrow the logits), classic LoRA (q/v only, no dropout), pure bf16, and a
    GQA model with tied embeddings and a 128k vocabulary."""
    eager_long = {"attention": "eager", "grad_ckpt": True, "micro_batch_size": 1, "seq_len": 4096}
    return [
        ("llama-2-7b", {"method": "full", **eager_long}),
        ("llama-2-7b", {"method": "lora", **eager_long}),
        ("llama-2-7b", {"method": "lora", "lora_targets": ("q_proj", "v_proj"), "lora_dropout": 0.0, "grad_ckpt": False}),
        ("llama-2-7b", {"method": "lora", "precision": "bf16", "grad_ckpt": True}),
        ("llama-3.2-1b", {"method": "lora", "grad_ckpt": True}),
        ("llama-3.2-1b", {"method": "full", "grad_ckpt": False}),
        ("llama-3.2-1b", {"method": "full", "precision": "fp32", "grad_ckpt": False, "micro_batch_size": 2}),
    ]


def fsdp_grid(models: list[str]) -> list[tuple[str, dict]]:
    base = {"precision": "bf16", "grad_ckpt": True, "attention": "sdpa", "micro_batch_size": 1, "seq_len": 512, "world_size": 8}
    out = [(model, {"method": method, **base}) for model, method in itertools.product(models, ("full", "lora"))]
    # FSDP2's own mixed precision, and a tied embedding (its gradient summed in autograd's buffer)
    out += [("llama-2-7b", {"method": "full", **base, "precision": "bf16-mixed"})]
    out += [("llama-3.2-1b", {"method": "full", **base, "precision": p}) for p in ("bf16", "bf16-mixed")]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="7b,13b,70b")
    ap.add_argument("--fsdp-models", default="7b,70b", help="models for the FSDP2 records ('' for none)")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--no-extra", dest="extra", action="store_false", help="skip the records beyond the issue's grid")
    args = ap.parse_args(argv)
    models = [find_model(m).name for m in args.models.split(",") if m]
    fsdp_models = [find_model(m).name for m in args.fsdp_models.split(",") if m]
    jobs = single_gpu_grid(models) + (extra_grid() if args.extra else []) + fsdp_grid(fsdp_models)
    for n, (model, kw) in enumerate(jobs, start=1):
        spec = trace_spec(find_model(model), **kw)
        check_trace_input(find_model(model), spec)
        path = args.out_dir / f"{model}.jsonl"
        done: list[Measurement] = read_measurements(path) if path.exists() else []
        if any(m.spec == spec and m.model == model for m in done):
            print(f"[{n}/{len(jobs)}] {model} {kw}: already recorded", flush=True)
            continue
        t0 = time.perf_counter()
        cmd = f"python -m harness.trace_grid  # {model} {kw}"
        record = run_trace(find_model(model), spec, command=cmd)
        append_measurement(path, record)
        what = f"peak {record.result.peak_bytes / 2**30:.2f} GiB" if record.result else f"FAILED ({record.error})"
        print(f"[{n}/{len(jobs)}] {model} {kw}: {what} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
