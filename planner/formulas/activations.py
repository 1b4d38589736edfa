"""Activation memory from an explicit inventory of what autograd saves.

Every entry names one tensor that a backward node keeps, for one op of the Hugging Face
implementation (transformers ``modeling_llama.py``: LlamaDecoderLayer, LlamaRMSNorm,
LlamaAttention with ``eager_attention_forward`` / ``sdpa_attention_forward`` /
``flash_attention_forward``, LlamaMLP; the loss is ``ForCausalLMLoss``; LoRA is peft's
``lora.Linear.forward``). PyTorch saves an input of an op only when the gradient it serves is
needed (autograd codegen saves ``self`` for ``mul`` only if ``other`` requires grad), so what
exists depends on which weights are trainable. Shapes: b micro batch, s sequence, h hidden,
i intermediate, a heads, k key/value heads, d head dim, r LoRA rank, V vocab, T = b*s tokens.

NB: tensors below ~1 MiB (RoPE cos/sin, position ids, per-row norm statistics) are left out.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from planner.formulas.dtypes import Dtypes, adapter_bytes_per_elem, autocast_on
from planner.formulas.params import layer_linears, vocab
from planner.schema.catalog import Architecture
from planner.schema.spec import LAYER_LINEARS, TrainingSpec

MASK_BYTES = 1  # torch.bool dropout mask kept by native_dropout's backward


class Saved(NamedTuple):
    """One saved (or transient) tensor: what it is and its bytes for the whole micro batch."""

    name: str
    bytes: int


def _trainable_linears(spec: TrainingSpec) -> set[str]:
    return set(LAYER_LINEARS) if spec.method == "full" else set()


def _lora_targets(spec: TrainingSpec) -> set[str]:
    return set() if spec.method == "full" else set(spec.lora_targets)


def _input_group(
    prefix: str,
    consumers: list[str],
    in_features: int,
    x_bytes: int,
    spec: TrainingSpec,
    dt: Dtypes,
    tokens: int,
    full_mask: bool = False,
) -> list[Saved]:
    """What the linears reading one input X (b, s, in) keep of it.

    * a trainable weight keeps X for its weight gradient (``addmm`` saves ``mat1``);
    * a LoRA target keeps what ``lora_A`` reads. peft casts X to the adapter's dtype and applies
      its own ``nn.Dropout`` per target (peft ``lora.Linear.forward``): with dropout or a cast,
      each target keeps its own copy (plus a bool mask with dropout); with neither, X itself.
      Under autocast ``lora_A`` keeps its bf16 cast instead. ``lora_B`` keeps ``lora_A``'s
      output (T x r);
    * a frozen weight keeps nothing of X (its input gradient needs only the weight), except
      under DeepSpeed ZeRO-3, whose linear keeps X whatever is trainable
      (``keeps_every_linear_input``).
    Under autocast with a wider X (fp32 residual stream) every trainable consumer casts X to bf16
    and keeps its own cast; otherwise consumers share the one tensor X.
    """
    trainable = [c for c in consumers if c in _trainable_linears(spec)]
    targets = [c for c in consumers if c in _lora_targets(spec)]
    x_numel = tokens * in_features
    cast = x_bytes != dt.act
    lora_bytes = dt.act if autocast_on(spec) else adapter_bytes_per_elem(spec)
    out: list[Saved] = []
    shared_users = list(trainable)
    # ZeRO-3's linear keeps X itself for a frozen weight too (no cast of its own)
    keeps_x = keeps_every_linear_input(spec) and len(trainable) < len(consumers)
    for t in targets:
        if spec.lora_dropout > 0:
            # CUDA's fused native_dropout keeps a bool mask; elsewhere (the CPU) ATen's dropout
            # multiplies by a noise tensor of the input's dtype and autograd keeps that
            # (aten/src/ATen/native/Dropout.cpp ``is_fused_kernel_acceptable``)
            mask = lora_bytes if full_mask else MASK_BYTES
            out.append(Saved(f"{prefix}.{t}.lora_dropout_mask", mask * x_numel))
        if spec.lora_dropout > 0 or lora_bytes != x_bytes:
            out.append(Saved(f"{prefix}.{t}.lora_input", lora_bytes * x_numel))
        else:
            shared_users.append(t)
        out.append(Saved(f"{prefix}.{t}.lora_A_out", lora_bytes * tokens * spec.lora_rank))
    if keeps_x or (shared_users and not cast):
        out.append(Saved(f"{prefix}.input", x_bytes * x_numel))
    if shared_users and cast:
        out.extend(Saved(f"{prefix}.{u}.input_cast", dt.act * x_numel) for u in shared_users)
    return out


def keeps_every_linear_input(spec: TrainingSpec) -> bool:
    """DeepSpeed ZeRO-3 replaces ``torch.nn.functional.linear`` for the rest of the process once
    ``zero.Init`` has run (``memory_efficient_linear``, on by default; transformers runs the
    model's construction in it under ZeRO-3) with ``LinearFunctionForZeroStage3``, whose
    ``setup_context`` saves input, weight and bias whatever needs a gradient
    (deepspeed/runtime/zero/linear.py): a frozen linear keeps its input too. bitsandbytes'
    4-bit layers do not go through ``F.linear``, but before bitsandbytes 0.43.2 their
    ``MatMul4Bit.forward`` (bitsandbytes/autograd/_functions.py) sets ``ctx.tensors = (A, B)``
    whenever the input needs a gradient, though its backward needs only the weight (fixed in
    PR #1270: ``(None, B)``): every frozen 4-bit projection keeps its input (``bnb_keeps_input``)."""
    if spec.method == "qlora":
        return spec.bnb_keeps_input
    return spec.zero_stage == 3 and spec.sharding == "deepspeed" and spec.deepspeed.memory_efficient_linear


def _rms_norm(prefix: str, trainable: bool, dt: Dtypes, tokens: int, h: int) -> list[Saved]:
    """LlamaRMSNorm: ``x.to(fp32).pow(2)`` keeps the fp32 input; ``weight * x_hat`` keeps
    ``x_hat`` (in the input dtype) only when the weight is trainable."""
    out = [Saved(f"{prefix}.fp32_input", 4 * tokens * h)]
    if trainable:
        out.append(Saved(f"{prefix}.normalized", dt.resid * tokens * h))
    return out


def _attention_core(arch: Architecture, spec: TrainingSpec, dt: Dtypes) -> list[Saved]:
    b, s = spec.micro_batch_size, spec.seq_len
    a, kv, d = arch.num_attention_heads, arch.kv_heads, arch.head_size
    tokens = b * s
    q = dt.act * tokens * a * d
    if spec.attention == "eager":
        # repeat_kv expands k, v to a heads; matmul(q, k^T) keeps q and k; softmax(dtype=fp32)
        # keeps its fp32 output; .to(bf16) makes the probabilities that matmul(p, v) keeps with v.
        out = [
            Saved("attn.q_rope", q),
            Saved("attn.k_repeated", q),
            Saved("attn.v_repeated", q),
            Saved("attn.softmax_fp32", 4 * b * a * s * s),
        ]
        if dt.act != 4:
            out.append(Saved("attn.probs", dt.act * b * a * s * s))
        return out
    if spec.attention == "sdpa":
        # With a padding mask transformers repeats k/v to all heads (``use_gqa_in_sdpa`` is
        # False) and the memory-efficient kernel keeps q, k, v, its output and the fp32
        # logsumexp; without one it passes ``is_causal`` and ``enable_gqa`` and the flash kernel
        # keeps k/v at their own head count.
        kv_bytes = q if spec.padding_mask else dt.act * tokens * kv * d
        return [
            Saved("attn.q_rope", q),
            Saved("attn.k", kv_bytes),
            Saved("attn.v", kv_bytes),
            Saved("attn.sdpa_out", q),
            Saved("attn.logsumexp", 4 * b * a * s),
        ]
    # flash-attention 2 reads grouped k/v directly (no repeat) and keeps out and softmax_lse.
    kvb = dt.act * tokens * kv * d
    return [
        Saved("attn.q_rope", q),
        Saved("attn.k_rope", kvb),
        Saved("attn.v", kvb),
        Saved("attn.flash_out", q),
        Saved("attn.softmax_lse", 4 * b * a * s),
    ]


def layer_inventory(arch: Architecture, spec: TrainingSpec, dt: Dtypes, full_mask: bool = False) -> list[Saved]:
    """Everything one decoder layer keeps from its forward for its backward (no checkpointing).
    ``full_mask``: dropout keeps a noise tensor of its input's dtype, not a bool mask (the
    calibration's ``dropout_mask_full_width``: CPU)."""
    tokens = spec.tokens_per_micro_batch
    h, i = arch.hidden_size, arch.intermediate_size
    ad = arch.num_attention_heads * arch.head_size
    full = spec.method == "full"
    out: list[Saved] = []
    out += _rms_norm("input_norm", full, dt, tokens, h)
    out += _input_group("qkv", ["q_proj", "k_proj", "v_proj"], h, dt.resid, spec, dt, tokens, full_mask)
    out += _attention_core(arch, spec, dt)
    # o_proj reads the attention output as (b, s, a*d): a fresh copy after eager's
    # transpose(1, 2).contiguous(), but the fused kernels already write that layout, so there
    # the tensor o_proj keeps is the one the kernel keeps (counted above).
    o_items = _input_group("o", ["o_proj"], ad, dt.act, spec, dt, tokens, full_mask)
    if spec.attention != "eager":
        o_items = [x for x in o_items if x.name != "o.input"]
    out += o_items
    out += _rms_norm("post_attention_norm", full, dt, tokens, h)
    out += _input_group("gate_up", ["gate_proj", "up_proj"], h, dt.resid, spec, dt, tokens, full_mask)
    # down_proj(act_fn(gate) * up): SiLU keeps its input, mul keeps both factors.
    out += [
        Saved("mlp.gate_out", dt.act * tokens * i),
        Saved("mlp.silu_out", dt.act * tokens * i),
        Saved("mlp.up_out", dt.act * tokens * i),
    ]
    out += _input_group("down", ["down_proj"], i, dt.act, spec, dt, tokens, full_mask)
    if spec.precision == "amp-bf16":
        # Autocast casts each fp32 weight to bf16 for F.linear, and linear keeps the cast for
        # the input gradient (cached for trainable leaves, torch/csrc/autograd autocast cache).
        out.append(Saved("autocast_weight_casts", autocast_weight_cast_bytes(arch, dt)))
    return out


def first_layer_input_needs_grad(spec: TrainingSpec) -> bool:
    """Whether backward asks for the embedding output's gradient (see ``first_layer_unsaved_bytes``)."""
    embeddings_train = spec.method == "full" or "embed_tokens" in spec.lora_targets or "embed_tokens" in spec.modules_to_save
    return spec.grad_ckpt or embeddings_train


def first_layer_unsaved_bytes(arch: Architecture, spec: TrainingSpec, dt: Dtypes, full_mask: bool = False) -> int:
    """What the first layer does not keep when its input needs no gradient: with frozen input
    embeddings and no checkpointing nothing asks for the embedding output's gradient
    (transformers' ``gradient_checkpointing_enable`` and peft, for a checkpointing model, call
    ``enable_input_require_grads``; without checkpointing nobody does), so the first input norm
    keeps nothing and the first q/k/v inputs keep no dropout mask (and, under ZeRO-3, no input
    for the frozen weights): only what lora_A's weight gradient needs."""
    if first_layer_input_needs_grad(spec):
        return 0
    inventory = layer_inventory(arch, spec, dt, full_mask)
    names = {x.name for x in inventory}
    # a LoRA target without its own copy reads X itself (no dropout, no cast): lora_A's weight
    # gradient needs X, so it stays
    x_read = any(f"qkv.{t}.lora_A_out" in names and f"qkv.{t}.lora_input" not in names for t in ("q_proj", "k_proj", "v_proj"))

    def unsaved(name: str) -> bool:
        mask = name.startswith("qkv.") and name.endswith("lora_dropout_mask")
        return name.startswith("input_norm.") or mask or (name == "qkv.input" and not x_read)

    return total([x for x in inventory if unsaved(x.name)])


def autocast_weight_cast_bytes(arch: Architecture, dt: Dtypes) -> int:
    """bf16 copies of one layer's projection weights made by autocast."""
    return dt.act * sum(s.weight_numel for s in layer_linears(arch).values())


def layer_checkpoint_input(arch: Architecture, spec: TrainingSpec, dt: Dtypes) -> Saved:
    """With gradient checkpointing a layer keeps only its input hidden states."""
    return Saved("layer_input", dt.resid * spec.tokens_per_micro_batch * arch.hidden_size)


def model_level_saved(arch: Architecture, spec: TrainingSpec, dt: Dtypes, full_mask: bool = False) -> list[Saved]:
    """Outside the layers: ids, attention mask, final norm, lm_head input, logits, log-probs."""
    b, s = spec.micro_batch_size, spec.seq_len
    tokens = b * s
    h, v = arch.hidden_size, vocab(arch, spec.added_tokens)
    out = [Saved("input_ids", 8 * tokens)]
    if spec.attention == "eager":
        out.append(Saved("causal_mask", dt.resid * b * s * s))  # additive float mask (b, 1, s, s)
    elif spec.attention == "sdpa" and spec.padding_mask:
        out.append(Saved("causal_mask", 1 * b * s * s))  # boolean mask (b, 1, s, s)
    out += _rms_norm("final_norm", spec.method == "full", dt, tokens, h)
    # a frozen lm_head keeps its input under ZeRO-3's linear, or as a 4-bit layer that keeps it
    head_keeps = spec.quantize_lm_head if spec.method == "qlora" else True
    frozen_head_kept = keeps_every_linear_input(spec) and head_keeps and "lm_head" not in spec.lora_targets
    if spec.method == "full" or "lm_head" in spec.modules_to_save or frozen_head_kept:
        out.append(Saved("lm_head.input", dt.resid * tokens * h))
    elif "lm_head" in spec.lora_targets:
        out += _input_group("lm_head", ["lm_head"], h, dt.resid, spec, dt, tokens, full_mask)
    if spec.method != "full" and "embed_tokens" in spec.lora_targets:
        # peft lora.Embedding: lora_embedding_B's matmul keeps the (T, r) lookup of A.
        out.append(Saved("embed_tokens.lora_A_out", dt.act * tokens * spec.lora_rank))
    # The model returns its logits (kept by the training loop's ``outputs`` until the loss is
    # made); cross_entropy's log_softmax keeps its fp32 output for backward.
    out.append(Saved("logits", logits_elem_bytes(spec, dt) * tokens * v))
    out.append(Saved("log_softmax_fp32", 4 * tokens * v))
    return out


def logits_elem_bytes(spec: TrainingSpec, dt: Dtypes) -> int:
    """Bytes per element of the logits the loss is made from: lm_head's output in the compute
    dtype (under autocast too: ``nn.Linear`` runs in bf16 and transformers computes the loss
    inside ``forward``, before accelerate's ``convert_outputs_to_fp32`` sees the output), or
    fp32 when transformers <= 4.45 upcasts them in ``LlamaForCausalLM.forward``
    (``logits = logits.float()``, ``loss_path`` ``fp32-logits``)."""
    return 4 if spec.loss_path == "fp32-logits" else dt.act


def returned_logits_elem_bytes(spec: TrainingSpec, dt: Dtypes) -> int:
    """Bytes per element of the logits the model hands back to the loop: under autocast
    accelerate's ``convert_outputs_to_fp32`` (``utils/operations.py``, wrapped around
    ``forward`` by ``Accelerator.prepare_model``) returns them fp32."""
    return 4 if autocast_on(spec) else logits_elem_bytes(spec, dt)


def loss_forward_transient(arch: Architecture, spec: TrainingSpec, dt: Dtypes) -> int:
    """What the loss holds beside the logits and log_softmax's output while it is computed
    (``loss_path``):

    * ``padded-labels`` (transformers >= 4.49, ``loss/loss_utils.py`` ``ForCausalLMLoss`` pads
      the labels instead of shifting the logits): ``logits.float()``, a fp32 copy (none if the
      logits are fp32 already): 2 + 4 + 4 = 10 bytes per token and vocabulary entry over bf16
      logits;
    * ``shift-fp32-copy`` (4.46-4.48, ``ForCausalLMLoss``): that fp32 copy and its contiguous
      shifted copy ``logits[..., :-1, :].contiguous()``: 14;
    * ``fp32-logits`` (<= 4.45, ``LlamaForCausalLM.forward``): the model's logits are fp32 and
      the loss makes the shifted copy: 4 + 4 + 4 = 12.
    """
    elems = spec.tokens_per_micro_batch * vocab(arch, spec.added_tokens)
    upcast = 0 if logits_elem_bytes(spec, dt) == 4 else 4 * elems
    shifted = 4 * elems if spec.loss_path in ("shift-fp32-copy", "fp32-logits") else 0
    return upcast + shifted


def loss_backward_transient(arch: Architecture, spec: TrainingSpec) -> int:
    """First backward ops: nll_loss's dense fp32 gradient and log_softmax_backward's fp32 output."""
    return 8 * spec.tokens_per_micro_batch * vocab(arch, spec.added_tokens)


#: Stages of a decoder layer in forward order; backward frees their saved tensors in reverse.
LAYER_STAGES = ("input_norm", "qkv", "attn", "o", "post_attention_norm", "gate_up", "mlp", "down")


def stage_of(item: Saved) -> int:
    """Forward position of a saved layer tensor (-1: held until the layer's backward ends)."""
    return _stage_of_name(item.name)


@lru_cache(maxsize=1024)
def _stage_of_name(name: str) -> int:
    prefix = name.removeprefix("layer.").split(".")[0]
    return LAYER_STAGES.index(prefix) if prefix in LAYER_STAGES else -1


class BackwardMoment(NamedTuple):
    """A moment inside one decoder layer's backward: which saved tensors are already freed
    (stages from ``freed_from`` on) and the activation gradients alive then (``temporaries``)."""

    name: str
    freed_from: int
    temporaries: int
    also_freed: tuple[str, ...] = ()  # saved tensors of earlier stages already released


def layer_backward_moments(arch: Architecture, spec: TrainingSpec, dt: Dtypes) -> list[BackwardMoment]:
    """The two candidate peaks inside one layer's backward (autograd order is forward reversed).

    * MLP: ``down_proj``'s backward is done (its input freed); ``mul``/SiLU backward hold the
      gradient of down_proj's input and those of SiLU's output and up's output (3 x T x i),
      next to the residual-stream gradient (T x h);
    * attention: the MLP half and ``o_proj`` are done; the attention kernel's backward holds
      the gradient of its output and produces those of q, k and v (k/v at the heads the kernel
      saw); eager attention instead holds the score gradient in bf16 and fp32 (b x a x s x s).
    """
    b, s = spec.micro_batch_size, spec.seq_len
    tokens = b * s
    a, d = arch.num_attention_heads, arch.head_size
    resid_grad = dt.resid * tokens * arch.hidden_size
    mlp = BackwardMoment("mlp", LAYER_STAGES.index("down"), resid_grad + 3 * dt.act * tokens * arch.intermediate_size)
    kv_heads = a if (spec.attention == "eager" or (spec.attention == "sdpa" and spec.padding_mask)) else arch.kv_heads
    if spec.attention == "eager":
        # In the softmax's backward: matmul(p, v) is done (p released), the fp32 softmax output
        # is still saved; the score gradient exists in bf16 (from matmul), fp32 (after the cast
        # back) and bf16 again (softmax_backward_data returns the input dtype).
        scores = b * a * s * s
        attn_temp = dt.act * tokens * a * d + (4 + 2 * dt.act) * scores
        attn = BackwardMoment("attention", LAYER_STAGES.index("o"), resid_grad + attn_temp, ("attn.probs",))
    else:
        attn_temp = dt.act * tokens * (2 * a + 2 * kv_heads) * d
        attn = BackwardMoment("attention", LAYER_STAGES.index("o"), resid_grad + attn_temp)
    return [mlp, attn]


def layer_forward_moments(arch: Architecture, spec: TrainingSpec, dt: Dtypes) -> list[BackwardMoment]:
    """Candidate peaks inside one layer's forward: ``freed_from`` is the first stage not yet
    saved (-1: all saved), ``temporaries`` the bytes alive beyond what the layer saves.

    * MLP: with checkpointing nothing is saved, so the residual ``h1`` and its norm (2 x T x h)
      live next to three T x i tensors (SiLU output, up's output and their product; with LoRA
      on gate/up, inside up's adapter: SiLU output, frozen output, adapter output and its
      scaled copy, four). Without checkpointing the product (unless full fine-tuning saves it
      for down_proj) and down_proj's output are the only extras;
    * eager attention at the softmax: the masked bf16 scores and their fp32 copy (b x a x s x s
      each; the probabilities it will save are not made yet); with checkpointing also the fp32
      softmax output (not saved) and q, k, v and the repeated k/v as locals.
    """
    b, s = spec.micro_batch_size, spec.seq_len
    tokens = b * s
    th, ti = tokens * arch.hidden_size, tokens * arch.intermediate_size
    targets = _lora_targets(spec)
    if spec.grad_ckpt:
        wide = 4 if {"gate_proj", "up_proj"} & targets else 3
        out = [BackwardMoment("mlp", -1, 2 * dt.resid * th + wide * dt.act * ti)]
    else:
        out = [BackwardMoment("mlp", -1, (0 if spec.method == "full" else dt.act * ti) + dt.act * th)]
    if spec.attention == "eager":
        scores = b * arch.num_attention_heads * s * s
        if spec.grad_ckpt:
            q = dt.act * tokens * arch.num_attention_heads * arch.head_size
            kv = dt.act * tokens * arch.kv_heads * arch.head_size
            repeated = 2 * q if arch.kv_heads != arch.num_attention_heads else 0
            out.append(BackwardMoment("attention", -1, (dt.act + 8) * scores + dt.resid * th + q + 2 * kv + repeated))
        else:
            out.append(BackwardMoment("attention", LAYER_STAGES.index("o"), 4 * scores))
    return out


def recompute_end_bytes(arch: Architecture, spec: TrainingSpec, dt: Dtypes) -> tuple[int, int]:
    """(activations, temporaries) beyond the saved tensors at the end of a layer's re-run.

    Non-reentrant checkpointing re-runs a layer when its backward first needs a saved tensor
    and stops after the last one it needs (early stop), inside the forward: the MLP's locals are
    still alive then (the residual ``h1``; with LoRA on ``down_proj`` also ``act(gate) * up``
    and the frozen projection's output, since the re-run is triggered from inside the adapter's
    backward, where the output gradient and its scaled copy are held as well).
    """
    if not spec.grad_ckpt:
        return 0, 0
    tokens = spec.tokens_per_micro_batch
    th, ti = tokens * arch.hidden_size, tokens * arch.intermediate_size
    if "down_proj" in _lora_targets(spec):
        # ``act(gate) * up`` is a local unless the frozen down_proj keeps it (ZeRO-3); peft's
        # ``x = self._cast_input_dtype(x, lora_A.weight.dtype)`` is another when the adapter's
        # dtype differs and dropout makes lora_A's input a third tensor
        product = 0 if keeps_every_linear_input(spec) else dt.act * ti
        wider = not autocast_on(spec) and adapter_bytes_per_elem(spec) != dt.act
        cast = adapter_bytes_per_elem(spec) * ti if (spec.lora_dropout > 0 and wider) else 0
        return dt.resid * th + dt.act * th + product + cast, dt.resid * th + 2 * dt.act * th
    return dt.resid * th, dt.resid * th


def total(items: list[Saved]) -> int:
    return sum(x.bytes for x in items)
