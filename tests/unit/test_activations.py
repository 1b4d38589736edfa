"""Hand-worked activation inventories (Llama 2 7B: h=4096, i=11008, a=32, d=128)."""

from __future__ import annotations

from planner.catalog import find_model
from planner.formulas import activations as act
from planner.formulas.dtypes import PRECISIONS
from planner.schema.spec import TrainingSpec

A7 = find_model("7b")
A70 = find_model("70b")
BF16 = PRECISIONS["bf16-mixed"]
T = 2 * 512  # micro batch 2 x sequence 512
TH, TI = T * 4096, T * 11008


def layer(spec: TrainingSpec, arch=A7, dt=BF16) -> dict[str, int]:
    return {x.name: x.bytes for x in act.layer_inventory(arch, spec, dt)}


def test_full_finetuning_sdpa_layer_is_24Th_plus_8Ti_bytes():
    inv = layer(TrainingSpec(method="full", micro_batch_size=2, seq_len=512, attention="sdpa"))
    # two norms: fp32 upcast (4Th) + normalized (2Th) each; inputs of qkv and gate/up (2Th each);
    # sdpa keeps q, k, v and its output (4 x 2Th), which is also what o_proj keeps; an fp32
    # logsumexp (4*b*a*s); the MLP keeps gate, silu, up and the down input (4 x 2Ti).
    lse = 4 * 2 * 32 * 512
    assert sum(inv.values()) == 24 * TH + 8 * TI + lse == 190_971_904
    assert inv["qkv.input"] == 2 * TH and inv["down.input"] == 2 * TI and "o.input" not in inv


def test_eager_attention_output_is_copied_for_o_proj():
    inv = layer(TrainingSpec(method="full", micro_batch_size=2, seq_len=512, attention="eager"))
    assert inv["o.input"] == 2 * TH


def test_lora_dropout_keeps_a_copy_and_mask_per_target():
    """peft applies its own nn.Dropout per target: each keeps a dropped copy (here bf16, the
    adapters cast by DeepSpeed under ZeRO-2) and a bool mask (1 byte) of its input; lora_A's
    output (T x r) is kept for lora_B."""
    spec = TrainingSpec(method="lora", micro_batch_size=2, seq_len=512, lora_dropout=0.05, zero_stage=2)
    inv = layer(spec)
    assert inv["qkv.q_proj.lora_dropout_mask"] == TH and inv["qkv.q_proj.lora_input"] == 2 * TH
    assert inv["down.down_proj.lora_input"] == 2 * TI
    lse, lora_outs = 4 * 2 * 32 * 512, 7 * 2 * T * 8
    # norms 2 x 4Th (frozen weights: no normalized copy); qkv 3 x 3Th; attention 4 x 2Th; o 3Th;
    # gate/up 2 x 3Th; MLP 3 x 2Ti; down 3Ti.
    assert sum(inv.values()) == 34 * TH + 9 * TI + lse + lora_outs == 244_301_824
    full = layer(TrainingSpec(method="full", micro_batch_size=2, seq_len=512))
    assert sum(inv.values()) > sum(full.values())  # dropout makes LoRA's layer larger than full's


def test_fp32_adapters_under_zero3_keep_fp32_inputs():
    """Under ZeRO-3 DeepSpeed leaves peft's fp32 adapters uncast: each target casts X to fp32."""
    spec = TrainingSpec(method="lora", micro_batch_size=2, seq_len=512, lora_dropout=0.05, zero_stage=3)
    inv = layer(spec)
    assert inv["qkv.q_proj.lora_input"] == 4 * TH and inv["qkv.q_proj.lora_A_out"] == 4 * T * 8
    lse, lora_outs = 4 * 2 * 32 * 512, 7 * 4 * T * 8
    # per target 1 (mask) + 4 (fp32 copy) bytes per input element; ZeRO-3's linear keeps the
    # frozen projections' inputs too (qkv and gate/up 2Th each, down 2Ti; o_proj's is sdpa's output)
    assert sum(inv.values()) == (8 + 15 + 8 + 5 + 10 + 4) * TH + (6 + 5 + 2) * TI + lse + lora_outs
    no_dropout = layer(spec.model_copy(update={"lora_dropout": 0.0}))
    assert no_dropout["qkv.v_proj.lora_input"] == 4 * TH and "qkv.v_proj.lora_dropout_mask" not in no_dropout


def test_lora_without_dropout_shares_the_input_and_keeps_less_than_full():
    inv = layer(TrainingSpec(method="lora", micro_batch_size=2, seq_len=512, lora_dropout=0.0, zero_stage=2))
    assert inv["qkv.input"] == 2 * TH and "qkv.q_proj.lora_input" not in inv
    full = layer(TrainingSpec(method="full", micro_batch_size=2, seq_len=512))
    assert sum(full.values()) - sum(inv.values()) == 2 * 2 * TH - 7 * 2 * T * 8  # two normalized copies vs lora_A outputs


def test_frozen_projection_without_lora_keeps_nothing_of_its_input():
    inv = layer(
        TrainingSpec(method="lora", micro_batch_size=2, seq_len=512, lora_targets=("q_proj", "v_proj"), lora_dropout=0.0, zero_stage=2)
    )
    assert "o.input" not in inv and "down.input" not in inv and "gate_up.input" not in inv
    assert inv["qkv.input"] == 2 * TH


def test_eager_attention_keeps_fp32_scores_and_bf16_probabilities():
    inv = layer(TrainingSpec(method="full", micro_batch_size=1, seq_len=1024, attention="eager"))
    assert inv["attn.softmax_fp32"] == 4 * 32 * 1024 * 1024 == 134_217_728
    assert inv["attn.probs"] == 2 * 32 * 1024 * 1024


def test_flash_attention_keeps_grouped_kv_unrepeated():
    inv = layer(TrainingSpec(method="full", micro_batch_size=1, seq_len=4096, attention="flash"), arch=A70)
    assert inv["attn.q_rope"] == 2 * 4096 * 64 * 128
    assert inv["attn.k_rope"] == inv["attn.v"] == 2 * 4096 * 8 * 128  # 8 kv heads: 8x smaller than q
    sdpa = layer(TrainingSpec(method="full", micro_batch_size=1, seq_len=4096, attention="sdpa"), arch=A70)
    assert sdpa["attn.k"] == inv["attn.q_rope"]  # transformers repeats k/v for SDPA with a padding mask
    unpadded = layer(TrainingSpec(method="full", micro_batch_size=1, seq_len=4096, attention="sdpa", padding_mask=False), arch=A70)
    assert unpadded["attn.k"] == unpadded["attn.v"] == inv["attn.k_rope"]  # without one, the GQA kernel path


def test_logits_and_fp32_loss_upcast():
    spec = TrainingSpec(method="lora", micro_batch_size=8, seq_len=512)
    items = {x.name: x.bytes for x in act.model_level_saved(A7, spec, BF16)}
    tokens = 8 * 512
    assert items["logits"] == 2 * tokens * 32000 and items["log_softmax_fp32"] == 4 * tokens * 32000
    assert act.loss_forward_transient(A7, spec, BF16) == 4 * tokens * 32000
    assert act.loss_forward_transient(A7, spec, PRECISIONS["fp32"]) == 0  # logits already fp32


def test_checkpointing_keeps_only_the_layer_input():
    spec = TrainingSpec(method="full", micro_batch_size=2, seq_len=512)
    assert act.layer_checkpoint_input(A7, spec, BF16).bytes == 2 * TH
    assert act.layer_checkpoint_input(A7, spec, PRECISIONS["amp-bf16"]).bytes == 4 * TH  # fp32 residual stream


def test_amp_keeps_bf16_weight_casts_and_per_consumer_input_casts():
    inv = layer(TrainingSpec(method="full", precision="amp-bf16", micro_batch_size=2, seq_len=512), dt=PRECISIONS["amp-bf16"])
    per_layer_linear_weights = 4 * 4096 * 4096 + 3 * 4096 * 11008
    assert inv["autocast_weight_casts"] == 2 * per_layer_linear_weights
    # the fp32 norm output is cast to bf16 separately by q, k and v
    assert inv["qkv.q_proj.input_cast"] == inv["qkv.k_proj.input_cast"] == 2 * TH


def test_zero3_linear_keeps_the_inputs_of_frozen_projections():
    """DeepSpeed's LinearFunctionForZeroStage3 saves its input whatever is trainable; the same
    LoRA under ZeRO-2 keeps none of them, and FSDP2 (torch's linear) none either."""
    spec = TrainingSpec(method="lora", micro_batch_size=2, seq_len=512, zero_stage=3)
    inv = layer(spec)
    assert inv["qkv.input"] == inv["gate_up.input"] == 2 * TH and inv["down.input"] == 2 * TI
    assert "o.input" not in inv  # o_proj reads the kernel's own output (attn.sdpa_out)
    plain = spec.model_copy(update={"deepspeed": spec.deepspeed.model_copy(update={"memory_efficient_linear": False})})
    for other in (spec.model_copy(update={"zero_stage": 2}), spec.model_copy(update={"sharding": "fsdp2", "offload": "none"}), plain):
        assert not {"qkv.input", "gate_up.input", "down.input"} & set(layer(other))
    model = {x.name: x.bytes for x in act.model_level_saved(A7, spec, BF16)}
    assert model["lm_head.input"] == 2 * TH  # the frozen head keeps the final norm's output


def test_first_layer_keeps_no_mask_or_norm_input_when_nothing_needs_its_input_gradient():
    """Frozen embeddings and no checkpointing: the first layer's input needs no gradient, so its
    input norm keeps nothing and the q/k/v dropouts keep no mask (ZeRO-3: no frozen input)."""
    spec = TrainingSpec(method="lora", micro_batch_size=2, seq_len=512, zero_stage=2, grad_ckpt=False)
    # fp32 norm input 4Th; three bool masks Th each
    assert act.first_layer_unsaved_bytes(A7, spec, BF16) == 4 * TH + 3 * TH
    z3 = spec.model_copy(update={"zero_stage": 3})
    assert act.first_layer_unsaved_bytes(A7, z3, BF16) == 4 * TH + 3 * TH + 2 * TH
    # checkpointing makes transformers/peft ask for the embedding output's gradient; full
    # fine-tuning or a trained embedding needs it anyway
    for needs in ({"grad_ckpt": True}, {"method": "full"}, {"modules_to_save": ("embed_tokens",)}):
        assert act.first_layer_unsaved_bytes(A7, spec.model_copy(update=needs), BF16) == 0


def test_recompute_end_keeps_the_down_inputs_fp32_cast_under_zero3():
    """At the end of a LoRA layer's re-run, inside down_proj's adapter: the residual h1, the
    frozen projection's output and, when the adapter is wider than the input, peft's cast of it
    (``act(gate) * up`` itself is a saved input under ZeRO-3, a local otherwise)."""
    z2 = TrainingSpec(method="lora", micro_batch_size=2, seq_len=512, zero_stage=2)
    z3 = z2.model_copy(update={"zero_stage": 3})
    assert act.recompute_end_bytes(A7, z2, BF16) == (2 * TH + 2 * TH + 2 * TI, 2 * TH + 4 * TH)
    assert act.recompute_end_bytes(A7, z3, BF16) == (2 * TH + 2 * TH + 4 * TI, 2 * TH + 4 * TH)


def test_first_layer_keeps_x_when_lora_a_reads_it_itself():
    """Without dropout or a cast the LoRA targets read X itself: its weight gradient needs X, so
    only the norm's fp32 input goes."""
    spec = TrainingSpec(method="lora", micro_batch_size=2, seq_len=512, zero_stage=2, grad_ckpt=False, lora_dropout=0.0)
    spec = spec.model_copy(update={"adapter_dtype": "bf16"})
    assert "qkv.input" in layer(spec)
    assert act.first_layer_unsaved_bytes(A7, spec, BF16) == 4 * TH
