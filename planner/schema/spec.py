"""What the user asks for: the training setup, validated once, used by every formula.

Defaults follow the seed's setup (``shared/reference/seed_setup.md``): sequence length 512,
micro batch 8, DeepSpeed ZeRO-3 with the optimizer offloaded to CPU, gradient checkpointing,
bf16 mixed precision, AdamW, LoRA r=8 / alpha 16 / dropout 0.05 on all linear layers.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["full", "lora", "qlora"]
Precision = Literal["bf16-mixed", "amp-bf16", "bf16", "fp16-mixed", "fp32"]
Optimizer = Literal["adamw", "adamw8bit", "sgd"]
Attention = Literal["eager", "sdpa", "flash"]
Offload = Literal["none", "optimizer", "all"]
#: The engine that holds (and shards) the model: DeepSpeed ZeRO, PyTorch FSDP2 (``fully_shard``),
#: PyTorch FSDP1 (``FullyShardedDataParallel``, FULL_SHARD), or none of them ("ddp": one GPU, or
#: torch DistributedDataParallel over several).
Sharding = Literal["deepspeed", "fsdp2", "fsdp1", "ddp"]
#: How the logits become the loss (``planner/formulas/activations.py`` ``loss_bytes``):
#: transformers >= 4.49 pads the labels, 4.46-4.48 makes a contiguous fp32 shifted copy,
#: <= 4.45 returns fp32 logits and shifts them.
LossPath = Literal["padded-labels", "shift-fp32-copy", "fp32-logits"]
#: How a QLoRA model was prepared: nothing, peft ``prepare_model_for_kbit_training`` (every
#: non-quantized parameter fp32), or that and TRL's ``peft_module_casting_to_bf16``.
QloraPrep = Literal["none", "peft", "trl"]
AdamwImpl = Literal["foreach", "fused"]
AdapterDtype = Literal["auto", "fp32", "bf16", "fp16"]
EmbeddingSave = Literal["auto", "targets", "full", "rows", "none"]

#: The seven projections of a Llama-family decoder layer, in module order.
LAYER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Module names that may be LoRA targets or in modules_to_save besides the layer linears.
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


class DeepSpeedConfig(BaseModel):
    """The DeepSpeed knobs that size buffers, in elements. ``None`` means Hugging Face's
    ``"auto"`` values (transformers ``integrations/deepspeed.py``: reduce bucket = h*h,
    prefetch bucket = 0.9*h*h, persistence threshold = 10*h); the rest are DeepSpeed's own
    defaults (``deepspeed/runtime/zero/config.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reduce_bucket_size: int | None = Field(default=None, gt=0)
    stage3_prefetch_bucket_size: int | None = Field(default=None, gt=0)
    stage3_param_persistence_threshold: int | None = Field(default=None, ge=0)
    stage3_max_live_parameters: int = Field(default=1_000_000_000, gt=0)
    stage3_max_reuse_distance: int = Field(default=1_000_000_000, ge=0)
    sub_group_size: int = Field(default=1_000_000_000, gt=0)
    overlap_comm: bool = True
    #: ZeRO-3 swaps ``torch.nn.functional.linear`` for a function that keeps every linear's
    #: input, frozen ones too (``zero_optimization.memory_efficient_linear``)
    memory_efficient_linear: bool = True


class TrainingSpec(BaseModel):
    """One training setup on a given number of GPUs. Sizes are per GPU (micro batch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "lora"
    precision: Precision = "bf16-mixed"
    optimizer: Optimizer = "adamw"
    micro_batch_size: int = Field(default=8, ge=1)
    seq_len: int = Field(default=512, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    grad_ckpt: bool = True
    attention: Attention = "sdpa"
    #: Batches carry a padding attention mask (the seed pads GSM8k to 512 tokens). Without one
    #: (packed or equal-length batches) SDPA runs causal with grouped k/v and no mask tensor.
    padding_mask: bool = True
    zero_stage: int = Field(default=3, ge=0, le=3)
    #: What shards with ``zero_stage`` 3: DeepSpeed ZeRO-3 or PyTorch FSDP2 (``fully_shard``
    #: per decoder layer and the root, reshard after forward).
    sharding: Sharding = "deepspeed"
    offload: Offload = "optimizer"
    gpus_per_node: int = Field(default=1, ge=1, le=64)
    nodes: int = Field(default=1, ge=1, le=100_000)
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0, allow_inf_nan=False)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    lora_targets: tuple[str, ...] = LAYER_LINEARS
    modules_to_save: tuple[str, ...] = ()
    added_tokens: int = Field(default=0, ge=0)
    adapter_dtype: AdapterDtype = "auto"
    save_embedding_layers: EmbeddingSave = "auto"
    qlora_double_quant: bool = True
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    # -- behaviours of the training stack (``data/stacks/*.json``; docs/stacks.md) -------------
    loss_path: LossPath = "padded-labels"
    #: the training loop keeps the model's output (the logits) alive through ``backward()``
    keep_outputs: bool = False
    qlora_prep: QloraPrep = "peft"
    #: bitsandbytes < 0.43.2: ``MatMul4Bit`` keeps its input for backward whatever needs a
    #: gradient (``ctx.tensors = (A, B)``; fixed in bitsandbytes PR #1270)
    bnb_keeps_input: bool = False
    #: torch DDP with ``gradient_as_bucket_view=False`` (its default): the reducer's buckets are
    #: a second copy of the gradients (more than one rank)
    ddp_grad_copy: bool = True
    adamw_impl: AdamwImpl = "foreach"
    #: the forward runs under ``torch.autocast(bf16)`` with bf16 weights too (HF Trainer /
    #: accelerate ``mixed_precision="bf16"`` on a model loaded in bf16); amp-bf16 always does
    autocast: bool = False
    #: the 4-bit plugin quantizes lm_head too (Lightning's ``BitsandbytesPrecision``)
    quantize_lm_head: bool = False
    #: FSDP1 gradient accumulation under ``no_sync()``: the unsharded gradients stay until the
    #: sync micro batch (torch ``_runtime_utils._post_backward_hook`` returns early)
    fsdp_no_sync: bool = False
    #: an FSDP1 unit's gradient is its whole FlatParameter, frozen weights included
    #: (``use_orig_params=True`` with frozen and trainable weights in one unit)
    fsdp_flat_grads: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingSpec":
        if self.sharding in ("fsdp2", "fsdp1"):
            # FSDP1 (FULL_SHARD, one unit per decoder layer) is planned with FSDP2's composition
            # (docs/stacks.md lists what of FSDP1's FlatParameters is not modelled yet)
            fsdp = "FSDP2 (--sharding fsdp2; harness: --world-size above 1)" if self.sharding == "fsdp2" else "FSDP1 (--sharding fsdp1)"
            if self.zero_stage != 3 or self.offload != "none":
                raise ValueError(f"{fsdp} is planned as full sharding (--zero 3) without offload (--offload none)")
            if self.precision not in ("bf16", "bf16-mixed"):
                raise ValueError(f"{fsdp} is modelled for --precision bf16 and bf16-mixed")
            if self.optimizer != "adamw" or self.method == "qlora":
                raise ValueError(f"{fsdp} is modelled for --method full or lora with --optimizer adamw")
        if self.sharding == "ddp":
            engine = "torch DDP / one GPU (--sharding ddp)"
            if self.zero_stage != 0 or self.offload != "none":
                raise ValueError(f"{engine} runs without DeepSpeed: it goes with --zero 0 and --offload none")
            if self.precision in ("bf16-mixed", "fp16-mixed"):
                raise ValueError(
                    f"--precision {self.precision} (16-bit weights with fp32 master copies) is DeepSpeed's; "
                    f"{engine} trains with amp-bf16 (fp32 weights under autocast), bf16 or fp32"
                )
        if self.offload == "all" and self.zero_stage != 3:
            raise ValueError("--offload all (parameters to CPU) needs --zero 3")
        if self.offload == "optimizer" and self.zero_stage == 0:
            raise ValueError("--offload optimizer needs ZeRO stage 1, 2 or 3")
        if self.method != "full":
            bad = [t for t in (*self.lora_targets, *self.modules_to_save) if t not in (*LAYER_LINEARS, *EMBEDDING_MODULES)]
            if bad:
                raise ValueError(f"unknown LoRA module {bad[0]!r} (choose from all-linear, {', '.join(LAYER_LINEARS + EMBEDDING_MODULES)})")
            if not self.lora_targets:
                raise ValueError("LoRA needs at least one target module")
            both = set(self.lora_targets) & set(self.modules_to_save)
            if both:
                raise ValueError(f"{sorted(both)[0]} cannot be both a LoRA target and in modules_to_save")
        if self.offload != "none" and self.optimizer != "adamw" and self.sharding == "deepspeed":
            raise ValueError(
                f"--offload {self.offload} steps the optimizer on the CPU with DeepSpeedCPUAdam; "
                f"--optimizer {self.optimizer} needs --offload none"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch_size * self.seq_len


def parse_targets(text: str) -> tuple[str, ...]:
    """``all-linear`` (peft's value: every linear layer except the output layer), ``all``
    (all linear layers plus embed_tokens and lm_head, the seed's "all layers"), or a comma list."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    out: list[str] = []
    for w in words:
        if w in ("all-linear", "all_linear"):
            out.extend(LAYER_LINEARS)
        elif w == "all":
            out.extend(LAYER_LINEARS + EMBEDDING_MODULES)
        else:
            out.append(w)
    return tuple(dict.fromkeys(out))
