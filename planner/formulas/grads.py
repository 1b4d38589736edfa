"""Gradient bytes of a decoder layer's trainable parameters, stage by stage, and of the input
embedding (unsharded, in the dtype backward produces them in).

Backward runs a layer's stages in reverse forward order (``activations.LAYER_STAGES``), and each
projection's weight gradient is made when its stage's backward runs (autograd's
``AccumulateGrad`` right after the matmul's backward): the q/k/v projections in the ``qkv``
stage, ``o_proj`` in ``o``, ``gate_proj``/``up_proj`` in ``gate_up`` and ``down_proj`` in
``down``; the two RMSNorm weights in their own stages. Shapes as ``formulas.params``; LoRA A/B
in the adapter dtype (``dtypes.adapter_bytes_per_elem``).
"""

from __future__ import annotations

from planner.formulas import params as prm
from planner.formulas.dtypes import adapter_bytes_per_elem, spec_dtypes
from planner.schema.catalog import Architecture
from planner.schema.spec import LAYER_LINEARS, TrainingSpec

#: The stage (``activations.LAYER_STAGES``) whose backward makes each projection's gradient.
LINEAR_STAGE = {
    "q_proj": "qkv",
    "k_proj": "qkv",
    "v_proj": "qkv",
    "o_proj": "o",
    "gate_proj": "gate_up",
    "up_proj": "gate_up",
    "down_proj": "down",
}


def layer_grad_bytes(arch: Architecture, spec: TrainingSpec, stages: tuple[str, ...]) -> int:
    """Gradient bytes of one layer's trainable parameters in the given stages (unsharded).

    Full fine-tuning: every projection of those stages (weight + bias, ``numel``) and the
    RMSNorm weight (h) of ``input_norm`` / ``post_attention_norm``, ``grad`` bytes each. LoRA:
    A and B (``r * (in + out)``) of the targeted projections of those stages, in the adapter
    dtype; frozen weights get none."""
    linears = prm.layer_linears(arch)
    names = [n for n in LAYER_LINEARS if LINEAR_STAGE[n] in stages]
    if spec.method == "full":
        norms = sum(arch.hidden_size for st in ("input_norm", "post_attention_norm") if st in stages)
        return spec_dtypes(spec).grad * (sum(linears[n].numel for n in names) + norms)
    ab = adapter_bytes_per_elem(spec)
    return ab * sum(prm.lora_module_params(arch, n, spec.lora_rank) for n in names if n in spec.lora_targets)


def embedding_grad_bytes(arch: Architecture, spec: TrainingSpec) -> int:
    """Gradient bytes of the input embedding's trainable parts (they appear last in backward):
    the whole (vocab + added) x h table in full fine-tuning or as a ``modules_to_save`` copy
    (``grad`` bytes each), and a LoRA embedding's A (r x vocab) + B (h x r) in the adapter dtype."""
    dt = spec_dtypes(spec)
    if spec.method == "full":
        return prm.embedding_params(arch, spec.added_tokens) * dt.grad
    out = 0
    if "embed_tokens" in spec.lora_targets:
        out += prm.lora_module_params(arch, "embed_tokens", spec.lora_rank, spec.added_tokens) * adapter_bytes_per_elem(spec)
    if "embed_tokens" in spec.modules_to_save:
        out += prm.embedding_params(arch, spec.added_tokens) * dt.grad
    return out
