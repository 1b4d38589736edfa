"""Bytes per element of each kind of tensor under each precision mode."""

from __future__ import annotations

from typing import Literal, NamedTuple

from planner.schema.spec import Optimizer, TrainingSpec
from planner.units import ceil_div


class Dtypes(NamedTuple):
    weight: int  # model parameters as held by the module
    grad: int  # parameter gradients as produced by backward
    master: int  # extra fp32 copy of trainable weights kept by the optimizer (0 if none)
    state: int  # one optimizer moment (AdamW exp_avg / exp_avg_sq), before 8-bit
    act: int  # matmul / attention outputs: the compute dtype
    resid: int  # the residual stream and RMSNorm outputs (dtype of the weights)


PRECISIONS: dict[str, Dtypes] = {
    # DeepSpeed bf16 / fp16 mode: the engine casts the module to 16 bit; ZeRO's optimizer keeps
    # fp32 master partitions and fp32 Adam states (deepspeed/runtime/zero/stage3.py,
    # fp32_partitioned_groups_flat; ZeRO paper, Rajbhandari et al. 2020, §3: 2+2+12 bytes/param).
    "bf16-mixed": Dtypes(weight=2, grad=2, master=4, state=4, act=2, resid=2),
    "fp16-mixed": Dtypes(weight=2, grad=2, master=4, state=4, act=2, resid=2),
    # torch.autocast(bfloat16) over fp32 weights (plain PyTorch / HF Trainer --bf16): fp32 grads
    # and states, no separate master; matmuls run and save in bf16.
    "amp-bf16": Dtypes(weight=4, grad=4, master=0, state=4, act=2, resid=4),
    # Pure bf16: weights, grads and Adam states all bf16 (torch.optim keeps states in param dtype).
    "bf16": Dtypes(weight=2, grad=2, master=0, state=2, act=2, resid=2),
    "fp32": Dtypes(weight=4, grad=4, master=0, state=4, act=4, resid=4),
}

#: FSDP2 mixed precision (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``): the
#: sharded trainable parameters are fp32 and are the optimizer's parameters (no separate
#: master), so their gradients and AdamW states are fp32; gathered weights and compute are bf16.
FSDP2_MIXED = Dtypes(weight=4, grad=4, master=0, state=4, act=2, resid=2)


def autocast_on(spec: TrainingSpec) -> bool:
    """Whether the forward runs under ``torch.autocast(bf16)``: always with ``amp-bf16``, and
    with bf16 weights when the stack's trainer autocasts (``TrainingSpec.autocast``: accelerate
    ``prepare_model`` wraps ``forward`` in autocast and ``convert_outputs_to_fp32``)."""
    return spec.precision == "amp-bf16" or (spec.autocast and spec.precision == "bf16")


def spec_dtypes(spec: TrainingSpec) -> Dtypes:
    """The bytes per element of each kind of tensor for ``spec``: its precision's, except that
    FSDP2 under bf16 mixed precision keeps fp32 sharded parameters (``FSDP2_MIXED``)."""
    if spec.sharding in ("fsdp2", "fsdp1") and spec.precision == "bf16-mixed":
        return FSDP2_MIXED
    dt = PRECISIONS[spec.precision]
    if qlora_prepared(spec) and dt.weight == 2:
        # peft ``prepare_model_for_kbit_training`` casts every parameter that is not a 4-bit
        # ``Params4bit`` to fp32 (norms, embeddings, lm_head); bitsandbytes ``Linear4bit.forward``
        # returns its input's dtype (``out.to(inp_dtype)``), so the fp32 norm weights make the
        # residual stream, the norms' outputs and every checkpointed layer input fp32. (TRL's
        # ``peft_module_casting_to_bf16`` casts embeddings and lm_head back to bf16 but keeps
        # the norms fp32: the residual stream is fp32 all the same.)
        return dt._replace(weight=4, resid=4)
    return dt


def qlora_prepared(spec: TrainingSpec) -> bool:
    """A QLoRA model prepared by peft (or peft + TRL) and trained outside DeepSpeed (whose engine
    casts the whole module back to 16 bit: deepspeed/runtime/engine.py ``_configure_distributed_model``)."""
    return spec.method == "qlora" and spec.qlora_prep != "none" and spec.sharding != "deepspeed"


#: bitsandbytes 8-bit blockwise optimizers: uint8 states with one fp32 absmax per block of 256
#: (bitsandbytes/optim/optimizer.py Optimizer8bit, ``block_wise=True``; functional.py
#: ``optimizer_update_8bit_blockwise``; Dettmers et al. 2022, "8-bit Optimizers via Block-wise
#: Quantization", §2). NB: tensors under 4096 elements stay 32-bit (``min_8bit_size``); ignored.
ADAM8BIT_BLOCK = 256


def optimizer_state_bytes(optimizer: Optimizer, dt: Dtypes, numel: int) -> int:
    """Moments of the optimizer for ``numel`` trainable elements (master copy not included).

    AdamW: two moments (Loshchilov & Hutter 2019; torch.optim.AdamW exp_avg, exp_avg_sq).
    SGD: torch.optim.SGD's default ``momentum=0`` keeps no state.
    """
    if optimizer == "adamw":
        return 2 * dt.state * numel
    if optimizer == "adamw8bit":
        blocks = ceil_div(numel, ADAM8BIT_BLOCK)
        return 2 * (numel + 4 * blocks)
    return 0


def optimizer_step_temp_bytes(optimizer: Optimizer, dt: Dtypes, numel: int, scratch_states: float = 1.0) -> int:
    """Scratch the optimizer step allocates for ``numel`` elements at once.

    torch's foreach AdamW (the default on CUDA) builds ``exp_avg_sq_sqrt = _foreach_sqrt(...)``,
    one state-sized temporary (torch/optim/adam.py ``_multi_tensor_adam``); the single-tensor
    path (the default for CPU tensors) computes ``(exp_avg_sq.sqrt() / bias_correction2_sqrt)``
    and holds two (``_single_tensor_adam``). ``scratch_states`` is that count (the calibration's
    ``optimizer_scratch_states``). bitsandbytes and SGD update in place.
    """
    return int(scratch_states * dt.state * numel) if optimizer == "adamw" else 0


ADAPTER_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def adapter_dtype(spec: TrainingSpec) -> Literal["fp32", "bf16", "fp16"]:
    """The dtype LoRA A/B are held in (and saved in).

    ``auto``: peft keeps adapters in fp32 (``autocast_adapter_dtype=True``,
    peft/tuners/tuners_utils.py). DeepSpeed's engine casts the module to 16 bit under ZeRO 0-2
    (deepspeed/runtime/engine.py ``_configure_distributed_model``) but, since 0.19.2, leaves
    modules initialised under ZeRO-3 (``zero.Init``) as they are, so adapters stay fp32 there.
    Pure bf16 training casts everything to bf16; amp-bf16 and fp32 keep fp32. Without DeepSpeed
    or FSDP2 (``--sharding ddp`` / ``fsdp1``) nothing recasts peft's fp32 adapters.
    """
    if spec.adapter_dtype != "auto":
        return spec.adapter_dtype
    if spec.sharding in ("ddp", "fsdp1"):
        # no engine recasts the module: peft's ``autocast_adapter_dtype=True`` (get_peft_model)
        # leaves the adapters fp32 over a 16-bit base
        return "fp32"
    half: Literal["bf16", "fp16"] = "fp16" if spec.precision == "fp16-mixed" else "bf16"
    if spec.precision in ("amp-bf16", "fp32"):
        return "fp32"
    if spec.precision == "bf16":
        return half
    return "fp32" if spec.zero_stage == 3 else half


def adapter_bytes_per_elem(spec: TrainingSpec) -> int:
    """Bytes of one LoRA A/B element (see ``adapter_dtype``)."""
    return ADAPTER_DTYPE_BYTES[adapter_dtype(spec)]
