"""The ``plan`` command: thin option parsing; everything else lives in planner.estimate.plan/render.

Errors in the input print one line on stderr and exit 2; "does not fit" is a result (exit 0).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Literal

import typer

from planner import catalog
from planner.errors import PlannerError
from planner.inputs import dataset_tokens as epoch_tokens
from planner.inputs import make_spec, positive_int
from planner.schema.catalog import Gpu, Instance
from planner.schema.spec import parse_targets

app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help=(
        "Plan the memory, time and cost of fine-tuning an LLM before renting GPUs. "
        "With the same options: `plan compare` (--methods, --instances side by side), "
        "`plan sweep` (comma lists or all for --model/--method/--instance/--batch-size), "
        "`plan cheapest` (every priced instance, up to --max-nodes), `plan list models|gpus|instances`."
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _console():  # imported lazily: rich is not needed for --json
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


@app.callback()
def plan(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None, "--model", "-m", help="Alias (7b, 13b, 70b = Llama 2), catalog name, HF id, or path to a config.json."
    ),
    method: Literal["full", "lora", "qlora"] = typer.Option("lora", "--method", case_sensitive=False),
    instance: str | None = typer.Option(None, "--instance", "-i", help="Cloud instance type, e.g. p4de.24xlarge."),
    gpu: str | None = typer.Option(None, "--gpu", help="GPU model, e.g. a100-80gb (instead of --instance)."),
    gpus: int | None = typer.Option(None, "--gpus", min=1, help="GPUs per node with --gpu (default 1)."),
    nodes: int = typer.Option(1, "--nodes", min=1),
    batch_size: str = typer.Option("8", "--batch-size", "-b", help="Micro batch per GPU, or 'max' for the largest that fits."),
    seq_len: int = typer.Option(512, "--seq-len", "-s", min=1),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1),
    zero: int = typer.Option(3, "--zero", min=0, max=3, help="DeepSpeed ZeRO stage 0-3."),
    sharding: Literal["deepspeed", "fsdp2"] = typer.Option(
        "deepspeed", "--sharding", case_sensitive=False, help="What shards at --zero 3: DeepSpeed ZeRO-3 or PyTorch FSDP2 (fully_shard)."
    ),
    offload: Literal["none", "optimizer", "all"] = typer.Option("optimizer", "--offload", case_sensitive=False),
    grad_ckpt: bool = typer.Option(True, "--grad-ckpt/--no-grad-ckpt"),
    attention: Literal["eager", "sdpa", "flash"] = typer.Option("sdpa", "--attention", case_sensitive=False),
    padding_mask: bool = typer.Option(
        True, "--padding-mask/--no-padding-mask", help="Batches carry a padding attention mask (padded samples, the seed's)."
    ),
    precision: Literal["bf16-mixed", "amp-bf16", "bf16", "fp16-mixed", "fp32"] = typer.Option(
        "bf16-mixed", "--precision", case_sensitive=False
    ),
    optimizer: Literal["adamw", "adamw8bit", "sgd"] = typer.Option("adamw", "--optimizer", case_sensitive=False),
    lora_rank: int = typer.Option(8, "--lora-rank", "-r", min=1),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha"),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    lora_targets: str = typer.Option("all-linear", "--lora-targets", help="all-linear, all (+ embed_tokens, lm_head), or a comma list."),
    modules_to_save: str = typer.Option("", "--modules-to-save", help="Comma list, e.g. embed_tokens,lm_head."),
    added_tokens: int = typer.Option(0, "--added-tokens", min=0, help="Tokens added to the vocabulary (the seed: 4)."),
    adapter_dtype: Literal["auto", "fp32", "bf16", "fp16"] = typer.Option(
        "auto", "--adapter-dtype", case_sensitive=False, help="dtype of the saved adapter (peft default fp32)."
    ),
    save_embedding_layers: Literal["auto", "targets", "full", "rows", "none"] = typer.Option(
        "auto", "--save-embedding-layers", case_sensitive=False, help="Which embedding layers the adapter carries in full (see README)."
    ),
    double_quant: bool = typer.Option(True, "--double-quant/--no-double-quant", help="QLoRA double quantization."),
    deepspeed_file: str | None = typer.Option(
        None,
        "--deepspeed",
        help="A DeepSpeed config JSON: ZeRO stage, offload, buffer sizes, micro batch, accumulation, precision (options given win).",
    ),
    peft_file: str | None = typer.Option(
        None, "--peft", help="A PEFT adapter_config.json: LoRA rank, alpha, dropout, target modules, modules_to_save."
    ),
    accelerate_file: str | None = typer.Option(
        None,
        "--accelerate-config",
        help="An accelerate config (YAML): processes, machines, mixed precision, the DeepSpeed (and its config file) or FSDP plugin.",
    ),
    reduce_bucket_size: int | None = typer.Option(None, "--reduce-bucket-size", min=1, help="DeepSpeed, elements (default h*h: auto)."),
    prefetch_bucket_size: int | None = typer.Option(
        None, "--stage3-prefetch-bucket-size", min=1, help="ZeRO-3, elements (default 0.9*h*h, HF's auto)."
    ),
    persistence_threshold: int | None = typer.Option(
        None, "--stage3-param-persistence-threshold", min=0, help="ZeRO-3, elements (default 10*h, HF's auto)."
    ),
    max_live_parameters: int | None = typer.Option(None, "--stage3-max-live-parameters", min=1, help="ZeRO-3, elements (default 1e9)."),
    max_reuse_distance: int | None = typer.Option(None, "--stage3-max-reuse-distance", min=0, help="ZeRO-3, elements (default 1e9)."),
    sub_group_size: int | None = typer.Option(None, "--sub-group-size", min=1, help="ZeRO-3 optimizer sub-group, elements (default 1e9)."),
    overlap_comm: bool | None = typer.Option(None, "--overlap-comm/--no-overlap-comm", help="DeepSpeed overlap_comm (default on)."),
    memory_efficient_linear: bool | None = typer.Option(
        None, "--memory-efficient-linear/--no-memory-efficient-linear", help="ZeRO-3's linear that keeps every input (default on)."
    ),
    calibration: str = typer.Option(
        "auto",
        "--calibration",
        help="Coefficients: 'auto' (the calibration fitted on the plan's GPU if there is one, else 'default'), "
        "a name from data/calibration/, or a path to a .json file.",
    ),
    storage_gb: float | None = typer.Option(
        None, "--storage-gb", min=0.0, help="Disk budget in GB (10^9 bytes): how many fine-tuned models fit, base included."
    ),
    dataset_tokens: int | None = typer.Option(None, "--dataset-tokens", min=1, help="Tokens per epoch (padding included)."),
    dataset_samples: int | None = typer.Option(
        None, "--dataset-samples", min=1, help="Samples per epoch, each padded to --seq-len (default 7473: GSM8K train, the seed's)."
    ),
    epochs: float = typer.Option(1.0, "--epochs", help="Epochs to price (time_cost covers all of them)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (raw integer bytes)."),
    plot: str | None = typer.Option(
        None,
        "--plot",
        help="Also draw a PNG (needs matplotlib): memory per GPU by category and phase (plan), per GPU and per node "
        "against capacity (compare), the largest micro batch per hardware (sweep).",
    ),
    emit_dir: str | None = typer.Option(
        None,
        "--emit",
        help="Also write ready-to-run configs for the plan into this folder: ds_config.json, adapter_config.json, "
        "accelerate_config.yaml, launch.sh and run_spec.json (for `harness run --spec`).",
    ),
    mode: str = typer.Option("plan", "--mode", hidden=True, help="Set by `plan compare|sweep|cheapest`."),
    models: str | None = typer.Option(None, "--models", hidden=True, help="plan sweep: comma list of models (--model in sweep)."),
    methods: str | None = typer.Option(None, "--methods", help="plan compare/sweep: comma list of methods (default full,lora)."),
    instances: str | None = typer.Option(None, "--instances", help="plan compare/sweep: comma list of instances (--instance in sweep)."),
    max_nodes: int = typer.Option(1, "--max-nodes", min=1, max=64, help="plan cheapest: try 1..N nodes of each instance."),
) -> None:
    """Plan memory per GPU and per node, the largest micro batch that fits, checkpoint sizes,
    and (estimated) tokens/s, time and dollars per epoch.

    Also, with the same options: `plan compare` (methods/instances side by side: --methods,
    --instances), `plan sweep` (comma lists or all for --model, --method, --instance,
    --batch-size), `plan cheapest` (every priced instance, up to --max-nodes), and
    `plan list models|gpus|instances`.
    """
    if ctx.invoked_subcommand is not None:
        return
    compare = mode == "compare"
    fields: dict[str, Any] = {
        "precision": precision,
        "optimizer": optimizer,
        "seq_len": seq_len,
        "grad_accum": grad_accum,
        "grad_ckpt": grad_ckpt,
        "attention": attention,
        "padding_mask": padding_mask,
        "zero_stage": zero,
        "sharding": sharding,
        "offload": offload,
        "nodes": nodes,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "lora_targets": parse_targets(lora_targets),
        "modules_to_save": parse_targets(modules_to_save),
        "added_tokens": added_tokens,
        "adapter_dtype": adapter_dtype,
        "save_embedding_layers": save_embedding_layers,
        "qlora_double_quant": double_quant,
    }
    knobs = {
        "reduce_bucket_size": reduce_bucket_size,
        "stage3_prefetch_bucket_size": prefetch_bucket_size,
        "stage3_param_persistence_threshold": persistence_threshold,
        "stage3_max_live_parameters": max_live_parameters,
        "stage3_max_reuse_distance": max_reuse_distance,
        "sub_group_size": sub_group_size,
        "overlap_comm": overlap_comm,
        "memory_efficient_linear": memory_efficient_linear,
    }
    fields["deepspeed"] = {k: v for k, v in knobs.items() if v is not None}
    merged = None
    if deepspeed_file or peft_file or accelerate_file:
        from planner.configs import read as configs

        if peft_file and method == "full":
            raise PlannerError("--peft gives a LoRA configuration; it goes with --method lora or qlora")
        explicit = _explicit(ctx)
        explicit |= {f"deepspeed.{k}": "--" + k.replace("_", "-") for k, v in knobs.items() if v is not None}
        merged = configs.merge(
            {**fields, "micro_batch_size": batch_size, "gpus_per_node": gpus}, explicit, deepspeed_file, peft_file, accelerate_file
        )
        fields = {k: v for k, v in merged.fields.items() if k not in ("micro_batch_size", "gpus_per_node")}
        batch_size, from_file_gpus = str(merged.fields["micro_batch_size"]), merged.fields["gpus_per_node"]
        if from_file_gpus is not None and "gpus_per_node" not in explicit and instances:
            _check_processes(str(accelerate_file), int(from_file_gpus), instances)
        if from_file_gpus is not None and gpus is None and instance is None and instances is None:
            gpus = int(from_file_gpus)
        elif from_file_gpus is not None and instance and "gpus_per_node" not in explicit:
            merged.fields["accelerate_processes_per_node"] = int(from_file_gpus)
    if not math.isfinite(epochs) or not 0 < epochs <= 1e6:
        raise PlannerError(f"--epochs must be a number above 0 and at most 1e6 (got {epochs})")
    tokens = epoch_tokens(dataset_tokens, dataset_samples, seq_len)
    if mode in ("sweep", "cheapest"):
        from planner import search as explore

        if emit_dir is not None:
            raise PlannerError(f"--emit writes the configs of one plan; drop it from `plan {mode}`")

        job = explore.Job(fields=fields, batch=batch_size, dataset_tokens=tokens, epochs=epochs, calibration=calibration)
        if instances and gpu:
            raise PlannerError("give --instance (a list in sweep) or --gpu, not both")
        if mode == "sweep":
            explore.run_sweep(job, models or model, methods, instances, gpu, gpus, as_json, _console, plot=plot)
        else:
            if instance or instances:
                raise PlannerError("`plan cheapest` searches every catalog instance; drop --instance (use --gpu to keep one GPU type)")
            if plot is not None:
                raise PlannerError("--plot goes with plan, `plan compare` and `plan sweep`")
            explore.run_cheapest(job, model, method, max_nodes, as_json, _console, gpu=gpu)
        return
    if models or max_nodes != 1:
        raise PlannerError("--models goes with `plan sweep`, --max-nodes with `plan cheapest`")
    if emit_dir is not None and compare:
        raise PlannerError("--emit writes the configs of one plan; drop it from `plan compare`")
    if model is None:
        raise PlannerError("missing --model (e.g. --model 70b); see `plan --help`")
    from planner.catalog import calibration_for
    from planner.estimate.plan import build_plan

    arch = catalog.find_model(model)
    if (methods or instances) and not compare:
        raise PlannerError("--methods and --instances go with `plan compare` or `plan sweep`")
    if compare and instances:
        if instance or gpu:
            raise PlannerError("give --instances or --instance/--gpu, not both")
        instance = instances.split(",")[0].strip()
    if instance and gpu:
        raise PlannerError("give either --instance or --gpu, not both")
    if instance:
        if gpus is not None:
            raise PlannerError("--gpus goes with --gpu; an instance brings its own GPU count")
        inst = catalog.find_instance(instance)
        the_gpu, per_node = catalog.find_gpu(inst.gpu), inst.gpu_count
        wanted_procs = merged.fields.get("accelerate_processes_per_node") if merged else None
        if wanted_procs is not None and wanted_procs != per_node:
            raise PlannerError(
                f"{accelerate_file}: num_processes per machine is {wanted_procs} but {inst.id} has {per_node} GPUs; "
                f"plan the GPUs you use with --gpu {the_gpu.id} --gpus {wanted_procs}"
            )
    elif gpu:
        inst, the_gpu, per_node = None, catalog.find_gpu(gpu), gpus or 1
    else:
        raise PlannerError("missing hardware: give --instance NAME or --gpu NAME [--gpus N]")

    sources = merged.sources if merged else None
    batch_where = (sources or {}).get("micro_batch_size", "default")
    batch_where = "--batch-size" if batch_where in ("default", "--batch-size") else batch_where
    b = 1 if batch_size.strip().lower() == "max" else positive_int(batch_size, batch_where)
    spec = make_spec(arch, fields, method, per_node, b, sources)
    if storage_gb is not None and not (math.isfinite(storage_gb) and storage_gb <= 1e9):
        raise PlannerError(f"--storage-gb must be a finite number of GB, at most 1e9 (got {storage_gb:g})")
    storage = None if storage_gb is None else int(storage_gb * 10**9)
    cal = calibration_for(calibration, the_gpu.id)
    if compare:
        info = {"settings_sources": _sources(ctx, spec, merged), "settings_ignored": merged.ignored if merged else []}
        _compare(arch, spec, fields, gpu, gpus, instances or instance, methods, calibration, tokens, epochs, storage, as_json, plot, info)
        return
    if batch_size.strip().lower() == "max":
        from planner.estimate.plan import max_micro_batch

        spec = spec.model_copy(update={"micro_batch_size": max(1, max_micro_batch(arch, spec, the_gpu, cal))})
    result = build_plan(arch, spec, the_gpu, inst, cal, storage_bytes=storage, dataset_tokens=tokens, epochs=epochs)
    ignored = merged.ignored if merged else []
    result = result.model_copy(update={"settings_sources": _sources(ctx, spec, merged), "settings_ignored": ignored})
    if emit_dir is not None:
        from pathlib import Path

        from planner.configs.emit import emit

        # a catalog model by its name; a config.json by its absolute path (the run may start elsewhere)
        as_path = Path(model)
        run_model = str(as_path.resolve()) if (as_path.suffix == ".json" or as_path.is_dir()) and as_path.exists() else arch.name
        written = emit(emit_dir, run_model, arch, spec)
        print(f"wrote {', '.join(p.name for p in written)} to {emit_dir}", file=sys.stderr)
    if plot is not None:
        from planner.render.plots import plan_figure, save

        save(plan_figure(result), plot)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        from planner.render.tables import render_plan

        render_plan(result, _console())


def _check_processes(source: str, procs: int, instances: str) -> None:
    """An accelerate config fixes the processes per machine: every instance must have that many GPUs."""
    names = [i.strip() for i in instances.split(",") if i.strip()]
    if any(n.lower() == "all" for n in names):
        raise PlannerError(f"{source}: {procs} processes per machine; name the instances (with {procs} GPUs) instead of all")
    for name in names:
        inst = catalog.find_instance(name)
        if inst.gpu_count != procs:
            raise PlannerError(f"{source}: num_processes per machine is {procs} but {inst.id} has {inst.gpu_count} GPUs")


#: The spec fields a configuration file can set, and the ``plan`` parameter that sets each.
_PARAM_OF_FIELD = {
    "zero_stage": "zero",
    "offload": "offload",
    "sharding": "sharding",
    "precision": "precision",
    "optimizer": "optimizer",
    "micro_batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "nodes": "nodes",
    "gpus_per_node": "gpus",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_targets": "lora_targets",
    "modules_to_save": "modules_to_save",
}


def given_on_command_line(ctx: typer.Context, param: str) -> bool:
    """Whether an option was given on the command line (not its default). By name: typer may
    bring its own copy of click's ``ParameterSource``."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _explicit(ctx: typer.Context) -> dict[str, str]:
    """Spec field -> the option that set it, for the options given on the command line."""
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
    return {f: flags[param] for f, param in _PARAM_OF_FIELD.items() if given_on_command_line(ctx, param)}


def _sources(ctx: typer.Context, spec, merged) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Where each setting of the plan came from: an option, a configuration file and key, or
    the default."""
    given = _explicit(ctx)
    out = {}
    for field in _PARAM_OF_FIELD:
        if merged is not None and field in merged.sources:
            out[field] = merged.sources[field]
        else:
            out[field] = given.get(field, "default")
    knobs = spec.deepspeed.model_dump()
    for key in knobs:
        src = merged.sources.get(f"deepspeed.{key}") if merged else None
        out[f"deepspeed.{key}"] = src or ("--" + key.replace("_", "-") if key in spec.deepspeed.model_fields_set else "default")
    return out


def _compare(  # type: ignore[no-untyped-def]
    arch, spec, fields, gpu, gpus, instances, methods, calibration, tokens, epochs, storage, as_json, plot=None, info=None
) -> None:
    """``plan compare``: each (hardware, method) at the given micro batch and at its largest."""
    from planner.catalog import calibration_for
    from planner.estimate.plan import build_plan

    wanted = [m.strip().lower() for m in (methods or "full,lora").split(",") if m.strip()]
    bad = [m for m in wanted if m not in ("full", "lora", "qlora")]
    if bad or not wanted:
        raise PlannerError(f"--methods: unknown method {bad[0] if bad else ''!r} (choose from full, lora, qlora)")
    hardware: list[tuple[Instance | None, Gpu, int]]
    if instances:
        found = [catalog.find_instance(i.strip()) for i in instances.split(",") if i.strip()]
        hardware = [(inst, catalog.find_gpu(inst.gpu), inst.gpu_count) for inst in found]
    else:
        hardware = [(None, catalog.find_gpu(gpu), gpus or 1)]
    rows = []
    for inst, the_gpu, per_node in hardware:
        cal = calibration_for(calibration, the_gpu.id)
        for m in wanted:
            s = make_spec(arch, fields, m, per_node, spec.micro_batch_size)
            at_b = build_plan(arch, s, the_gpu, inst, cal, storage_bytes=storage, dataset_tokens=tokens, epochs=epochs)
            best = at_b.max_micro_batch_size
            at_max = (
                build_plan(arch, s.model_copy(update={"micro_batch_size": best}), the_gpu, inst, cal, dataset_tokens=tokens, epochs=epochs)
                if best >= 1
                else None
            )
            if info:
                at_b = at_b.model_copy(update=info)
                at_max = at_max.model_copy(update=info) if at_max is not None else None
            rows.append((at_b, at_max))
    if plot is not None:
        from planner.render.plots import compare_figure, save

        save(compare_figure([a for a, _ in rows]), plot)
    if as_json:
        out = [{"plan": a.model_dump(mode="json"), "plan_at_max_batch": None if b is None else b.model_dump(mode="json")} for a, b in rows]
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        from planner.render.tables import render_compare

        render_compare(rows, _console())


@app.command("list")
def list_catalog(what: Literal["models", "gpus", "instances"] = typer.Argument(..., case_sensitive=False)) -> None:
    """List the catalog: models, gpus or instances."""
    from planner.render import tables as render

    console = _console()
    if what == "models":
        render.render_models(catalog.architectures(), console)
    elif what == "gpus":
        render.render_gpus(catalog.gpus(), console)
    else:
        render.render_instances(catalog.instances(), console)


def run_cli(typer_app: typer.Typer, prog: str, argv: list[str] | None) -> int:
    """Run a typer app: every input error becomes one line on stderr and exit code 2."""
    try:
        rv = typer_app(args=argv, prog_name=prog, standalone_mode=False)
    except PlannerError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        # typer's (vendored click's) usage errors: unknown option, bad choice, out of range.
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            msg = " ".join(exc.format_message().split())
            print(f"{prog}: error: {msg}", file=sys.stderr)
            return 2
        raise
    return rv if isinstance(rv, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps every input error to one line on stderr and exit code 2.

    ``plan compare ...`` runs the plan options in compare mode (one set of options for both)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("compare", "sweep", "cheapest"):
        sub, args = args[0], args[1:]
        if sub == "sweep":  # sweep takes lists where plan takes one value
            names = {"--model": "--models", "-m": "--models", "--method": "--methods", "--instance": "--instances", "-i": "--instances"}
            args = [names.get(a, a) for a in args]
        args = [*args, "--mode", sub]
    return run_cli(app, "plan", args)


if __name__ == "__main__":
    sys.exit(main())
