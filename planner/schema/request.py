"""What a user asks for, declared once: every option of ``plan`` (and of ``plan compare``,
``plan sweep``, ``plan cheapest``) with its command-line name, default, help text and the
range the command line enforces.

The CLI builds its options from these fields (``planner/cli/options.py``), the Python API takes
them as keyword arguments (``plan("70b", method="lora", instance="p4de.24xlarge")``), grid files
and published points name them the same way. A field's name is its option with underscores
(``--lora-rank`` is ``lora_rank``, ``--deepspeed`` is ``deepspeed``). Which fields were given
(``model_fields_set``) is what ``settings_sources`` reports as set by an option; the rest are
defaults, or what a configuration file (``--deepspeed``/``--peft``/``--accelerate-config``) says.

``planner.api`` resolves a request (configuration files, hardware, the micro batch) to the
``TrainingSpec`` the formulas read (``TrainingSpec`` is ``planner/schema/spec.py``).
"""

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planner.errors import PlannerError
from planner.schema.spec import (
    AdamwImpl,
    AdapterDtype,
    Attention,
    EmbeddingSave,
    LossPath,
    Method,
    Offload,
    Optimizer,
    Precision,
    QloraPrep,
    Sharding,
)
from planner.schema.stack import BEHAVIOURS


def option(
    default: Any,
    *flags: str,
    help: str = "",  # noqa: A002 (typer's name)
    ge: float | None = None,
    le: float | None = None,
    hidden: bool = False,
) -> Any:
    """A request field that is also a command-line option: its flags (the first is its name in
    messages; ``--x/--no-x`` for a switch), help text, and the range the command line checks."""
    extra: dict[str, Any] = {"flags": list(flags)}
    if hidden:
        extra["hidden"] = True
    return Field(default, description=help, ge=ge, le=le, json_schema_extra=extra)


class PlanRequest(BaseModel):
    """Every option of ``plan`` once. Defaults follow the seed's setup
    (``examples/seed/``: sequence 512, micro batch 8, ZeRO-3 with the optimizer offloaded,
    gradient checkpointing, bf16 mixed precision, AdamW, LoRA r 8 / alpha 16 / dropout 0.05 on
    all linear layers)."""

    #: ``defer_build``: the validator is built on the first ``parse``. The command line, whose
    #: parser has already checked every value against these same declarations, never needs it
    #: (``given``), and a plan's start-up skips building it.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    model: str | None = option(None, "--model", "-m", help="Alias (7b, 13b, 70b = Llama 2), catalog name, HF id, or path to a config.json.")
    method: Method = option("lora", "--method")
    instance: str | None = option(None, "--instance", "-i", help="Cloud instance type, e.g. p4de.24xlarge.")
    gpu: str | None = option(None, "--gpu", help="GPU model, e.g. a100-80gb (instead of --instance).")
    gpus: int | None = option(None, "--gpus", help="GPUs per node with --gpu (default 1).", ge=1)
    nodes: int = option(1, "--nodes", ge=1)
    batch_size: str = option("8", "--batch-size", "-b", help="Micro batch per GPU, or 'max' for the largest that fits.")
    seq_len: int = option(512, "--seq-len", "-s", ge=1)
    grad_accum: int = option(1, "--grad-accum", ge=1)
    zero: int = option(3, "--zero", help="DeepSpeed ZeRO stage 0-3.", ge=0, le=3)
    stack: str | None = option(
        None,
        "--stack",
        help="The training stack whose behaviours to plan: deepspeed (default), hf-trainer, accelerate-fsdp, fsdp2, lightning, "
        "torchtune, custom-loop, or auto (from the installed library versions); see `plan list stacks`. Options given win.",
    )
    sharding: Sharding = option(
        "deepspeed",
        "--sharding",
        help="The engine that holds the model: DeepSpeed ZeRO, PyTorch FSDP2 (fully_shard), FSDP1 (FULL_SHARD), or ddp (none: one GPU "
        "or torch DDP). Default: the stack's.",
    )
    offload: Offload = option("optimizer", "--offload")
    grad_ckpt: bool = option(True, "--grad-ckpt/--no-grad-ckpt")
    attention: Attention = option("sdpa", "--attention")
    padding_mask: bool = option(
        True, "--padding-mask/--no-padding-mask", help="Batches carry a padding attention mask (padded samples, the seed's)."
    )
    precision: Precision = option("bf16-mixed", "--precision")
    optimizer: Optimizer = option("adamw", "--optimizer")
    lora_rank: int = option(8, "--lora-rank", "-r", ge=1)
    lora_alpha: float = option(16.0, "--lora-alpha")
    lora_dropout: float = option(0.05, "--lora-dropout")
    lora_targets: str = option("all-linear", "--lora-targets", help="all-linear, all (+ embed_tokens, lm_head), or a comma list.")
    modules_to_save: str = option("", "--modules-to-save", help="Comma list, e.g. embed_tokens,lm_head.")
    added_tokens: int = option(0, "--added-tokens", help="Tokens added to the vocabulary (the seed: 4).", ge=0)
    adapter_dtype: AdapterDtype = option("auto", "--adapter-dtype", help="dtype of the saved adapter (peft default fp32).")
    save_embedding_layers: EmbeddingSave = option(
        "auto", "--save-embedding-layers", help="Which embedding layers the adapter carries in full (see README)."
    )
    double_quant: bool = option(True, "--double-quant/--no-double-quant", help="QLoRA double quantization.")
    loss_path: LossPath | None = option(
        None, "--loss-path", help="How the logits become the loss (transformers >=4.49 / 4.46-4.48 / <=4.45). Default: the stack's."
    )
    keep_outputs: bool | None = option(
        None, "--keep-outputs/--no-keep-outputs", help="The loop keeps the model output (logits) alive through backward."
    )
    qlora_prep: QloraPrep | None = option(
        None, "--qlora-prep", help="QLoRA preparation: peft prepare_model_for_kbit_training, + TRL's bf16 casts, or none."
    )
    bnb_keeps_input: bool | None = option(
        None, "--bnb-keeps-input/--no-bnb-keeps-input", help="bitsandbytes < 0.43.2: every frozen 4-bit linear keeps its input."
    )
    ddp_grad_copy: bool | None = option(
        None, "--ddp-grad-copy/--no-ddp-grad-copy", help="torch DDP buckets copy the gradients (gradient_as_bucket_view=False)."
    )
    adamw_impl: AdamwImpl | None = option(None, "--adamw-impl", help="torch AdamW: foreach (a state-sized scratch) or fused.")
    autocast: bool | None = option(None, "--autocast/--no-autocast", help="The forward runs under torch.autocast(bf16) over bf16 weights.")
    quantize_lm_head: bool | None = option(
        None, "--quantize-lm-head/--no-quantize-lm-head", help="The 4-bit plugin quantizes lm_head too (Lightning's)."
    )
    fsdp_no_sync: bool | None = option(
        None, "--fsdp-no-sync/--no-fsdp-no-sync", help="FSDP1 accumulates under no_sync(): unsharded gradients until the sync step."
    )
    fsdp_flat_grads: bool | None = option(
        None,
        "--fsdp-flat-grads/--no-fsdp-flat-grads",
        help="An FSDP1 unit's gradient spans its whole FlatParameter, frozen weights too (use_orig_params, mixed units).",
    )
    deepspeed: str | None = option(
        None,
        "--deepspeed",
        help="A DeepSpeed config JSON: ZeRO stage, offload, buffer sizes, micro batch, accumulation, precision (options given win).",
    )
    peft: str | None = option(
        None, "--peft", help="A PEFT adapter_config.json: LoRA rank, alpha, dropout, target modules, modules_to_save."
    )
    accelerate_config: str | None = option(
        None,
        "--accelerate-config",
        help="An accelerate config (YAML): processes, machines, mixed precision, the DeepSpeed (and its config file) or FSDP plugin.",
    )
    reduce_bucket_size: int | None = option(None, "--reduce-bucket-size", help="DeepSpeed, elements (default h*h: auto).", ge=1)
    stage3_prefetch_bucket_size: int | None = option(
        None, "--stage3-prefetch-bucket-size", help="ZeRO-3, elements (default 0.9*h*h, HF's auto).", ge=1
    )
    stage3_param_persistence_threshold: int | None = option(
        None, "--stage3-param-persistence-threshold", help="ZeRO-3, elements (default 10*h, HF's auto).", ge=0
    )
    stage3_max_live_parameters: int | None = option(None, "--stage3-max-live-parameters", help="ZeRO-3, elements (default 1e9).", ge=1)
    stage3_max_reuse_distance: int | None = option(None, "--stage3-max-reuse-distance", help="ZeRO-3, elements (default 1e9).", ge=0)
    sub_group_size: int | None = option(None, "--sub-group-size", help="ZeRO-3 optimizer sub-group, elements (default 1e9).", ge=1)
    overlap_comm: bool | None = option(None, "--overlap-comm/--no-overlap-comm", help="DeepSpeed overlap_comm (default on).")
    memory_efficient_linear: bool | None = option(
        None, "--memory-efficient-linear/--no-memory-efficient-linear", help="ZeRO-3's linear that keeps every input (default on)."
    )
    calibration: str = option(
        "auto",
        "--calibration",
        help="Coefficients: 'auto' (the calibration fitted on the plan's GPU if there is one, else 'default'), "
        "a name from data/calibration/, or a path to a .json file.",
    )
    storage_gb: float | None = option(
        None, "--storage-gb", help="Disk budget in GB (10^9 bytes): how many fine-tuned models fit, base included.", ge=0.0
    )
    dataset_tokens: int | None = option(None, "--dataset-tokens", help="Tokens per epoch (padding included).", ge=1)
    dataset_samples: int | None = option(
        None, "--dataset-samples", help="Samples per epoch, each padded to --seq-len (default 7473: GSM8K train, the seed's).", ge=1
    )
    epochs: float = option(1.0, "--epochs", help="Epochs to price (time_cost covers all of them).")
    # -- plan compare / sweep / cheapest -----------------------------------------------------
    models: str | None = option(None, "--models", help="plan sweep: comma list of models, or all (--model in sweep).", hidden=True)
    methods: str | None = option(None, "--methods", help="plan compare/sweep: comma list of methods (default full,lora).")
    instances: str | None = option(None, "--instances", help="plan compare/sweep: comma list of instances (--instance in sweep).")
    max_nodes: int = option(1, "--max-nodes", help="plan cheapest: try 1..N nodes of each instance.", ge=1, le=64)

    @field_validator("method", "sharding", "offload", "attention", "precision", "optimizer", "adapter_dtype", "save_embedding_layers",
                     "stack", "loss_path", "qlora_prep", "adamw_impl", mode="before")  # fmt: skip
    @classmethod
    def _choice_any_case(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("lora_targets", "modules_to_save", "models", "methods", "instances", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if isinstance(v, Sequence) and not isinstance(v, str):
            return ",".join(str(x) for x in v)
        return v

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @classmethod
    def flags(cls, name: str) -> list[str]:
        """The option's flags as the command line spells them (``["--lora-rank", "-r"]``)."""
        extra = cls.model_fields[name].json_schema_extra
        assert isinstance(extra, dict)
        return [str(f) for f in extra["flags"]]  # type: ignore[union-attr]

    @classmethod
    def flag(cls, name: str) -> str:
        """The option's name in messages: ``--grad-ckpt`` for ``--grad-ckpt/--no-grad-ckpt``."""
        return cls.flags(name)[0].split("/")[0]

    @classmethod
    def given(cls, values: dict[str, Any]) -> "PlanRequest":
        """A request from values the command line has parsed and checked already (types,
        ranges and choices: its options are built from these fields), not validated again;
        ``model_fields_set`` is what was given."""
        return cls.model_construct(**values)

    @classmethod
    def parse(cls, values: dict[str, Any], where: str = "") -> "PlanRequest":
        """A request from keyword values (``None`` means not given); bad input is one
        ``PlannerError`` worded as the command line words it."""
        given = {k: v for k, v in values.items() if v is not None}
        unknown = [k for k in given if k not in cls.model_fields]
        if unknown:
            raise PlannerError(f"{where}No such option: --{unknown[0].replace('_', '-')}")
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise PlannerError(where + request_error(exc)) from None


def request_error(exc: ValidationError) -> str:
    """A request's validation error as the command line says it: ``Invalid value for
    '--seq-len' / '-s': Input should be greater than or equal to 1``."""
    err = exc.errors()[0]
    loc = [str(x) for x in err["loc"]]
    name = loc[0] if loc else ""
    msg = err["msg"]
    if err["type"] == "literal_error":
        choices = PlanRequest.model_fields[name].annotation.__args__ if name in PlanRequest.model_fields else ()  # type: ignore[union-attr]
        msg = f"Value error, {err['input']!r} is not one of {', '.join(repr(c) for c in choices)}."
    if name not in PlanRequest.model_fields:
        return msg
    flags = [f.split("/")[0] for f in PlanRequest.flags(name)]
    return f"Invalid value for {' / '.join(repr(f) for f in flags)}: {msg}"


#: The request fields that are DeepSpeed's buffer sizes and switches (``TrainingSpec.deepspeed``).
DEEPSPEED_KNOBS = (
    "reduce_bucket_size",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
    "sub_group_size",
    "overlap_comm",
    "memory_efficient_linear",
)

#: Spec fields a configuration file can set -> the request field (option) that sets each.
FIELD_OPTION = {
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

#: The stack behaviours that are ``TrainingSpec`` fields of the same name and have an option
#: each; ``None`` in a request means "the stack's". The others are options of their own above.
OWN_OPTION_BEHAVIOURS = ("sharding", "zero", "offload", "precision", "adapter_dtype")
BEHAVIOUR_FIELDS = tuple(b for b in BEHAVIOURS if b not in OWN_OPTION_BEHAVIOURS)
