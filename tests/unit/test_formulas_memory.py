"""The memory formulas worked by hand on a tiny Llama.

TINY: h=8, i=16, 2 layers, 2 heads of 4, 1 k/v head (k/v out 4), vocab 32, no biases.
Per layer: q 8x8=64, k 8x4=32, v 8x4=32, o 8x8=64, gate 8x16=128, up 8x16=128, down 16x8=128
(576 weights) + two RMSNorms of 8 = 592. Embedding 32x8=256, lm_head 256, final norm 8:
total 256 + 2x592 + 8 + 256 = 1704. ZeRO-3's default persistence threshold is 10h = 80 elements.
"""

from __future__ import annotations

from planner.formulas import allocator, counts, fsdp, grads, params, zero
from planner.formulas.dtypes import FSDP2_MIXED, PRECISIONS, optimizer_state_bytes, spec_dtypes
from planner.schema.catalog import Architecture
from planner.schema.memory import CATEGORIES, GPU_PHASES, HOST_PHASES, MEASURED_PHASES, Split
from planner.schema.spec import DeepSpeedConfig, TrainingSpec
from planner.units import MIB

TINY = Architecture(
    name="tiny",
    model_type="llama",
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=32,
)
TIED = TINY.model_copy(update={"tie_word_embeddings": True})

FULL = TrainingSpec(method="full", precision="bf16-mixed", zero_stage=3)  # 2-byte weights and grads
#: LoRA r=2 on q and v: q A 2x8 + B 8x2 = 32, v A 2x8 + B 4x2 = 24, so 56 per layer; under ZeRO-3
#: the adapters stay fp32 (4 bytes).
LORA_QV = TrainingSpec(method="lora", lora_rank=2, lora_targets=("q_proj", "v_proj"), zero_stage=3)


def test_the_tiny_model_counts_as_the_docstring_says():
    assert params.layer_params(TINY) == 592
    assert params.total_params(TINY) == 1704


# --- grads.py ----------------------------------------------------------------------------------


def test_full_layer_gradients_by_stage():
    # q, k, v: (64 + 32 + 32) x 2 bytes = 256
    assert grads.layer_grad_bytes(TINY, FULL, ("qkv",)) == 256
    # plus input_norm's weight: (128 + 8) x 2 = 272
    assert grads.layer_grad_bytes(TINY, FULL, ("input_norm", "qkv")) == 272
    # gate + up: (128 + 128) x 2 = 512
    assert grads.layer_grad_bytes(TINY, FULL, ("gate_up",)) == 512
    # every stage: the whole layer, 592 x 2 = 1184
    assert grads.layer_grad_bytes(TINY, FULL, ("input_norm", "qkv", "attn", "o", "post_attention_norm", "gate_up", "mlp", "down")) == 1184


def test_lora_layer_gradients_are_only_the_adapters_of_the_stage():
    # q (32) + v (24) = 56 elements x 4 bytes (fp32 adapters under ZeRO-3) = 224
    assert grads.layer_grad_bytes(TINY, LORA_QV, ("qkv",)) == 224
    # o_proj is not a target: nothing
    assert grads.layer_grad_bytes(TINY, LORA_QV, ("o",)) == 0
    # ZeRO-2 casts the adapters to bf16: 56 x 2 = 112
    assert grads.layer_grad_bytes(TINY, LORA_QV.model_copy(update={"zero_stage": 2}), ("qkv",)) == 112


def test_every_projection_has_a_stage():
    assert set(grads.LINEAR_STAGE) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert grads.LINEAR_STAGE["down_proj"] == "down" and grads.LINEAR_STAGE["up_proj"] == "gate_up"


def test_embedding_gradients():
    # full: 32 x 8 x 2 bytes = 512; four added tokens: 36 x 8 x 2 = 576
    assert grads.embedding_grad_bytes(TINY, FULL) == 512
    assert grads.embedding_grad_bytes(TINY, FULL.model_copy(update={"added_tokens": 4})) == 576
    # a frozen embedding under LoRA: none
    assert grads.embedding_grad_bytes(TINY, LORA_QV) == 0
    # a LoRA embedding: A 2x32 + B 8x2 = 80 elements x 4 bytes (fp32) = 320
    lora_emb = LORA_QV.model_copy(update={"lora_targets": ("q_proj", "embed_tokens")})
    assert grads.embedding_grad_bytes(TINY, lora_emb) == 320
    # a trainable copy (modules_to_save) in the gradient dtype: 256 x 2 = 512
    assert grads.embedding_grad_bytes(TINY, LORA_QV.model_copy(update={"modules_to_save": ("embed_tokens",)})) == 512


# --- counts.py ---------------------------------------------------------------------------------


def test_param_counts_of_full_fine_tuning():
    pc = counts.count_params(TINY, FULL)
    assert (pc.total, pc.trainable, pc.frozen, pc.lora) == (1704, 1704, 0, 0)
    assert pc.weights_bytes == 3408  # 1704 x 2
    assert pc.grad_bytes_total == 3408  # 1704 x 2
    assert pc.grad_bytes_per_layer == 1184  # 592 x 2
    # what backward makes before the layers: lm_head + final norm, (256 + 8) x 2 = 528
    # (= 3408 - 2 x 1184 - the embedding's 512)
    assert pc.grad_bytes_head == 528
    # the persisted small tensors: 2 norms x 2 layers + the final norm, 5 x 8 = 40 elements x 2 = 80
    assert pc.persistent_bytes == 80
    # the largest module: the embedding, 256 x 2 = 512 (the largest projection is 128 x 2 = 256)
    assert pc.largest_module_bytes == 512


def test_param_counts_of_lora():
    pc = counts.count_params(TINY, LORA_QV)
    # 2 layers x 56 = 112 adapter elements
    assert (pc.lora, pc.trainable, pc.frozen, pc.total) == (112, 112, 1704, 1816)
    # frozen bf16 base 1704 x 2 = 3408, fp32 adapters 112 x 4 = 448: 3856
    assert pc.weights_bytes == 3856
    assert pc.grad_bytes_per_layer == 224  # 56 x 4
    assert pc.grad_bytes_total == 448  # 112 x 4
    assert pc.grad_bytes_head == 0  # 448 - 2 x 224
    # norms 40 x 2 = 80, and every A/B is under 80 elements (16, 16, 16, 8), 2 x 56 x 4 = 448: 528
    assert pc.persistent_bytes == 528


# --- fsdp.py -----------------------------------------------------------------------------------


def test_fsdp2_terms_of_full_fine_tuning():
    spec = FULL.model_copy(update={"sharding": "fsdp2", "offload": "none"})
    t = fsdp.fsdp2_terms(TINY, spec)
    assert t.root == 1040  # embedding 256 + lm_head 256 + final norm 8 = 520 elements x 2 (bf16 compute)
    assert t.layer == 1184  # 592 x 2
    assert t.reduce_scatter == 2368  # 592 x 4: reduce_dtype fp32 under bf16-mixed
    assert t.root_grad == 528  # lm_head + final norm, 264 x 2
    assert t.root_grad_all == 1040  # 520 x 2
    assert t.root_reduce_scatter == 2080  # 520 x 4


def test_fsdp2_terms_of_lora_with_a_saved_head():
    spec = LORA_QV.model_copy(update={"sharding": "fsdp2", "offload": "none", "modules_to_save": ("lm_head",)})
    t = fsdp.fsdp2_terms(TINY, spec)
    assert t.layer == 1296  # (592 + 56 adapter elements) x 2
    assert t.root == 1552  # (520 + the saved lm_head copy 256) x 2
    assert t.reduce_scatter == 224  # 56 x 4
    assert (t.root_grad, t.root_grad_all, t.root_reduce_scatter) == (512, 512, 1024)  # 256 x 2, 256 x 2, 256 x 4


def test_fsdp2_pure_bf16_reduces_in_bf16():
    spec = FULL.model_copy(update={"sharding": "fsdp2", "offload": "none", "precision": "bf16"})
    assert fsdp.fsdp2_terms(TINY, spec).reduce_scatter == 1184  # 592 x 2


# --- zero.py -----------------------------------------------------------------------------------


def test_zero3_releases_the_frozen_embedding_after_forward():
    spec = LORA_QV.model_copy(update={"grad_ckpt": False})
    # nothing asks for the embedding output's gradient: the embedding (256 > 80 elements, x 2
    # bytes = 512) goes after forward; q/k/v (64, 32, 32) are all persisted; lm_head 256 x 2 = 512
    assert zero.zero3_released_bytes(TINY, spec, 2) == (512, 512)
    # threshold 40: q (64 elements, x 2 = 128) is released too; k and v (32) stay
    low = spec.model_copy(update={"deepspeed": DeepSpeedConfig(stage3_param_persistence_threshold=40)})
    assert zero.zero3_released_bytes(TINY, low, 2) == (640, 512)
    # tied: the embedding is lm_head, used again in backward; only q goes
    assert zero.zero3_released_bytes(TIED, low, 2) == (128, 0)
    # checkpointing asks for the embedding output's gradient: only lm_head goes early
    assert zero.zero3_released_bytes(TINY, low.model_copy(update={"grad_ckpt": True}), 2) == (0, 512)


def test_allreduce_copy_is_capped_at_5e8_elements():
    assert zero.allreduce_copy_bytes(1000, 2) == 1000
    assert zero.allreduce_copy_bytes(3_000_000_000, 2) == 1_000_000_000  # 5e8 x 2 bytes


def test_offloaded_optimizer_bytes_per_element():
    assert zero.offloaded_optimizer_bytes_per_elem(2, 2) == 16  # 4 master + 8 moments + 4 fp32 grad
    assert zero.offloaded_optimizer_bytes_per_elem(3, 2) == 18  # + ZeRO-3's 16-bit grad partition


# --- params.py ---------------------------------------------------------------------------------


def test_largest_trainable_tensor():
    # full: the embedding's 512 bytes / 2 = 256 elements
    assert params.largest_trainable_elems(TINY, FULL, 1704, 512, 2) == 256
    # LoRA on q and v: q's A + B, 32 elements
    assert params.largest_trainable_elems(TINY, LORA_QV, 112, 0, 2) == 32
    # a saved embedding copy: 32 x 8 = 256 elements
    saved = LORA_QV.model_copy(update={"modules_to_save": ("embed_tokens",)})
    assert params.largest_trainable_elems(TINY, saved, 368, 0, 2) == 256
    # never more than all that trains
    assert params.largest_trainable_elems(TINY, LORA_QV, 20, 0, 2) == 20


def test_qlora_dequantizes_the_largest_projection():
    assert params.qlora_dequant_bytes(TINY, 2) == 256  # gate/up/down: 128 elements x 2 bytes


def test_nf4_and_8bit_states_round_blocks_up():
    # 128 weights: 64 bytes of 4-bit codes + ceil(128 / 64) = 2 fp32 absmax = 72
    assert params.nf4_tensor_bytes(128, False) == 72
    # double quantization: 64 + 2 one-byte absmax + ceil(2 / 256) = 1 fp32 scale + 256-entry code book + offset
    assert params.nf4_tensor_bytes(128, True) == 64 + 2 + 4 + 1024 + 4 == 1098
    # 8-bit Adam, 300 elements: ceil(300 / 256) = 2 blocks; 2 moments x (300 + 2 x 4) = 616
    assert optimizer_state_bytes("adamw8bit", PRECISIONS["bf16-mixed"], 300) == 616


# --- dtypes.py and allocator.py ----------------------------------------------------------------


def test_fsdp2_mixed_precision_keeps_fp32_shards():
    assert spec_dtypes(FULL.model_copy(update={"sharding": "fsdp2", "offload": "none"})) is FSDP2_MIXED
    assert spec_dtypes(FULL).weight == 2 and FSDP2_MIXED.weight == 4


def test_reserved_memory_rounds_up_to_2_mib():
    # 3 MiB + 10 % (314,572 bytes, truncated) = 3,460,300 -> 2 x 2 MiB = 4,194,304
    assert allocator.reserved_bytes(3 * MIB, 0.1) == 4_194_304
    assert allocator.reserved_bytes(2 * MIB, 0.0) == 2_097_152  # already a multiple
    assert allocator.reserved_bytes(1, 0.0) == 2_097_152


# --- schema/memory.py --------------------------------------------------------------------------


def test_the_vocabulary():
    assert CATEGORIES == ("parameters", "gradients", "optimizer_states", "activations", "temporaries")
    assert GPU_PHASES == ("forward", "backward", "optimizer_step", "checkpoint_save")
    assert MEASURED_PHASES == GPU_PHASES[:3]
    assert HOST_PHASES == ("model_load", "train", "checkpoint_save")


def test_split_total_and_its_json_keys():
    s = Split(1, 2, 3, 4, 5)
    assert s.total == 15
    assert s.json_fields() == {
        "parameters_bytes": 1,
        "gradients_bytes": 2,
        "optimizer_states_bytes": 3,
        "activations_bytes": 4,
        "temporaries_bytes": 5,
    }
