"""The planner as Python functions: a ``PlanRequest`` (or its fields as keyword arguments) in,
a ``Plan`` or ranked rows out. Nothing here prints, writes files or keeps state between calls:
calls are safe from several threads at once, and what one call reads (the catalog, a
calibration, ``PLANNER_DATA_DIR``) cannot leak into another. Bad input raises
``PlannerError`` with the one-line message the command line prints.

``plan`` (one plan), ``compare`` (methods x hardware, each at the given micro batch and at its
largest), ``sweep`` (models x methods x hardware x micro batches) and ``cheapest`` (every priced
instance at 1..``max_nodes`` nodes) are what ``plan``, ``plan compare``, ``plan sweep`` and
``plan cheapest`` print with ``--json``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.plan import build_plan, max_micro_batch
from planner.estimate.resolve import epoch_tokens, make_spec, positive_int
from planner.schema.catalog import Architecture, Gpu, Instance
from planner.schema.plan import Plan
from planner.schema.request import BEHAVIOUR_FIELDS, DEEPSPEED_KNOBS, FIELD_OPTION, PlanRequest
from planner.schema.spec import TrainingSpec, parse_targets
from planner.units import GIGA

if TYPE_CHECKING:  # the searches are imported when one runs (one plan needs none of them)
    from planner.search import CompareRow, Job, Row

__all__ = ["Planned", "PlanRequest", "cheapest", "compare", "plan", "request", "resolve", "sweep"]


def request(first: str | PlanRequest | None, options: dict[str, Any], first_name: str = "model") -> PlanRequest:
    """A ``PlanRequest`` from a function's arguments: a request (options update it) or the
    model (``models`` in ``sweep``) and the options as keyword arguments."""
    if isinstance(first, PlanRequest):
        if not options:
            return first
        merged = {k: getattr(first, k) for k in first.model_fields_set}
        return PlanRequest.parse({**merged, **options})
    return PlanRequest.parse({first_name: first, **options})


# -- from a request to the spec the formulas read -------------------------------------------


def spec_fields(req: PlanRequest) -> dict[str, Any]:
    """The ``TrainingSpec`` fields a request sets (all but method, GPUs per node, micro batch)."""
    return {
        "precision": req.precision,
        "optimizer": req.optimizer,
        "seq_len": req.seq_len,
        "grad_accum": req.grad_accum,
        "grad_ckpt": req.grad_ckpt,
        "attention": req.attention,
        "padding_mask": req.padding_mask,
        "zero_stage": req.zero,
        "sharding": req.sharding,
        "offload": req.offload,
        "nodes": req.nodes,
        "lora_rank": req.lora_rank,
        "lora_alpha": req.lora_alpha,
        "lora_dropout": req.lora_dropout,
        "lora_targets": parse_targets(req.lora_targets),
        "modules_to_save": parse_targets(req.modules_to_save),
        "added_tokens": req.added_tokens,
        "adapter_dtype": req.adapter_dtype,
        "save_embedding_layers": req.save_embedding_layers,
        "qlora_double_quant": req.double_quant,
        "deepspeed": {k: getattr(req, k) for k in DEEPSPEED_KNOBS if getattr(req, k) is not None},
    }


class _Common(NamedTuple):
    """What every command resolves first: the spec fields after configuration files, the micro
    batch text, the GPUs per node, the dataset. (NamedTuples here: a frozen dataclass costs
    about 0.7 ms of start-up to create.)"""

    fields: dict[str, Any]
    batch_size: str
    gpus: int | None
    merged: Any  # configs.read.Merged | None
    tokens: int | None
    explicit: dict[str, str]
    stack: Any  # configs.stack.Resolved


def _explicit(req: PlanRequest) -> dict[str, str]:
    """Spec field -> the option that set it, for the options the request was given."""
    return {f: PlanRequest.flag(opt) for f, opt in FIELD_OPTION.items() if opt in req.model_fields_set}


def _common(req: PlanRequest) -> _Common:
    fields = spec_fields(req)
    batch_size, gpus = req.batch_size, req.gpus
    merged = None
    explicit = _explicit(req)
    if req.deepspeed or req.peft or req.accelerate_config:
        from planner.configs import read as configs

        if req.peft and req.method == "full":
            raise PlannerError("--peft gives a LoRA configuration; it goes with --method lora or qlora")
        given = explicit | {f"deepspeed.{k}": PlanRequest.flag(k) for k in fields["deepspeed"]}
        merged = configs.merge(
            {**fields, "micro_batch_size": batch_size, "gpus_per_node": gpus}, given, req.deepspeed, req.peft, req.accelerate_config
        )
        fields = {k: v for k, v in merged.fields.items() if k not in ("micro_batch_size", "gpus_per_node")}
        batch_size, from_file_gpus = str(merged.fields["micro_batch_size"]), merged.fields["gpus_per_node"]
        if from_file_gpus is not None and "gpus_per_node" not in explicit and req.instances:
            _check_processes(str(req.accelerate_config), int(from_file_gpus), req.instances)
        if from_file_gpus is not None and gpus is None and req.instance is None and req.instances is None:
            gpus = int(from_file_gpus)
        elif from_file_gpus is not None and req.instance and "gpus_per_node" not in explicit:
            merged.fields["accelerate_processes_per_node"] = int(from_file_gpus)
    stack = _stack(req, fields, explicit, merged)
    fields = stack.fields
    if not math.isfinite(req.epochs) or not 0 < req.epochs <= 1e6:
        raise PlannerError(f"--epochs must be a number above 0 and at most 1e6 (got {req.epochs})")
    tokens = epoch_tokens(req.dataset_tokens, req.dataset_samples, req.seq_len)
    return _Common(fields, batch_size, gpus, merged, tokens, explicit, stack)


def _stack(req: PlanRequest, fields: dict[str, Any], explicit: dict[str, str], merged: Any) -> Any:
    """The request's stack (``planner/configs/stack.py``) applied to the spec fields."""
    behaviours = {f: getattr(req, f) for f in BEHAVIOUR_FIELDS}
    given = dict(explicit)
    if merged is not None:
        given |= {f: s for f, s in merged.sources.items() if s != "default" and not f.startswith("deepspeed.")}
    if "adapter_dtype" in req.model_fields_set:
        given["adapter_dtype"] = "--adapter-dtype"
    from planner.configs.stack import resolve_stack

    return resolve_stack(req.stack, fields, given, behaviours, req.deepspeed)


def _check_processes(source: str, procs: int, instances: str) -> None:
    """An accelerate config fixes the processes per machine: every instance must have that many GPUs."""
    names = [i.strip() for i in instances.split(",") if i.strip()]
    if any(n.lower() == "all" for n in names):
        raise PlannerError(f"{source}: {procs} processes per machine; name the instances (with {procs} GPUs) instead of all")
    for name in names:
        inst = catalog.find_instance(name)
        if inst.gpu_count != procs:
            raise PlannerError(f"{source}: num_processes per machine is {procs} but {inst.id} has {inst.gpu_count} GPUs")


def _sources(c: _Common, spec: TrainingSpec) -> dict[str, str]:
    """Where each setting of the plan came from: an option, a configuration file and key, or
    the default."""
    merged = c.merged
    out = {}
    from planner.configs.stack import SPEC_FIELD

    from_stack = {SPEC_FIELD.get(b, b) for b, src in c.stack.sources.items() if not src.startswith("--")}
    for field in FIELD_OPTION:
        if merged is not None and merged.sources.get(field, "default") != "default":
            out[field] = merged.sources[field]
        elif field in c.explicit:
            out[field] = c.explicit[field]
        else:
            out[field] = f"stack {c.stack.profile.name}" if c.stack.named and field in from_stack else "default"
    for key in spec.deepspeed.model_dump():
        src = merged.sources.get(f"deepspeed.{key}") if merged else None
        out[f"deepspeed.{key}"] = src or (PlanRequest.flag(key) if key in spec.deepspeed.model_fields_set else "default")
    return out


# -- one plan, and compare ------------------------------------------------------------------


class Planned(NamedTuple):
    """A plan with what it was built from (``--emit`` writes the configs of ``spec``)."""

    plan: Plan
    arch: Architecture
    spec: TrainingSpec


def _setup(req: PlanRequest, c: _Common, compare: bool) -> tuple[Architecture, TrainingSpec, Gpu, Instance | None, str | None]:
    """The checks and lookups ``plan`` and ``compare`` share, in the command line's order."""
    if req.models or req.max_nodes != 1:
        raise PlannerError("--models goes with `plan sweep`, --max-nodes with `plan cheapest`")
    if req.model is None:
        raise PlannerError("missing --model (e.g. --model 70b); see `plan --help`")
    arch = catalog.find_model(req.model)
    instance, gpu, gpus, instances = req.instance, req.gpu, c.gpus, req.instances
    if (req.methods or instances) and not compare:
        raise PlannerError("--methods and --instances go with `plan compare` or `plan sweep`")
    if compare and instances:
        if instance or gpu:
            raise PlannerError("give --instances or --instance/--gpu, not both")
        instance = instances.split(",")[0].strip()
    if instance and gpu:
        raise PlannerError("give either --instance or --gpu, not both")
    inst: Instance | None
    if instance:
        if gpus is not None:
            raise PlannerError("--gpus goes with --gpu; an instance brings its own GPU count")
        inst = catalog.find_instance(instance)
        the_gpu, per_node = catalog.find_gpu(inst.gpu), inst.gpu_count
        wanted_procs = c.merged.fields.get("accelerate_processes_per_node") if c.merged else None
        if wanted_procs is not None and wanted_procs != per_node:
            raise PlannerError(
                f"{req.accelerate_config}: num_processes per machine is {wanted_procs} but {inst.id} has {per_node} GPUs; "
                f"plan the GPUs you use with --gpu {the_gpu.id} --gpus {wanted_procs}"
            )
    elif gpu:
        inst, the_gpu, per_node = None, catalog.find_gpu(gpu), gpus or 1
    else:
        raise PlannerError("missing hardware: give --instance NAME or --gpu NAME [--gpus N]")
    sources = c.merged.sources if c.merged else None
    batch_where = (sources or {}).get("micro_batch_size", "default")
    batch_where = "--batch-size" if batch_where in ("default", "--batch-size") else batch_where
    b = 1 if c.batch_size.strip().lower() == "max" else positive_int(c.batch_size, batch_where)
    spec = make_spec(arch, c.fields, req.method, per_node, b, sources)
    storage_gb = req.storage_gb
    if storage_gb is not None and not (math.isfinite(storage_gb) and storage_gb <= GIGA):
        raise PlannerError(f"--storage-gb must be a finite number of GB, at most 1e9 (got {storage_gb:g})")
    return arch, spec, the_gpu, inst, instance


def resolve(req: PlanRequest) -> tuple[Architecture, TrainingSpec, Gpu, Instance | None]:
    """What a request asks for, checked as ``plan`` checks it, before any estimate: the
    architecture, the validated spec (at micro batch 1 for ``max``), the GPU and the instance."""
    arch, spec, gpu, inst, _ = _setup(req, _common(req), compare=False)
    return arch, spec, gpu, inst


def _storage_bytes(req: PlanRequest) -> int | None:
    return None if req.storage_gb is None else int(req.storage_gb * GIGA)


def planned(req: PlanRequest) -> Planned:
    """``plan``: one plan, with the architecture and spec it was built from."""
    c = _common(req)
    arch, spec, gpu, inst, _ = _setup(req, c, compare=False)
    cal = catalog.calibration_for(req.calibration, gpu.id)
    if c.batch_size.strip().lower() == "max":
        spec = spec.model_copy(update={"micro_batch_size": max(1, max_micro_batch(arch, spec, gpu, cal))})
    result = build_plan(arch, spec, gpu, inst, cal, storage_bytes=_storage_bytes(req), dataset_tokens=c.tokens, epochs=req.epochs)
    ignored = c.merged.ignored if c.merged else []
    from planner.configs.stack import stack_out
    from planner.schema.plan import StackInfo

    stack = StackInfo.model_validate(stack_out(c.stack, spec))
    result = result.model_copy(update={"settings_sources": _sources(c, spec), "settings_ignored": ignored, "stack": stack})
    return Planned(result, arch, spec)


def plan(model: str | PlanRequest | None = None, /, **options: Any) -> Plan:
    """One fine-tuning job: what ``plan --model MODEL [options] --json`` prints. Options are
    ``plan``'s with underscores (``PlanRequest``'s fields): ``method``, ``instance`` or ``gpu``
    (+ ``gpus``), ``nodes``, ``batch_size`` (a number or ``"max"``), ``seq_len``, ``zero``,
    ``offload``, ``grad_ckpt``, ``precision``, ``lora_rank``, ``lora_targets`` (a comma list
    or a list), ``deepspeed`` / ``peft`` / ``accelerate_config`` (file paths), ``calibration``,
    ``dataset_tokens``, ``epochs``, ..."""
    if {"json", "emit", "help", "plot"} & set(options):
        raise PlannerError("plan(): json, emit, plot and help are command-line only")
    return planned(request(model, options)).plan


def compare(model: str | PlanRequest | None = None, /, **options: Any) -> list[CompareRow]:
    """``plan compare``: each (hardware, method) at the given micro batch and at its largest.
    ``methods`` (default ``full,lora``) and ``instances`` (or ``instance``/``gpu``) are comma
    lists; rows come in hardware-then-method order."""
    req = request(model, options)
    c = _common(req)
    arch, spec, _, _, instance = _setup(req, c, compare=True)
    info = {"settings_sources": _sources(c, spec), "settings_ignored": c.merged.ignored if c.merged else []}
    from planner.search import compare_rows

    return compare_rows(
        arch, spec, c.fields, req.gpu, c.gpus, req.instances or instance, req.methods, req.calibration, c.tokens, req.epochs,
        _storage_bytes(req), info,
    )  # fmt: skip


def _job(req: PlanRequest, c: _Common) -> Job:
    from planner.search import Job

    return Job(fields=c.fields, batch=c.batch_size, dataset_tokens=c.tokens, epochs=req.epochs, calibration=req.calibration)


def sweep(models: str | PlanRequest | None = None, /, **options: Any) -> list[Row]:
    """``plan sweep``: models x methods x hardware x micro batches, ranked by dollars per
    epoch. ``models``, ``methods``, ``instances`` and ``batch_size`` are comma lists (or
    ``all``); ``gpu`` + ``gpus`` instead of instances."""
    if "model" in options and not isinstance(models, PlanRequest) and models is None:
        options["models"] = options.pop("model")
    req = request(models, options, "models")
    c = _common(req)
    if req.instances and req.gpu:
        raise PlannerError("give --instance (a list in sweep) or --gpu, not both")
    from planner.search import sweep_rows

    return sweep_rows(_job(req, c), req.models or req.model, req.methods, req.instances, req.gpu, c.gpus)


def cheapest(model: str | PlanRequest | None = None, /, **options: Any) -> list[Row]:
    """``plan cheapest``: every priced catalog instance (with ``gpu``: of that GPU) at
    1..``max_nodes`` nodes, ranked by dollars per epoch; the first row is the cheapest that fits.
    Raises ``PlannerError`` when none fits."""
    req = request(model, options)
    c = _common(req)
    if req.instances and req.gpu:
        raise PlannerError("give --instance (a list in sweep) or --gpu, not both")
    if req.instance or req.instances:
        raise PlannerError("`plan cheapest` searches every catalog instance; drop --instance (use --gpu to keep one GPU type)")
    from planner.search import cheapest_rows

    return cheapest_rows(_job(req, c), req.model, req.method, req.max_nodes, gpu=req.gpu)
