"""The ``harness`` command: measure training with the real stack (torch is imported lazily).

Errors in the input print one line on stderr and exit 2, like ``plan``.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from planner import catalog
from planner.cli import given_on_command_line, run_cli
from planner.cli.options import DEFAULT, alias
from planner.errors import PlannerError
from planner.estimate.resolve import make_spec
from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec, parse_targets

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Measure fine-tuning with the real stack (transformers, peft, torch) and record it for the planner.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _group() -> None:
    """Measure fine-tuning with the real stack and record it for the planner."""


def trace_spec(arch: Architecture, **kw: Any) -> TrainingSpec:
    """The spec a trace measures: one GPU without ZeRO or offload, or with ``world_size`` > 1 one
    FSDP2 rank; batches are unpadded (no attention mask). Validated like ``plan``'s options; what
    ``kw`` leaves out takes ``plan``'s default (micro batch 8, sequence 512)."""
    world = kw.pop("world_size", 1)
    method, batch = kw.pop("method"), kw.pop("micro_batch_size", int(DEFAULT.batch_size))
    kw.setdefault("padding_mask", False)
    if world > 1:
        kw.setdefault("sharding", "fsdp2")
    return make_spec(arch, {"zero_stage": 3 if world > 1 else 0, "offload": "none", **kw}, method, world, batch)


@app.command("trace")
def trace_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Alias (7b, 13b, 70b), catalog name or path to a config.json.")],
    method: Literal["full", "lora"] = typer.Option(
        "lora", "--method", case_sensitive=False, help="full or lora (no QLoRA on fake tensors)."
    ),
    batch_size: int = typer.Option(int(DEFAULT.batch_size), "--batch-size", "-b", min=1, help="Micro batch (a number: no 'max' here)."),
    seq_len: alias("seq_len") = DEFAULT.seq_len,
    grad_ckpt: alias("grad_ckpt") = DEFAULT.grad_ckpt,
    attention: Literal["eager", "sdpa"] = typer.Option(
        "sdpa", "--attention", case_sensitive=False, help="eager or sdpa (flash needs a GPU)."
    ),
    precision: alias("precision") = DEFAULT.precision,
    lora_rank: alias("lora_rank") = DEFAULT.lora_rank,
    lora_alpha: alias("lora_alpha") = DEFAULT.lora_alpha,
    lora_dropout: float = typer.Option(DEFAULT.lora_dropout, "--lora-dropout", min=0.0, max=0.99),
    lora_targets: alias("lora_targets") = DEFAULT.lora_targets,
    modules_to_save: alias("modules_to_save") = DEFAULT.modules_to_save,
    adapter_dtype: alias("adapter_dtype", help="auto: as the planner resolves it (bf16 without ZeRO-3).") = DEFAULT.adapter_dtype,
    world_size: int = typer.Option(1, "--world-size", min=1, max=64, help=">1: FSDP2 (fully_shard) over a fake process group."),
    steps: int = typer.Option(2, "--steps", min=1, max=5, help="Training steps; the last is reported as the steady state."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Also count FLOPs (one more forward+backward)."),
    out: Path | None = typer.Option(None, "--out", help="Append the record (JSON line) to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (raw integer bytes)."),
) -> None:
    """Trace full-size training steps on fake tensors: memory per category and phase, FLOPs."""
    arch = catalog.find_model(model)
    spec = trace_spec(
        arch,
        method=method,
        micro_batch_size=batch_size,
        seq_len=seq_len,
        grad_ckpt=grad_ckpt,
        attention=attention,
        precision=precision,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=parse_targets(lora_targets),
        modules_to_save=parse_targets(modules_to_save),
        adapter_dtype=adapter_dtype,
        world_size=world_size,
    )
    check_trace_input(arch, spec)
    if out is not None:
        _check_writable(out)
    from harness.trace import untested_versions

    for v in untested_versions():
        print(f"harness: warning: {v}; the trace relies on private torch API and transformers internals", file=sys.stderr)
    record = run_trace(arch, spec, steps=steps, flops=flops, command=_command(), progress=_progress)
    _keep_and_show(record, out, as_json, "trace")


def check_trace_input(arch: Architecture, spec: TrainingSpec) -> None:
    """What the trace cannot do, as one clear error before any work starts."""
    if spec.method == "full" and spec.modules_to_save:
        raise PlannerError("--modules-to-save goes with --method lora (full fine-tuning trains every module)")
    if spec.method != "full":
        if arch.tie_word_embeddings and "lm_head" in (*spec.lora_targets, *spec.modules_to_save):
            raise PlannerError(f"{arch.name} ties lm_head to embed_tokens; the trace cannot adapt or save lm_head separately")


def _check_writable(path: Path) -> None:
    if path.is_dir():
        raise PlannerError(f"--out {path}: is a folder; give a file (records are appended as JSON lines)")
    if not path.parent.is_dir():
        raise PlannerError(f"--out {path}: folder {path.parent} does not exist")
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        raise PlannerError(f"--out {path}: {exc.strerror or exc}") from None


def _command() -> str:
    return "harness " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _progress(msg: str) -> None:
    print(f"harness: {msg}", file=sys.stderr, flush=True)


def run_trace(arch: Architecture, spec: TrainingSpec, steps: int = 2, flops: bool = True, command: str = "", progress: Any = None) -> Any:
    """Trace ``spec`` and wrap the result as a ``Measurement``. Bad input raises ``PlannerError``;
    a trace that fails is returned as a record holding its error (so a grid never loses it)."""
    from planner.schema.records import Measurement, TraceResult

    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise PlannerError(f"harness trace needs {', '.join(missing)}: pip install torch==2.13.0 && pip install -e '.[harness]'")
    if spec.world_size > 1:
        from harness.fsdp_trace import trace_fsdp as run
    else:
        from harness.trace import trace as run
    from harness.trace import TOOL, versions

    base = {
        "kind": "trace",
        "model": arch.name,
        "spec": spec,
        "sharding": "fsdp2" if spec.world_size > 1 else "none",
        "tool": TOOL,
        "versions": versions(),
        "command": command,
        "date": dt.date.today().isoformat(),
        "host": f"{platform.machine()} {platform.system()}",
    }
    kwargs = {"progress": progress} if progress is not None else {}
    try:
        result = run(arch, spec, steps=steps, flops=flops, **kwargs)
    except PlannerError:
        raise
    except Exception as exc:  # a failed measurement is a result, not a traceback
        return Measurement(**base, error=f"{type(exc).__name__}: {exc}")
    return Measurement(**base, result=TraceResult.model_validate(result))


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None, "--model", "-m", help="Catalog name or alias (7b-tiny, gqa-tiny for a CPU; 7b on a GPU) or a config.json."
    ),
    spec_file: Path | None = typer.Option(
        None,
        "--spec",
        help="run_spec.json written by `plan --emit` (or its folder): the whole setup, model included; "
        "ranks = its GPUs per node. Replaces --model and the training options.",
    ),
    method: Literal["full", "lora"] = typer.Option(
        "lora", "--method", case_sensitive=False, help="full or lora (QLoRA needs CUDA bitsandbytes)."
    ),
    batch_size: int = typer.Option(
        4, "--batch-size", "-b", min=1, help="Micro batch per rank. Default 4, not plan's 8: a tiny model's run on a CPU stays short."
    ),
    seq_len: alias("seq_len", help="Default 128, not plan's 512: a real run on a CPU stays seconds.") = 128,
    grad_accum: alias("grad_accum") = DEFAULT.grad_accum,
    zero: alias(
        "zero", help="DeepSpeed ZeRO stage. Default 2, not plan's 3: one process needs no parameter partitioning."
    ) = 2,
    offload: alias(
        "offload", help="Default none, not plan's optimizer (the seed's): no CPU Adam to build for a quick run."
    ) = "none",
    grad_ckpt: alias("grad_ckpt") = DEFAULT.grad_ckpt,
    attention: Literal["eager", "sdpa"] = typer.Option("sdpa", "--attention", case_sensitive=False, help="eager or sdpa."),
    precision: Literal["bf16-mixed", "fp32"] = typer.Option(
        "bf16-mixed", "--precision", case_sensitive=False, help="bf16-mixed or fp32 (what DeepSpeed runs on a CPU)."
    ),
    lora_rank: alias("lora_rank") = DEFAULT.lora_rank,
    lora_alpha: alias("lora_alpha") = DEFAULT.lora_alpha,
    lora_dropout: float = typer.Option(DEFAULT.lora_dropout, "--lora-dropout", min=0.0, max=0.99),
    lora_targets: alias("lora_targets") = DEFAULT.lora_targets,
    modules_to_save: alias("modules_to_save") = DEFAULT.modules_to_save,
    nproc: int = typer.Option(1, "--nproc", min=1, max=64, help="Processes (ranks) on this machine: gloo on CPU, NCCL on GPUs."),
    steps: int = typer.Option(3, "--steps", min=1, max=1000, help="Measured steps (then one more, profiled per phase)."),
    warmup: int = typer.Option(1, "--warmup", min=0, max=100),
    timeout_s: int = typer.Option(1800, "--timeout", min=10, help="Seconds before the run is stopped (and recorded as timed out)."),
    save: bool = typer.Option(
        True, "--save/--no-save", help="Also save (save_pretrained and DeepSpeed's save_checkpoint) and measure the files."
    ),
    out: Path | None = typer.Option(None, "--out", help="Append the record (JSON line) to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (raw integer bytes)."),
) -> None:
    """Run real training steps (transformers + peft + DeepSpeed) and measure memory, speed, checkpoints."""
    if spec_file is not None:
        given = [p.opts[0] for p in ctx.command.params if p.name in _SPEC_OPTIONS and given_on_command_line(ctx, p.name or "")]
        if given:
            raise PlannerError(f"--spec gives the whole setup; drop {', '.join(given)}")
        from planner.configs.emit import read_run_spec

        rs = read_run_spec(spec_file)
        if rs.spec.nodes > 1:
            raise PlannerError(f"--spec {spec_file}: {rs.spec.nodes} nodes; harness run runs the ranks of one machine")
        arch, spec = catalog.find_model(rs.model), rs.spec
        _check_runnable(spec, spec_file)
        check_trace_input(arch, spec)
        _run(arch, spec, RunKnobs(steps, warmup, save, timeout_s), out, as_json)
        return
    if model is None:
        raise PlannerError("missing --model (or --spec run_spec.json)")
    arch = catalog.find_model(model)
    fields: dict[str, Any] = {
        "seq_len": seq_len,
        "grad_accum": grad_accum,
        "zero_stage": zero,
        "offload": offload,
        "grad_ckpt": grad_ckpt,
        "attention": attention,
        "precision": precision,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "lora_targets": parse_targets(lora_targets),
        "modules_to_save": parse_targets(modules_to_save),
    }
    spec = make_spec(arch, fields, method, nproc, batch_size)
    check_trace_input(arch, spec)
    _run(arch, spec, RunKnobs(steps, warmup, save, timeout_s), out, as_json)


#: What ``harness run`` runs (its options' choices), checked on a ``--spec`` file too.
RUNNABLE = {
    "method": ("full", "lora"),
    "attention": ("eager", "sdpa"),
    "precision": ("bf16-mixed", "fp32"),
    "sharding": ("deepspeed",),
    "optimizer": ("adamw",),
}


def _check_runnable(spec: TrainingSpec, where: Path) -> None:
    for field, allowed in RUNNABLE.items():
        value = getattr(spec, field)
        if value not in allowed:
            raise PlannerError(f"--spec {where}: {field} {value!r}: harness run runs {', '.join(allowed)}")


#: ``harness run``'s options that describe the setup (what ``--spec`` replaces).
_SPEC_OPTIONS = {
    "model", "method", "batch_size", "seq_len", "grad_accum", "zero", "offload", "grad_ckpt", "attention", "precision",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "modules_to_save", "nproc",
}  # fmt: skip


@dataclass(frozen=True)
class RunKnobs:
    steps: int
    warmup: int
    save: bool
    timeout_s: int


def _run(arch: Architecture, spec: TrainingSpec, knobs: RunKnobs, out: Path | None, as_json: bool) -> None:
    """Run ``spec`` (one rank per GPU of a node) and keep and show the record."""
    if out is not None:
        _check_writable(out)
    missing = [m for m in ("torch", "transformers", "peft", "deepspeed") if importlib.util.find_spec(m) is None]
    if missing:
        raise PlannerError(f"harness run needs {', '.join(missing)}: pip install torch==2.13.0 && pip install -e '.[harness]'")
    from harness.run import RunOptions, run_record

    opts = RunOptions(steps=knobs.steps, warmup=knobs.warmup, save=knobs.save, timeout_s=knobs.timeout_s)
    record = run_record(arch, spec, opts, command=_command(), progress=_progress)
    _keep_and_show(record, out, as_json, "run")


def _keep_and_show(record: Any, out: Path | None, as_json: bool, what: Literal["trace", "run"]) -> None:
    """Append the record to ``out`` (if given), then print it; a failed measurement exits 1."""
    if out is not None:
        from planner.schema.records import append_measurement

        try:
            append_measurement(out, record)
        except OSError as exc:
            raise PlannerError(f"--out {out}: {exc.strerror or exc}") from None
    if record.result is None:
        print(f"harness: error: the {what} failed (recorded{' in ' + str(out) if out else ''}): {record.error}", file=sys.stderr)
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(json.dumps(record.result.model_dump(), indent=2) + "\n")
    elif what == "trace":
        from harness.report import render_trace

        render_trace(record)
    else:
        from harness.report import render_run

        render_run(record)


@app.command("calibrate")
def calibrate_cmd(
    grid: str = typer.Argument(
        ...,
        help="A grid file (YAML/JSON: specs x values), a name from data/grids/ (ci, cpu), or a records file (.jsonl) to fit as it is.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Records file to append to and resume from (default data/measurements/run/<grid>.jsonl)."
    ),
    calibration_out: Path | None = typer.Option(
        None, "--calibration-out", help="Where to write the calibration (default data/calibration/<device>.json)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Run each spec as a Ray Train job on this cluster ('local' starts one here)."
    ),
    published: bool = typer.Option(
        False, "--published/--no-published", help="Also fit throughput to the published points (data/published/throughput.json)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Run at most this many missing specs, then fit."),
    fit_only: bool = typer.Option(False, "--fit-only", help="Run nothing: fit the records already in --out."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Also run again the specs whose recorded run failed (by default a recorded failure counts as done)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a calibration fitted from other records."),
    as_json: bool = typer.Option(False, "--json", help="Print the calibration as JSON."),
) -> None:
    """Run a grid of specs (resumably), fit the planner's coefficients to the records, write the calibration."""
    from harness.calibrate import calibrate, check_calibration_out, fit_records
    from harness.grid import load_grid

    if calibration_out is not None:
        check_calibration_out(calibration_out)
    if grid.endswith(".jsonl"):  # a records file: fit what it holds, run nothing
        if out is not None or ray_address is not None or limit is not None or retry_failed:
            raise PlannerError("a records file (.jsonl) is only fitted: --out, --ray-address, --limit and --retry-failed go with a grid")
        cal, path, recs = fit_records(Path(grid), _command(), calibration_out, published, force)
    else:
        g = load_grid(grid)
        records = out or Path("data/measurements/run") / f"{g.name}.jsonl"
        if fit_only:
            if ray_address is not None or limit is not None or retry_failed:
                raise PlannerError("--fit-only runs nothing: drop --ray-address, --limit and --retry-failed")
            if not records.is_file():
                raise PlannerError(f"--fit-only: no records file {records}")
        else:
            if out is None:
                records.parent.mkdir(parents=True, exist_ok=True)
            _check_writable(records)
            missing = [m for m in ("torch", "transformers", "peft", "deepspeed") if importlib.util.find_spec(m) is None]
            if missing:
                raise PlannerError(f"harness calibrate needs {', '.join(missing)} to run: pip install -e '.[harness]' (or --fit-only)")
        cal, path, recs = calibrate(
            g, records, _command(), calibration_out, ray_address, published, limit, fit_only, retry_failed, force, progress=_progress
        )
    if as_json:
        sys.stdout.write(json.dumps(cal.model_dump(mode="json"), indent=2) + "\n")
        return
    from harness.report import render_calibration

    render_calibration(cal, path, recs)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every input error is one line on stderr and exit code 2."""
    return run_cli(app, "harness", argv)


if __name__ == "__main__":
    sys.exit(main())
