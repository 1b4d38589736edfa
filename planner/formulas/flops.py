"""FLOPs of one training step, as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

Only matrix products count (``mm``/``addmm``/``bmm`` and the attention kernels); a product of
(m x k) by (k x n) is ``2*m*k*n`` (flop_counter.py ``mm_flop``). Attention is counted over the
full s x s score matrix even when causal, as FlopCounterMode and the usual MFU conventions do
(Chowdhery et al. 2022, PaLM, App. B: 6N + 12 L h s per token). Per linear layer (in -> out)
and token: forward ``2*in*out``; backward ``2*in*out`` for the input gradient when the input
requires grad plus ``2*in*out`` for the weight gradient when the weight is trainable (Kaplan et
al. 2020, "Scaling laws", §2.1: backward = 2x forward for full training). Fused attention
backward recomputes the scores: 5 products against the forward's 2 (flop_counter.py
``sdpa_backward_flop_count``); eager attention's two ``matmul`` backward needs 4.

Which gradients autograd computes follows from ``requires_grad``:

* full fine-tuning: everything; the embedding output is a non-leaf of a trainable weight;
* LoRA: frozen base weights never get a weight gradient; an input gradient flows into a layer
  only when something below needs it. The embedding output requires grad only when the
  embedding is trained or ``gradient_checkpointing_enable`` calls ``enable_input_require_grads``
  (transformers 5 always does for causal LMs), so without checkpointing layer 0's frozen
  q/k/v/gate/up projections do no backward matmul at all;
* gradient checkpointing (``use_reentrant=False``) re-runs each decoder layer's forward during
  backward; its early stop (``torch.utils.checkpoint``, on by default) ends the re-run after
  the last op whose output backward needs, so the layer's final projection (``down_proj``, or
  with LoRA on it, the adapter's ``lora_B``) is not recomputed.
"""

from __future__ import annotations

from typing import NamedTuple

from planner.formulas.params import layer_linears, vocab
from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec


class StepFlops(NamedTuple):
    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def attention_forward_flops(arch: Architecture, spec: TrainingSpec) -> int:
    """QK^T and PV over all heads, full s x s (flop_counter.py ``sdpa_flop_count``)."""
    b, s = spec.micro_batch_size, spec.seq_len
    return 4 * b * arch.num_attention_heads * s * s * arch.head_size


def _layer(arch: Architecture, spec: TrainingSpec, x_req: bool) -> tuple[int, int, int]:
    """(forward, backward, not-recomputed tail) FLOPs of one decoder layer; x_req: input needs grad."""
    T = spec.tokens_per_micro_batch
    lin = layer_linears(arch)
    full = spec.method == "full"
    targets = set() if full else set(spec.lora_targets)
    r = spec.lora_rank
    fwd = bwd = 0

    def linear(name: str, inp_req: bool) -> bool:
        """Add one projection (and its adapter); return whether its output requires grad."""
        nonlocal fwd, bwd
        s = lin[name]
        mm = 2 * T * s.in_features * s.out_features
        fwd += mm
        if inp_req:
            bwd += mm  # input gradient through W
        if full:
            bwd += mm  # weight gradient
        if name in targets:
            a_mm, b_mm = 2 * T * s.in_features * r, 2 * T * r * s.out_features
            fwd += a_mm + b_mm
            bwd += a_mm + 2 * b_mm + (a_mm if inp_req else 0)  # dA, dB, d(A out), dX
        return inp_req or full or name in targets

    q, k, v = (linear(n, x_req) for n in ("q_proj", "k_proj", "v_proj"))
    att = attention_forward_flops(arch, spec)
    fwd += att
    attn_req = q or k or v
    if attn_req:
        bwd += att * (5 if spec.attention != "eager" else 4) // 2
    o_req = linear("o_proj", attn_req)
    h1_req = x_req or o_req
    g_req = linear("gate_proj", h1_req)
    u_req = linear("up_proj", h1_req)
    linear("down_proj", g_req or u_req)
    d = lin["down_proj"]
    tail = 2 * T * r * d.out_features if "down_proj" in targets else 2 * T * d.in_features * d.out_features
    return fwd, bwd, tail


def step_flops(arch: Architecture, spec: TrainingSpec) -> StepFlops:
    """Forward (incl. the loss) and backward (incl. recomputation) FLOPs of one micro batch."""
    T = spec.tokens_per_micro_batch
    h, V = arch.hidden_size, vocab(arch, spec.added_tokens)
    full = spec.method == "full"
    targets = set() if full else set(spec.lora_targets)
    embed_trained = full or "embed_tokens" in targets or "embed_tokens" in spec.modules_to_save
    x_req = embed_trained or spec.grad_ckpt
    fwd = bwd = 0
    if "embed_tokens" in targets:  # peft lora.Embedding: (T x r) lookup of A times B^T
        fwd += 2 * T * spec.lora_rank * h
        bwd += 2 * T * spec.lora_rank * h
    # Every layer is the same but for whether its input needs a gradient: the bottom one may
    # not (see module docstring); after it, every input does once anything below trains.
    after = x_req or full or bool(targets & set(layer_linears(arch)))
    L = arch.num_hidden_layers
    for count, req in ((1, x_req), (L - 1, after)):
        f, b, tail = _layer(arch, spec, req)
        fwd += count * f
        bwd += count * (b + (f - tail if spec.grad_ckpt else 0))
    x_req = after
    head = 2 * T * h * V
    fwd += head
    bwd += head if x_req else 0
    if full or "lm_head" in spec.modules_to_save:
        bwd += head
    elif "lm_head" in targets:
        a_mm, b_mm = 2 * T * h * spec.lora_rank, 2 * T * spec.lora_rank * V
        fwd += a_mm + b_mm
        bwd += a_mm + 2 * b_mm + a_mm
    return StepFlops(forward=fwd, backward=bwd)
