"""One setup's parameters: how many there are of each kind and what they weigh on a GPU.

Counts from ``formulas.params`` (transformers' and peft's shapes), bytes per element from
``formulas.dtypes``; the small tensors ZeRO-3 keeps whole from ``formulas.zero``
(``stage3_param_persistence_threshold``, partition_parameters.py). All unsharded: the
composition (``planner.estimate.memory``) divides by the ranks.
"""

from __future__ import annotations

from typing import NamedTuple

from planner.formulas import params as prm
from planner.formulas.dtypes import adapter_bytes_per_elem, qlora_prepared, spec_dtypes
from planner.formulas.grads import embedding_grad_bytes
from planner.formulas.zero import persistence_threshold_elems
from planner.schema.catalog import Architecture
from planner.schema.spec import LAYER_LINEARS, TrainingSpec


class ParamCounts(NamedTuple):
    total: int  # every parameter the training process holds (base + adapters + copies)
    trainable: int
    frozen: int
    lora: int
    modules_to_save: int
    base: int  # the model without adapters (after added tokens)
    weights_bytes: int  # all parameters as held on the device, unsharded
    persistent_bytes: int  # small parameters ZeRO-3 keeps whole on every rank
    grad_bytes_per_layer: int  # gradients of one layer's trainable parameters
    grad_bytes_head: int  # gradients produced at the start of backward (lm_head, final norm)
    grad_bytes_total: int
    largest_module_bytes: int


def count_params(arch: Architecture, spec: TrainingSpec) -> ParamCounts:
    """Parameter counts and byte sizes of ``spec`` on ``arch`` (not memoised; the composition's
    ``param_counts`` is)."""
    dt = spec_dtypes(spec)
    added = spec.added_tokens
    base = prm.total_params(arch, added)
    v, h, L = prm.vocab(arch, added), arch.hidden_size, arch.num_hidden_layers
    linears = prm.layer_linears(arch)
    # Small tensors ZeRO-3 keeps whole (at most stage3_param_persistence_threshold elements):
    # the norms and biases of the base model, and the LoRA A (r x in) and B (out x r) matrices
    # of the layer projections that are that small (in the adapter dtype; harness runs over two
    # ranks hold exactly these).
    threshold = persistence_threshold_elems(arch, spec.deepspeed)
    small = sum(n for n in [h] * (2 * L + 1) if n <= threshold)
    small += L * sum(s.out_features for s in linears.values() if s.bias and s.out_features <= threshold)
    small_lora = 0
    if spec.method != "full":
        r = spec.lora_rank
        for t in spec.lora_targets:
            if t in linears:
                s_ = linears[t]
                small_lora += L * sum(n for n in (r * s_.in_features, s_.out_features * r) if n <= threshold)
    if spec.method == "full":
        lora = mts = 0
        trainable = base
        per_layer = prm.layer_params(arch)
        weights = base * dt.weight
        grad_layer, grad_total = per_layer * dt.grad, base * dt.grad
    else:
        lora = prm.lora_params(arch, spec.lora_targets, spec.lora_rank, added)
        mts = prm.modules_to_save_params(arch, spec.modules_to_save, added)
        trainable = lora + mts
        per_layer = sum(prm.lora_module_params(arch, t, spec.lora_rank) for t in spec.lora_targets if t in LAYER_LINEARS)
        grad_layer, grad_total = per_layer * adapter_bytes_per_elem(spec), lora * adapter_bytes_per_elem(spec) + mts * dt.grad
        if spec.method == "qlora":
            # NF4 projections; norms, embeddings and lm_head stay in the weight dtype (fp32 after
            # peft's prepare_model_for_kbit_training, i.e. amp-bf16 here).
            frozen_bytes = prm.qlora_linear_bytes(arch, spec.qlora_double_quant) + (base - prm.linear_weight_params(arch)) * dt.weight
            if spec.qlora_prep == "trl" and qlora_prepared(spec):
                # TRL sft_trainer.py ``peft_module_casting_to_bf16``: embeddings and lm_head back to bf16
                frozen_bytes -= 2 * (prm.embedding_params(arch, added) + prm.lm_head_params(arch, added))
            head = prm.lm_head_params(arch, added)
            if spec.quantize_lm_head and head:
                # Lightning's BitsandbytesPrecision replaces every nn.Linear, lm_head too
                frozen_bytes += prm.nf4_tensor_bytes(head, spec.qlora_double_quant) - head * dt.weight
        else:
            # FSDP2 mixed precision leaves a frozen bf16 base as loaded (only trainable shards are fp32)
            frozen_bytes = base * (dt.act if spec.sharding in ("fsdp2", "fsdp1") else dt.weight)
        ab = adapter_bytes_per_elem(spec)  # LoRA A/B live (and get gradients) in the adapter dtype
        weights = frozen_bytes + lora * ab + mts * dt.weight
    if spec.method == "qlora":
        lin_bytes = max(prm.nf4_tensor_bytes(s.weight_numel, spec.qlora_double_quant) for s in linears.values())
        emb_bytes = v * h * dt.weight
    else:
        lin_bytes = max(s.weight_numel for s in linears.values()) * dt.weight
        emb_bytes = v * h * dt.weight
    return ParamCounts(
        total=base + trainable if spec.method != "full" else base,
        trainable=trainable,
        frozen=0 if spec.method == "full" else base,
        lora=lora,
        modules_to_save=mts,
        base=base,
        weights_bytes=weights,
        persistent_bytes=min(weights, small * dt.weight + (small_lora * adapter_bytes_per_elem(spec) if spec.method != "full" else 0)),
        grad_bytes_per_layer=grad_layer,
        grad_bytes_head=max(0, grad_total - L * grad_layer - embedding_grad_bytes(arch, spec)),
        grad_bytes_total=grad_total,
        largest_module_bytes=max(lin_bytes, emb_bytes),
    )
