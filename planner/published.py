"""Published training throughput (``data/published/throughput.json``) and the planner's prediction for each.

Each point carries the ``plan`` options that describe the run (mapped by hand from the source,
see ``basis``) and the published tokens/s per GPU, padding included (MPT rows converted to the
Llama of the same size by FLOPs per token). The planner is evaluated for exactly those options.
"""

from __future__ import annotations

import json
from functools import cache

from pydantic import BaseModel, ConfigDict, Field

from planner.calibration import Calibration, load_calibration
from planner.catalog import data_dir, find_gpu, find_instance, find_model
from planner.inputs import make_spec
from planner.memory import param_counts
from planner.spec import parse_targets
from planner.timing import step_timing


class PlanOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    instance: str | None = None
    gpu: str | None = None
    gpus_per_node: int | None = Field(default=None, ge=1)
    nodes: int = Field(default=1, ge=1)
    method: str
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(default=1, ge=1)
    seq_len: int = Field(ge=1)
    zero: int = Field(ge=0, le=3)
    sharding: str = "deepspeed"
    offload: str = "none"
    grad_ckpt: bool = True
    attention: str = "sdpa"
    precision: str = "bf16-mixed"
    padding_mask: bool = True
    added_tokens: int = 0
    optimizer: str = "adamw"
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_targets: str | None = None


class PublishedPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str
    metric: str
    published_value: float
    published_unit: str
    tokens_per_s_per_gpu: float = Field(gt=0)
    basis: str
    confidence: str
    plan_options: PlanOptions
    as_of: str
    known_gap: str | None = Field(default=None, description="What of this run the planner knowingly does not model.")


@cache
def published_throughput() -> tuple[PublishedPoint, ...]:
    raw = json.loads((data_dir() / "published" / "throughput.json").read_text())
    return tuple(PublishedPoint.model_validate(p) for p in raw["points"])


def predicted_tokens_per_s_per_gpu(point: PublishedPoint, cal: Calibration | None = None) -> float:
    """The planner's tokens/s per GPU for the point's options (whether or not it fits)."""
    o = point.plan_options
    inst = find_instance(o.instance) if o.instance else None
    gpu = find_gpu(inst.gpu if inst else o.gpu or "")
    per_node = inst.gpu_count if inst else (o.gpus_per_node or 1)
    fields: dict[str, object] = {
        "grad_accum": o.grad_accum,
        "seq_len": o.seq_len,
        "zero_stage": o.zero,
        "sharding": o.sharding,
        "offload": o.offload,
        "grad_ckpt": o.grad_ckpt,
        "attention": o.attention,
        "precision": o.precision,
        "padding_mask": o.padding_mask,
        "added_tokens": o.added_tokens,
        "optimizer": o.optimizer,
        "nodes": o.nodes,
    }
    fields.update(
        {k: v for k, v in (("lora_rank", o.lora_rank), ("lora_alpha", o.lora_alpha), ("lora_dropout", o.lora_dropout)) if v is not None}
    )
    if o.lora_targets:
        fields["lora_targets"] = parse_targets(o.lora_targets)
    arch = find_model(o.model)
    spec = make_spec(arch, fields, o.method, per_node, o.batch_size)
    t = step_timing(arch, spec, param_counts(arch, spec), gpu, inst, cal or load_calibration())
    return t.tokens_per_s / t.world
