"""What PyTorch FSDP2 (``fully_shard``) gathers and buffers on one rank, in bytes.

The planner models FSDP2 as ``fully_shard`` per decoder layer and on the root (embeddings, final
norm, lm_head), reshard after forward (``TrainingSpec.sharding``), with
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` under bf16 mixed precision
(``dtypes.FSDP2_MIXED``): a group runs unsharded in the compute dtype and its gradients are
reduce-scattered in the reduce dtype. Checked against the FSDP2 traces (records with
``"sharding": "fsdp2"`` in data/measurements/trace/, tests/agreement/test_trace_agreement.py).
"""

from __future__ import annotations

from typing import NamedTuple

from planner.formulas import params as prm
from planner.formulas.dtypes import spec_dtypes
from planner.schema.catalog import Architecture
from planner.schema.spec import LAYER_LINEARS, TrainingSpec


class Fsdp2Terms(NamedTuple):
    """What FSDP2 gathers and buffers on one rank (bytes): the root group (embeddings, final
    norm, lm_head) and one decoder layer unsharded in the compute dtype, one layer's gradients in
    the reduce dtype for the reduce-scatter, and the root's gradients held unsharded through
    backward (the root reduce-scatters last)."""

    root: int
    layer: int
    layer_grad: int  # one unit's unsharded gradient in the compute dtype
    reduce_scatter: int
    root_grad: int  # held through the layers' backward (lm_head, final norm; not a tied embedding)
    root_grad_all: int  # every root gradient at the end of backward (embedding included)
    root_reduce_scatter: int


def fsdp2_terms(arch: Architecture, spec: TrainingSpec) -> Fsdp2Terms:
    """``Fsdp2Terms`` for ``spec``: elements of the root (embedding + lm_head + final norm h,
    plus LoRA A/B or saved copies on them) and of one layer (``params.layer_params``, plus its
    LoRA A/B), times the compute dtype (``act``); gradients of the trainable ones, the
    reduce-scatter in fp32 under bf16 mixed precision (``reduce_dtype``), else in the compute
    dtype."""
    dt = spec_dtypes(spec)
    h, v = arch.hidden_size, prm.vocab(arch, spec.added_tokens)
    emb, lm_head = prm.embedding_params(arch, spec.added_tokens), prm.lm_head_params(arch, spec.added_tokens)
    root_elems = emb + lm_head + h
    layer_elems = prm.layer_params(arch)
    if spec.method == "full":
        layer_grad_elems = layer_elems
        root_grad_elems = lm_head + h  # a tied lm_head's gradient waits in autograd's buffer (a temporary)
        root_all = root_elems
    else:
        layer_grad_elems = sum(prm.lora_module_params(arch, t, spec.lora_rank) for t in spec.lora_targets if t in LAYER_LINEARS)
        layer_elems += layer_grad_elems
        head = prm.lora_module_params(arch, "lm_head", spec.lora_rank, spec.added_tokens) if "lm_head" in spec.lora_targets else 0
        head += v * h if "lm_head" in spec.modules_to_save else 0
        embed = emb if "embed_tokens" in spec.modules_to_save else 0
        if "embed_tokens" in spec.lora_targets:
            embed += prm.lora_module_params(arch, "embed_tokens", spec.lora_rank, spec.added_tokens)
        root_elems += head + embed
        root_grad_elems, root_all = head, head + embed
        if spec.sharding == "fsdp1" and spec.fsdp_flat_grads:
            # use_orig_params=True with frozen and LoRA weights in one unit: the original
            # parameters are views of the FlatParameter, so autograd gives the whole flat
            # parameter a gradient (zeros where frozen), reduce-scattered and sharded whole
            # (torch/distributed/fsdp/_flat_param.py FlatParamHandle; docs/stacks.md)
            layer_grad_elems = layer_elems
    reduce_bytes = 4 if spec.precision == "bf16-mixed" else dt.act
    return Fsdp2Terms(
        root=root_elems * dt.act,
        layer=layer_elems * dt.act,
        layer_grad=layer_grad_elems * dt.act,
        reduce_scatter=layer_grad_elems * reduce_bytes,
        root_grad=root_grad_elems * dt.act,
        root_grad_all=root_all * dt.act,
        root_reduce_scatter=root_all * reduce_bytes,
    )
