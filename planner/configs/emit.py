"""Ready-to-run configuration for a plan (``plan ... --emit DIR``).

What a user launches: the DeepSpeed config (every size the planner assumed written out, no
``"auto"``), peft's ``LoraConfig`` as JSON (``adapter_config.json``), an accelerate config that
names the DeepSpeed file, the launch commands (one node, several nodes), and ``run_spec.json``,
the planner's own spec (``RunSpec``) that ``harness run --spec`` measures. ``plan`` reads the
first three back (``--deepspeed``, ``--peft``, ``--accelerate-config``) into the same plan.

``deepspeed_config`` is also what ``harness run`` hands ``deepspeed.initialize`` (plus its
CPU-only settings), so a measured run and an emitted config are the same setup.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from planner.catalog import read_text
from planner.errors import PlannerError
from planner.formulas.zero import persistence_threshold_elems, prefetch_bucket_elems, reduce_bucket_elems
from planner.schema.catalog import Architecture
from planner.schema.spec import LAYER_LINEARS, TrainingSpec
from planner.units import GIGA

#: What ``emit`` writes, in order.
FILES = ("ds_config.json", "adapter_config.json", "accelerate_config.yaml", "launch.sh", "run_spec.json")


class RunSpec(BaseModel):
    """One setup to run or plan: the model (a catalog name or a config path) and the spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    spec: TrainingSpec


def deepspeed_config(arch: Architecture, spec: TrainingSpec) -> dict[str, Any]:
    """The DeepSpeed config for ``spec`` with Hugging Face's "auto" values made explicit, as the
    planner assumes them (bucket sizes from the model's hidden size)."""
    ds = spec.deepspeed
    zero: dict[str, Any] = {
        "stage": spec.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": reduce_bucket_elems(arch, ds),
        "sub_group_size": ds.sub_group_size,
    }
    if spec.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=prefetch_bucket_elems(arch, ds),
            stage3_param_persistence_threshold=persistence_threshold_elems(arch, ds),
            stage3_max_live_parameters=ds.stage3_max_live_parameters,
            stage3_max_reuse_distance=ds.stage3_max_reuse_distance,
            stage3_gather_16bit_weights_on_model_save=True,
            memory_efficient_linear=ds.memory_efficient_linear,
        )
    if spec.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if spec.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    optimizer = {"adamw": "AdamW", "sgd": "SGD"}.get(spec.optimizer)
    if optimizer is None:
        raise PlannerError(f"--optimizer {spec.optimizer}: DeepSpeed has no config entry for it; emit supports adamw and sgd")
    params: dict[str, Any] = {"lr": 1e-5, "weight_decay": 0.0}
    if optimizer == "AdamW":
        params.update(betas=[0.9, 0.999], eps=1e-8)
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "zero_optimization": zero,
        "optimizer": {"type": optimizer, "params": params},
        "steps_per_print": GIGA,  # practically never (every 10**9 steps): no DeepSpeed step log
        "wall_clock_breakdown": False,
    }
    if spec.precision in ("bf16-mixed", "bf16"):
        cfg["bf16"] = {"enabled": True}
    elif spec.precision == "fp16-mixed":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 8}
    return cfg


def lora_config(spec: TrainingSpec) -> dict[str, Any]:
    """peft's ``LoraConfig`` as ``save_pretrained`` writes it (``adapter_config.json``)."""
    targets = list(spec.lora_targets)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.lora_rank,
        "lora_alpha": spec.lora_alpha,
        "lora_dropout": spec.lora_dropout,
        "target_modules": "all-linear" if targets == list(LAYER_LINEARS) else targets,
        "modules_to_save": list(spec.modules_to_save) or None,
        "bias": "none",
    }


def accelerate_config(spec: TrainingSpec) -> str:
    """accelerate's config (YAML) for the DeepSpeed plugin, naming ``ds_config.json``."""
    mixed = {"bf16-mixed": "bf16", "fp16-mixed": "fp16"}.get(spec.precision, "'no'")  # quoted: YAML reads no as false
    lines = [
        "# written by `plan --emit`: accelerate launch --config_file accelerate_config.yaml YOUR_SCRIPT.py",
        "compute_environment: LOCAL_MACHINE",
        "distributed_type: DEEPSPEED",
        "deepspeed_config:",
        "  deepspeed_config_file: ds_config.json",
        f"  zero3_init_flag: {'true' if spec.zero_stage == 3 else 'false'}",
        f"mixed_precision: {mixed}",
        f"num_machines: {spec.nodes}",
        f"num_processes: {spec.world_size}",
        "machine_rank: 0",
    ]
    if spec.nodes > 1:
        lines += ["main_process_ip: MAIN_NODE_IP  # set on every node", "main_process_port: 29500", "same_network: true"]
    return "\n".join(lines) + "\n"


def launch_script(spec: TrainingSpec, model: str) -> str:
    """The commands: this plan measured by ``harness run``, and a training script launched
    with accelerate (one node) or DeepSpeed's launcher (several, over a hostfile)."""
    per_node = spec.gpus_per_node
    measure = f"harness run --spec run_spec.json --out measured.jsonl   # model {model}, {per_node} process(es)"
    if spec.nodes > 1:  # harness run runs the ranks of one machine
        measure = f"# (harness run --spec measures one machine; this plan spans {spec.nodes} nodes)"
    lines = [
        "#!/usr/bin/env bash",
        "# written by `plan --emit`; run from this folder",
        "set -euo pipefail",
        "",
        "# measure this setup with the real stack (transformers + peft + DeepSpeed) on this machine:",
        measure,
        "",
        "# train with your script, one node:",
        "#   accelerate launch --config_file accelerate_config.yaml YOUR_SCRIPT.py",
    ]
    if spec.nodes > 1:
        lines += [
            f"# {spec.nodes} nodes: a hostfile with one line per node ('node-1 slots={per_node}'), then on the first node:",
            f"#   deepspeed --hostfile hostfile --num_nodes {spec.nodes} --num_gpus {per_node} YOUR_SCRIPT.py --deepspeed ds_config.json",
            "#   (or accelerate launch on every node with --machine_rank set and main_process_ip filled in)",
        ]
    else:
        lines.append(f"#   deepspeed --num_gpus {per_node} YOUR_SCRIPT.py --deepspeed ds_config.json")
    return "\n".join(lines) + "\n"


def emit(folder: str | Path, model: str, arch: Architecture, spec: TrainingSpec) -> list[Path]:
    """Write the files of ``FILES`` into ``folder`` (created if needed); each is written whole
    (a temporary file renamed over it), so an interrupted emit leaves no half file."""
    out = Path(folder)
    if spec.sharding != "deepspeed":
        if spec.sharding == "fsdp2":
            raise PlannerError("--emit writes DeepSpeed configs; FSDP2 (--sharding fsdp2) is not emitted yet")
        raise PlannerError(f"--emit writes DeepSpeed configs; --sharding {spec.sharding} (a stack without DeepSpeed) is not emitted yet")
    if spec.precision not in ("bf16-mixed", "fp16-mixed", "fp32"):
        raise PlannerError(f"--emit: --precision {spec.precision} has no DeepSpeed config (bf16-mixed, fp16-mixed and fp32 do)")
    if out.exists() and not out.is_dir():
        raise PlannerError(f"--emit {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlannerError(f"--emit {out}: cannot create the folder ({exc.strerror})") from None
    texts = {
        "ds_config.json": json.dumps(deepspeed_config(arch, spec), indent=2) + "\n",
        "adapter_config.json": json.dumps(lora_config(spec), indent=2) + "\n",
        "accelerate_config.yaml": accelerate_config(spec),
        "launch.sh": launch_script(spec, model),
        "run_spec.json": RunSpec(model=model, spec=spec).model_dump_json(indent=2) + "\n",
    }
    if spec.method == "full":
        del texts["adapter_config.json"]
    written = []
    for name, text in texts.items():
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise PlannerError(f"--emit {out}: cannot write {name} ({exc.strerror})") from None
        if name == "launch.sh":
            path.chmod(0o755)
        written.append(path)
    return written


def read_run_spec(path: str | Path) -> RunSpec:
    """``run_spec.json`` (or the folder holding it), with errors naming the file."""
    p = Path(path)
    if p.is_dir():
        p = p / "run_spec.json"
    text = read_text(p, "--spec")
    try:
        return RunSpec.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        where = ".".join(str(x) for x in first["loc"])
        raise PlannerError(f"--spec {p}: {where + ': ' if where else ''}{first['msg']}") from None
