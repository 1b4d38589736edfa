"""The configuration files users already have, read into ``plan``'s settings.

``read_deepspeed`` (a DeepSpeed JSON), ``read_peft`` (a PEFT ``adapter_config.json``) and
``read_accelerate`` (an accelerate config, YAML or JSON) each return the ``TrainingSpec`` fields
the file sets, keyed like the spec, with where each value came from. ``"auto"`` values set
nothing: the planner's defaults are what DeepSpeed's Hugging Face integration resolves them to
(transformers ``integrations/deepspeed.py``: reduce bucket h*h, prefetch bucket 0.9*h*h,
persistence threshold 10*h; micro batch and accumulation from the trainer's arguments, i.e.
``plan``'s options). Explicit options override every file (``planner/cli.py``).

Every problem is one ``PlannerError`` naming the file and the key; settings the planner does not
model are refused rather than silently ignored when they change memory (DoRA, a LoRA bias), and
listed as ignored when they do not (pinned memory, gradient clipping).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.catalog import read_text
from planner.errors import PlannerError
from planner.schema.spec import EMBEDDING_MODULES, LAYER_LINEARS, parse_targets

#: DeepSpeed's buffer sizes the planner reads (``zero_optimization.<key>``, elements), with
#: whether "auto" is allowed (Hugging Face resolves it) and the smallest value.
_DS_SIZES = {
    "reduce_bucket_size": (True, 1),
    "stage3_prefetch_bucket_size": (True, 1),
    "stage3_param_persistence_threshold": (True, 0),
    "stage3_max_live_parameters": (False, 1),
    "stage3_max_reuse_distance": (False, 0),
    "sub_group_size": (False, 1),
}
#: Keys that change nothing the planner models (listed in the plan as read and ignored).
_DS_IGNORED = {
    "contiguous_gradients",
    "round_robin_gradients",
    "stage3_gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save",
    "allgather_partitions",
    "allgather_bucket_size",
    "reduce_scatter",
    "load_from_fp32_weights",
    "elastic_checkpoint",
    "ignore_unused_parameters",
    "zero_quantized_weights",
    "zero_quantized_gradients",
    "zero_hpz_partition_size",
    "log_trace_cache_warnings",
}
_OFFLOAD_DEVICES = {"cpu": True, "nvme": True, "none": False}


@dataclass(frozen=True)
class Setting:
    """One spec field's value and where it was read (``ds_config.json: zero_optimization.stage``)."""

    value: Any
    source: str


@dataclass
class ConfigRead:
    """What one file set (spec fields), and the keys it had that the planner does not model."""

    settings: dict[str, Setting]
    ignored: list[str]


def _load(path: str | Path, what: str, yaml_ok: bool = False) -> Any:
    p = Path(path)
    text = read_text(p, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if not yaml_ok:
            raise PlannerError(f"{what} {p}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise PlannerError(f"{what} {p}: YAML needs pyyaml (pip install pyyaml), or give it as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PlannerError(f"{what} {p}: not valid YAML or JSON{where}") from None


def _where(path: str | Path) -> str:
    return Path(path).name


def _int(value: Any, where: str, minimum: int = 0) -> int:
    """A whole number as JSON writers give them (5e8 arrives as a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlannerError(f"{where}: expected a whole number, got {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise PlannerError(f"{where}: expected a whole number, got {value!r}")
    if not minimum <= value <= 10**15:
        raise PlannerError(f"{where}: {value!r} is out of range (at least {minimum}, at most 1e15)")
    return int(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PlannerError(f"{where}: expected true or false, got {value!r}")
    return value


def _auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PlannerError(f"{where}: expected an object (key: value pairs), got {type(value).__name__}")
    return value


def read_deepspeed(path: str | Path) -> ConfigRead:
    """A DeepSpeed config (the JSON given to ``deepspeed.initialize``, the HF Trainer's
    ``--deepspeed``, or accelerate's ``deepspeed_config_file``)."""
    name = _where(path)
    cfg = _mapping(_load(path, "--deepspeed"), f"{name}")
    out: dict[str, Setting] = {}
    ignored: list[str] = []

    def put(field: str, value: Any, key: str) -> None:
        out[field] = Setting(value, f"{name}: {key}")

    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in cfg and not _auto(cfg[key]):
            put("micro_batch_size" if key.startswith("train_micro") else "grad_accum", _int(cfg[key], f"{name}: {key}", 1), key)
    for key in ("train_batch_size", "gradient_clipping", "steps_per_print", "wall_clock_breakdown", "scheduler"):
        if key in cfg:
            ignored.append(key)
    bf16 = cfg.get("bf16", cfg.get("bfloat16"))
    fp16 = cfg.get("fp16")
    enabled = {}
    for label, block in (("bf16", bf16), ("fp16", fp16)):
        if block is None:
            continue
        flag = _mapping(block, f"{name}: {label}").get("enabled", False)
        if not _auto(flag):
            enabled[label] = _bool(flag, f"{name}: {label}.enabled")
    if enabled.get("bf16") and enabled.get("fp16"):
        raise PlannerError(f"{name}: bf16.enabled and fp16.enabled are both true; DeepSpeed takes one")
    if enabled.get("bf16"):
        put("precision", "bf16-mixed", "bf16.enabled")
    elif enabled.get("fp16"):
        put("precision", "fp16-mixed", "fp16.enabled")
    elif enabled and not any(_auto(_mapping(b, name).get("enabled")) for b in (bf16, fp16) if b is not None):
        # explicitly off (no block left to "auto"): DeepSpeed trains in fp32
        put("precision", "fp32", "bf16.enabled / fp16.enabled")
    opt = cfg.get("optimizer")
    if opt is not None:
        kind = str(_mapping(opt, f"{name}: optimizer").get("type", "")).lower()
        known = {"adamw": "adamw", "adam": "adamw", "cpuadam": "adamw", "fusedadam": "adamw", "sgd": "sgd"}
        if kind not in known:
            raise PlannerError(f"{name}: optimizer.type {kind!r} is not one the planner models (AdamW, Adam, SGD)")
        put("optimizer", known[kind], "optimizer.type")

    # what the file leaves out is DeepSpeed's default (stage 0, nothing offloaded), not the planner's
    zero = _mapping(cfg.get("zero_optimization", {}), f"{name}: zero_optimization")
    stage = _int(zero.get("stage", 0), f"{name}: zero_optimization.stage")
    if stage > 3:
        raise PlannerError(f"{name}: zero_optimization.stage must be 0-3 (got {stage})")
    put("zero_stage", stage, "zero_optimization.stage" if "stage" in zero else "zero_optimization.stage (absent: DeepSpeed's 0)")
    offload = "none"
    on = {"offload_optimizer": False, "offload_param": False}
    for key, level in (("offload_optimizer", "optimizer"), ("offload_param", "all")):
        block = zero.get(key)
        if block is None:
            continue
        block = _mapping(block, f"{name}: zero_optimization.{key}")
        device = str(block.get("device", "none")).lower()
        if device not in _OFFLOAD_DEVICES:
            raise PlannerError(f"{name}: zero_optimization.{key}.device must be cpu, nvme or none (got {device!r})")
        on[key] = _OFFLOAD_DEVICES[device]
        if _OFFLOAD_DEVICES[device]:
            offload = level if level == "all" or offload == "none" else offload
        if "pin_memory" in block:
            ignored.append(f"zero_optimization.{key}.pin_memory")
        if device == "nvme":
            ignored.append(f"zero_optimization.{key}.device=nvme (planned as host memory)")
    if on["offload_param"] and stage < 3:  # DeepSpeed offloads parameters only under ZeRO-3
        offload = "optimizer" if on["offload_optimizer"] else "none"
        ignored.append(f"zero_optimization.offload_param (ZeRO stage {stage}: DeepSpeed offloads parameters only at stage 3)")
    elif on["offload_param"] and not on["offload_optimizer"]:
        raise PlannerError(f"{name}: offload_param without offload_optimizer is not a setup the planner models")
    any_on = on["offload_optimizer"] or on["offload_param"]
    put("offload", offload, "zero_optimization.offload_*" if any_on else "zero_optimization (no offload)")
    ds: dict[str, Any] = {}
    for key, (auto_ok, minimum) in _DS_SIZES.items():
        if key not in zero:
            continue
        if _auto(zero[key]):
            if not auto_ok:
                raise PlannerError(f"{name}: zero_optimization.{key} cannot be \"auto\" (DeepSpeed has no auto for it)")
            continue
        ds[key] = _int(zero[key], f"{name}: zero_optimization.{key}", minimum)
    for key in ("overlap_comm", "memory_efficient_linear"):
        if key in zero and not _auto(zero[key]):
            ds[key] = _bool(zero[key], f"{name}: zero_optimization.{key}")
    if ds:
        out["deepspeed"] = Setting(ds, f"{name}: zero_optimization.{{{','.join(sorted(ds))}}}")
    ignored += [f"zero_optimization.{k}" for k in zero if k in _DS_IGNORED]
    return ConfigRead(out, ignored)


def read_peft(path: str | Path) -> ConfigRead:
    """A PEFT ``adapter_config.json`` (what ``LoraConfig.save_pretrained`` writes)."""
    name = _where(path)
    cfg = _mapping(_load(path, "--peft"), name)
    out: dict[str, Setting] = {}
    ignored: list[str] = []
    kind = str(cfg.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise PlannerError(f"{name}: peft_type {kind!r}: the planner models LoRA (and QLoRA with --method qlora)")
    for key in ("use_dora", "use_rslora"):
        if cfg.get(key):
            if key == "use_dora":
                raise PlannerError(f"{name}: use_dora is true; DoRA's memory is not modelled")
            ignored.append(key)  # rsLoRA only changes the scaling factor
    bias = cfg.get("bias", "none")
    if bias not in (None, "none"):
        raise PlannerError(f"{name}: bias {bias!r}; only bias \"none\" is modelled (Llama has no biases to train)")
    if "r" in cfg:
        out["lora_rank"] = Setting(_int(cfg["r"], f"{name}: r", 1), f"{name}: r")
    if "lora_alpha" in cfg:
        alpha = cfg["lora_alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise PlannerError(f"{name}: lora_alpha must be a number above 0 (got {alpha!r})")
        out["lora_alpha"] = Setting(float(alpha), f"{name}: lora_alpha")
    if "lora_dropout" in cfg:
        p = cfg["lora_dropout"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise PlannerError(f"{name}: lora_dropout must be a number in [0, 1) (got {p!r})")
        out["lora_dropout"] = Setting(float(p), f"{name}: lora_dropout")
    targets = cfg.get("target_modules")
    if targets is not None:
        if isinstance(targets, str):
            text = targets
        elif isinstance(targets, list) and all(isinstance(t, str) for t in targets):
            text = ",".join(targets)
        else:
            raise PlannerError(f"{name}: target_modules must be a list of module names or a string (got {targets!r})")
        out["lora_targets"] = Setting(_targets(text, f"{name}: target_modules"), f"{name}: target_modules")
    saved = cfg.get("modules_to_save")
    if saved is not None:
        if not isinstance(saved, list) or not all(isinstance(t, str) for t in saved):
            raise PlannerError(f"{name}: modules_to_save must be a list of module names (got {saved!r})")
        out["modules_to_save"] = Setting(_targets(",".join(saved), f"{name}: modules_to_save"), f"{name}: modules_to_save")
    tokens = cfg.get("trainable_token_indices")
    if tokens:
        ignored.append("trainable_token_indices (planned as the whole embedding frozen; the rows are a few MiB)")
    for key in ("layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise PlannerError(f"{name}: {key} is set; per-layer LoRA settings are not modelled")
    return ConfigRead(out, ignored)


def _targets(text: str, where: str) -> tuple[str, ...]:
    """Module names as peft takes them (a list, ``all-linear``), checked against the Llama
    modules the planner knows; a regular expression is refused (it matches by full name)."""
    names = parse_targets(text)
    known = LAYER_LINEARS + EMBEDDING_MODULES
    for n in names:
        if n not in known:
            hint = " (a regular expression: list the module names instead)" if any(c in n for c in "*.|()[]\\^$") else ""
            raise PlannerError(f"{where}: unknown module {n!r}{hint}; the planner knows {', '.join(known)}")
    return names


def read_accelerate(path: str | Path) -> tuple[ConfigRead, Path | None]:
    """An accelerate config (``accelerate config`` writes YAML): processes, machines, mixed
    precision and the DeepSpeed or FSDP plugin. Returns what it sets and the DeepSpeed config file
    it names (``deepspeed_config.deepspeed_config_file``), if any, relative to the config."""
    name = _where(path)
    cfg = _mapping(_load(path, "--accelerate-config", yaml_ok=True), name)
    out: dict[str, Setting] = {}
    ignored: list[str] = []
    machines = _int(cfg.get("num_machines", 1), f"{name}: num_machines", 1)
    if "num_machines" in cfg:
        out["nodes"] = Setting(machines, f"{name}: num_machines")
    if "num_processes" in cfg:
        procs = _int(cfg["num_processes"], f"{name}: num_processes", 1)
        if procs % machines:
            raise PlannerError(f"{name}: num_processes {procs} is not a multiple of num_machines {machines}")
        out["gpus_per_node"] = Setting(procs // machines, f"{name}: num_processes / num_machines")
    mp = cfg.get("mixed_precision")
    if mp is not None:
        kind = str(cfg.get("distributed_type", "NO")).upper()
        word = "no" if mp is False else str(mp).lower()  # YAML reads an unquoted no as false
        # under DeepSpeed its bf16/fp16 engines; elsewhere (DDP, FSDP) torch autocast over fp32 weights
        table = {"bf16": "bf16-mixed" if kind in ("DEEPSPEED", "FSDP") else "amp-bf16", "no": "fp32"}
        if kind == "DEEPSPEED":
            table["fp16"] = "fp16-mixed"
        if word not in table:
            choices = ", ".join(table)
            raise PlannerError(f"{name}: mixed_precision {mp!r} with distributed_type {kind} is not one the planner models ({choices})")
        out["precision"] = Setting(table[word], f"{name}: mixed_precision")
    kind = str(cfg.get("distributed_type", "NO")).upper()
    ds_file: Path | None = None
    if kind == "DEEPSPEED":
        ds = _mapping(cfg.get("deepspeed_config", {}), f"{name}: deepspeed_config")
        if ds.get("deepspeed_config_file"):
            # accelerate opens it from the working directory; a path beside the config works too
            named = Path(str(ds["deepspeed_config_file"]))
            ds_file = named if named.exists() or named.is_absolute() else Path(path).parent / named
        # accelerate's DeepSpeedPlugin defaults: zero_stage 2, nothing offloaded
        stage = _int(ds.get("zero_stage", 2), f"{name}: deepspeed_config.zero_stage")
        if stage > 3:
            raise PlannerError(f"{name}: deepspeed_config.zero_stage must be 0-3 (got {stage})")
        stage_key = "deepspeed_config.zero_stage" if "zero_stage" in ds else "deepspeed_config (absent zero_stage: accelerate's 2)"
        out["zero_stage"] = Setting(stage, f"{name}: {stage_key}")
        opt_dev = str(ds.get("offload_optimizer_device", "none")).lower()
        par_dev = str(ds.get("offload_param_device", "none")).lower()
        for key, dev in (("offload_optimizer_device", opt_dev), ("offload_param_device", par_dev)):
            if dev not in _OFFLOAD_DEVICES:
                raise PlannerError(f"{name}: deepspeed_config.{key} must be cpu, nvme or none (got {dev!r})")
        level = "all" if _OFFLOAD_DEVICES[par_dev] and stage == 3 else ("optimizer" if _OFFLOAD_DEVICES[opt_dev] else "none")
        if _OFFLOAD_DEVICES[par_dev] and not _OFFLOAD_DEVICES[opt_dev] and stage == 3:
            raise PlannerError(f"{name}: offload_param_device without offload_optimizer_device is not a setup the planner models")
        out["offload"] = Setting(level, f"{name}: deepspeed_config.offload_*_device")
        if "gradient_accumulation_steps" in ds and not _auto(ds["gradient_accumulation_steps"]):
            out["grad_accum"] = Setting(
                _int(ds["gradient_accumulation_steps"], f"{name}: deepspeed_config.gradient_accumulation_steps", 1),
                f"{name}: deepspeed_config.gradient_accumulation_steps",
            )
        ignored += [f"deepspeed_config.{k}" for k in ("gradient_clipping", "zero3_init_flag", "zero3_save_16bit_model") if k in ds]
    elif kind == "FSDP":
        fsdp = _mapping(cfg.get("fsdp_config", {}), f"{name}: fsdp_config")
        version = fsdp.get("fsdp_version", 1)
        if str(version) != "2":
            raise PlannerError(f"{name}: fsdp_config.fsdp_version {version!r}: the planner models FSDP2 (fsdp_version: 2)")
        out["zero_stage"] = Setting(3, f"{name}: distributed_type FSDP")
        out["sharding"] = Setting("fsdp2", f"{name}: fsdp_config.fsdp_version")
        out["offload"] = Setting("none", f"{name}: distributed_type FSDP")
        if fsdp.get("fsdp_offload_params"):
            raise PlannerError(f"{name}: fsdp_config.fsdp_offload_params is true; FSDP2 CPU offload is not modelled")
    elif kind in ("MULTI_GPU", "NO"):
        out["zero_stage"] = Setting(0, f"{name}: distributed_type {kind} (DDP, no ZeRO)")
        out["offload"] = Setting("none", f"{name}: distributed_type {kind}")
    else:
        raise PlannerError(f"{name}: distributed_type {kind!r} is not one the planner models (DEEPSPEED, FSDP, MULTI_GPU, NO)")
    return ConfigRead(out, ignored), ds_file


@dataclass
class Merged:
    """Spec fields from defaults, files and options, with where each came from."""

    fields: dict[str, Any]
    sources: dict[str, str]
    ignored: list[str]


def merge(
    fields: dict[str, Any],
    explicit: Mapping[str, str],
    deepspeed: str | None = None,
    peft: str | None = None,
    accelerate: str | None = None,
) -> Merged:
    """Layer the files over ``fields`` (the options' values, defaults included): accelerate,
    then the DeepSpeed file (``--deepspeed``, else the one accelerate names), then PEFT; a field
    in ``explicit`` (field -> the option given for it) keeps the option's value. The
    ``deepspeed`` knobs merge key by key."""
    out = dict(fields)
    sources = {k: explicit.get(k, "default") for k in fields}
    ignored: list[str] = []
    reads: list[tuple[str, ConfigRead]] = []
    if accelerate is not None:
        acc, named_ds = read_accelerate(accelerate)
        reads.append((Path(accelerate).name, acc))
        if deepspeed is None and named_ds is not None:
            deepspeed = str(named_ds)
    if deepspeed is not None:
        reads.append((Path(deepspeed).name, read_deepspeed(deepspeed)))
    if peft is not None:
        reads.append((Path(peft).name, read_peft(peft)))
    for name, read in reads:
        ignored += [f"{name}: {k}" for k in read.ignored]
        for field, setting in read.settings.items():
            if field == "deepspeed":
                knobs = dict(out.get("deepspeed") or {})
                for key, value in setting.value.items():
                    if f"deepspeed.{key}" not in explicit:
                        knobs[key] = value
                        sources[f"deepspeed.{key}"] = setting.source.split(":")[0] + f": zero_optimization.{key}"
                out["deepspeed"] = knobs
            elif field not in explicit:
                out[field] = setting.value
                sources[field] = setting.source
    if out.get("offload") == "all" and int(out.get("zero_stage", 3)) < 3 and "offload" not in explicit:
        # a stage given below 3 over a file that offloads parameters: DeepSpeed would not offload them
        out["offload"] = "optimizer"
        ignored.append(f"{sources.get('offload', 'offload')}: parameters (offloaded only at ZeRO stage 3)")
    return Merged(out, sources, ignored)
