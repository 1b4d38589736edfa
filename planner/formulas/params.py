"""Parameter counts of a Llama-family decoder, of LoRA adapters, and of a 4-bit base.

Shapes follow transformers' ``modeling_llama.py`` / ``modeling_mistral.py`` /
``modeling_qwen2.py`` (LlamaAttention, LlamaMLP, LlamaRMSNorm) and peft's ``tuners/lora/layer.py``
(Linear: ``lora_A`` r x in, ``lora_B`` out x r; Embedding: ``lora_embedding_A`` r x vocab,
``lora_embedding_B`` hidden x r). Golden tests compare every count here with what
transformers and peft build (``harness/golden.py``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from planner.schema.catalog import Architecture
from planner.schema.spec import LAYER_LINEARS, TrainingSpec
from planner.units import ceil_div


class LinearShape(NamedTuple):
    in_features: int
    out_features: int
    bias: bool

    @property
    def weight_numel(self) -> int:
        return self.in_features * self.out_features

    @property
    def numel(self) -> int:
        return self.weight_numel + (self.out_features if self.bias else 0)


_LINEARS: dict[int, tuple[Architecture, dict[str, LinearShape]]] = {}


def layer_linears(arch: Architecture) -> dict[str, LinearShape]:
    """The seven projections of one decoder layer: name -> (in, out, bias). Shared: do not mutate."""
    hit = _LINEARS.get(id(arch))
    if hit is not None and hit[0] is arch:
        return hit[1]
    if len(_LINEARS) > 1024:
        _LINEARS.clear()
    shapes = _layer_linears(
        arch.hidden_size,
        arch.intermediate_size,
        arch.num_attention_heads,
        arch.kv_heads,
        arch.head_size,
        (arch.qkv_bias, arch.o_bias, arch.mlp_bias),
    )
    _LINEARS[id(arch)] = (arch, shapes)
    return shapes


@lru_cache(maxsize=256)
def _layer_linears(h: int, i: int, heads: int, kv_heads: int, head_size: int, bias: tuple[bool, bool, bool]) -> dict[str, LinearShape]:
    qkv_bias, o_bias, mlp_bias = bias
    q_out = heads * head_size  # (b, s, a*d)
    kv_out = kv_heads * head_size  # (b, s, kv*d): fewer with grouped-query attention
    return {
        "q_proj": LinearShape(h, q_out, qkv_bias),
        "k_proj": LinearShape(h, kv_out, qkv_bias),
        "v_proj": LinearShape(h, kv_out, qkv_bias),
        "o_proj": LinearShape(q_out, h, o_bias),
        "gate_proj": LinearShape(h, i, mlp_bias),
        "up_proj": LinearShape(h, i, mlp_bias),
        "down_proj": LinearShape(i, h, mlp_bias),
    }


def vocab(arch: Architecture, added_tokens: int = 0) -> int:
    """Rows of the embedding after ``resize_token_embeddings(vocab + added)`` (no padding
    to a multiple: transformers' default ``pad_to_multiple_of=None``)."""
    return arch.vocab_size + added_tokens


def layer_params(arch: Architecture) -> int:
    """One decoder layer: seven projections plus two RMSNorm weights of size h."""
    return sum(s.numel for s in layer_linears(arch).values()) + 2 * arch.hidden_size


def embedding_params(arch: Architecture, added_tokens: int = 0) -> int:
    return vocab(arch, added_tokens) * arch.hidden_size


def lm_head_params(arch: Architecture, added_tokens: int = 0) -> int:
    """Zero when tied to the input embedding (counted once, as ``model.parameters()`` does)."""
    return 0 if arch.tie_word_embeddings else vocab(arch, added_tokens) * arch.hidden_size


def total_params(arch: Architecture, added_tokens: int = 0) -> int:
    """``sum(p.numel() for p in model.parameters())`` of ``AutoModelForCausalLM``."""
    return (
        embedding_params(arch, added_tokens)
        + arch.num_hidden_layers * layer_params(arch)
        + arch.hidden_size  # final norm
        + lm_head_params(arch, added_tokens)
    )


def linear_weight_params(arch: Architecture) -> int:
    """Weights of all layer projections (what bitsandbytes quantizes for QLoRA)."""
    return arch.num_hidden_layers * sum(s.weight_numel for s in layer_linears(arch).values())


# --- LoRA --------------------------------------------------------------------------------------


def lora_module_params(arch: Architecture, module: str, rank: int, added_tokens: int = 0) -> int:
    """A and B of one LoRA-wrapped module: ``r * (in + out)`` (peft LoRA Linear/Embedding)."""
    if module in LAYER_LINEARS:
        s = layer_linears(arch)[module]
        return rank * (s.in_features + s.out_features)
    # embed_tokens: lora_embedding_A (r, vocab) + lora_embedding_B (h, r); lm_head is a Linear h -> vocab.
    return rank * (vocab(arch, added_tokens) + arch.hidden_size)


def lora_params(arch: Architecture, targets: tuple[str, ...], rank: int, added_tokens: int = 0) -> int:
    """All LoRA A/B parameters: layer projections repeat per layer, embeddings once."""
    per_layer = sum(lora_module_params(arch, t, rank) for t in targets if t in LAYER_LINEARS)
    once = sum(lora_module_params(arch, t, rank, added_tokens) for t in targets if t not in LAYER_LINEARS)
    return arch.num_hidden_layers * per_layer + once


def modules_to_save_params(arch: Architecture, modules: tuple[str, ...], added_tokens: int = 0) -> int:
    """peft ``ModulesToSaveWrapper`` keeps a trainable full copy of each listed module."""
    return sum(vocab(arch, added_tokens) * arch.hidden_size for m in modules if m in ("embed_tokens", "lm_head"))


def max_lora_rank(arch: Architecture, targets: tuple[str, ...]) -> int:
    """The smallest ``min(in, out)`` over the targets: a rank above it cannot add capacity."""
    dims = [min(s.in_features, s.out_features) for n, s in layer_linears(arch).items() if n in targets]
    if any(t not in LAYER_LINEARS for t in targets):
        dims.append(arch.hidden_size)
    return min(dims)


def largest_trainable_elems(arch: Architecture, spec: TrainingSpec, trainable: int, largest_module_bytes: int, weight_bytes: int) -> int:
    """Elements of the largest trainable tensor: a whole module's weight in full fine-tuning
    (the embedding or the largest projection: ``largest_module_bytes / weight_bytes``), else the
    largest LoRA module's A + B (``r * (in + out)``, an upper bound on either) or a module kept
    whole for saving (vocab x hidden), at most all ``trainable`` elements. What DeepSpeed's
    FP16_UnfusedOptimizer steps at once (deepspeed/runtime/fp16/unfused_optimizer.py: one fp32
    master at a time)."""
    if spec.method == "full":
        return largest_module_bytes // weight_bytes
    lora = max((lora_module_params(arch, t, spec.lora_rank) for t in spec.lora_targets if t in LAYER_LINEARS), default=0)
    whole = max((arch.vocab_size * arch.hidden_size for t in spec.modules_to_save if t in ("embed_tokens", "lm_head")), default=0)
    return min(trainable, max(lora, whole))


# --- QLoRA (bitsandbytes NF4) ------------------------------------------------------------------

NF4_BLOCK = 64  # bitsandbytes Linear4bit default blocksize (bnb/nn/modules.py Params4bit)
DQ_BLOCK = 256  # double quantization groups 256 absmax values (QLoRA paper, Dettmers et al. 2023, §3)


def nf4_tensor_bytes(numel: int, double_quant: bool) -> int:
    """One NF4 weight: packed 4-bit data plus its quantization constants.

    Data: ``numel / 2`` bytes (two 4-bit codes per uint8). Constants per block of 64: an fp32
    absmax (4 bytes), or with double quantization an 8-bit absmax plus one fp32 scale per 256
    blocks and the 256-entry fp32 code book and an fp32 offset per tensor
    (bitsandbytes ``functional.quantize_4bit``; QLoRA paper §3: 0.5 -> 0.127 bits/param).
    """
    blocks = ceil_div(numel, NF4_BLOCK)
    data = ceil_div(numel, 2)
    if not double_quant:
        return data + 4 * blocks
    return data + blocks + 4 * ceil_div(blocks, DQ_BLOCK) + 4 * 256 + 4


def qlora_linear_bytes(arch: Architecture, double_quant: bool) -> int:
    """All quantized layer projections; biases, norms, embeddings and lm_head stay 16-bit
    (transformers' bnb integration skips the output layer)."""
    per_layer = sum(nf4_tensor_bytes(s.weight_numel, double_quant) for s in layer_linears(arch).values())
    return arch.num_hidden_layers * per_layer


def qlora_dequant_bytes(arch: Architecture, act_bytes: int) -> int:
    """bitsandbytes dequantizes one NF4 weight to the compute dtype for each matmul
    (``bnb.functional.dequantize_4bit`` inside ``MatMul4Bit``): the largest projection's
    weight, ``act_bytes`` per element, is the buffer alive at a time."""
    return max(s.weight_numel for s in layer_linears(arch).values()) * act_bytes
