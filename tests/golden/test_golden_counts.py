"""Golden tests: the planner's counts equal what transformers and peft build.

Expected values were counted once from the real libraries on meta-device models
(``python -m harness.golden --out tests/golden/reference_counts.json``; versions inside the
file) and are stored, so these tests need no torch. ``test_harness_live.py`` recounts live.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.catalog import architectures, find_model
from planner.formulas import checkpoint as ckpt
from planner.formulas import params as prm
from planner.schema.spec import LAYER_LINEARS, TrainingSpec

# The seed's three LoRA setups (shared/reference/seed_setup.md), r=8, alpha 16, dropout 0.05.
SETUPS = {
    "all_linear": dict(lora_targets=LAYER_LINEARS),
    "all_linear_embed_head": dict(lora_targets=LAYER_LINEARS + ("embed_tokens", "lm_head")),
    "qv_save_embed_head": dict(lora_targets=("q_proj", "v_proj"), modules_to_save=("embed_tokens", "lm_head")),
}
# How each stored state dict was taken, as our --save-embedding-layers mode.
SAVE_MODES = {
    "adapter_state_dict": "targets",  # get_peft_model_state_dict() on a model built from config
    "adapter_state_dict_save_embedding_layers_false": "none",
    "adapter_state_dict_auto_hub_loaded_base": "auto",  # hub-loaded base, vocabulary resized
}
LLAMA2 = ("llama-2-7b", "llama-2-13b", "llama-2-70b")
GOLDEN_DATA = json.loads((Path(__file__).parents[1] / "golden" / "reference_counts.json").read_text())


@pytest.mark.parametrize("name", [a.name for a in architectures()])
def test_parameter_count_equals_transformers(name, golden):
    assert prm.total_params(find_model(name)) == golden["parameter_counts"][name]


def test_every_catalog_model_has_a_golden_count(golden):
    assert {a.name for a in architectures()} == set(golden["parameter_counts"])


def test_llama2_7b_count_is_the_published_one():
    assert prm.total_params(find_model("7b")) == 6_738_415_616


@pytest.mark.parametrize("model", LLAMA2)
@pytest.mark.parametrize("vocab_key,added", [("vocab_32000", 0), ("vocab_32004", 4)])
def test_resized_base_count_equals_transformers(model, vocab_key, added, golden):
    assert prm.total_params(find_model(model), added) == golden["lora"][model][vocab_key]["base_parameters"]


def _setups(golden):
    for model in LLAMA2:
        for setup, rec in golden["lora"][model]["vocab_32004"]["setups"].items():
            for key, mode in SAVE_MODES.items():
                if key in rec:
                    yield pytest.param(model, setup, key, mode, id=f"{model}-{setup}-{mode}")


@pytest.mark.parametrize("model,setup,key,mode", list(_setups(GOLDEN_DATA)))
def test_adapter_bytes_equal_peft_state_dict(model, setup, key, mode, golden):
    """Adapter size = bytes of the tensors peft's get_peft_model_state_dict returns (what
    save_pretrained writes), with peft's defaults: fp32 A/B, bf16 base tensors."""
    rec = golden["lora"][model]["vocab_32004"]["setups"][setup]
    spec = TrainingSpec(method="lora", added_tokens=4, adapter_dtype="fp32", save_embedding_layers=mode, **SETUPS[setup])
    got = ckpt.adapter_bytes(find_model(model), spec)
    want = rec[key]
    assert got.total == want["total_bytes"]
    cats = want["by_category"]
    assert got.lora_bytes == cats["lora"]["bytes"]
    assert got.modules_to_save_bytes == cats.get("modules_to_save", {}).get("bytes", 0)
    assert got.embedding_layers_bytes == cats.get("embedding_layers", {}).get("bytes", 0)


@pytest.mark.parametrize("model", LLAMA2)
@pytest.mark.parametrize("setup", list(SETUPS))
def test_trainable_parameters_equal_peft(model, setup, golden):
    rec = golden["lora"][model]["vocab_32004"]["setups"][setup]
    a = find_model(model)
    s = TrainingSpec(method="lora", added_tokens=4, **SETUPS[setup])
    trainable = prm.lora_params(a, s.lora_targets, 8, 4) + prm.modules_to_save_params(a, s.modules_to_save, 4)
    assert trainable == rec["trainable_parameters"]
    # peft's "all" counts the frozen base, the adapters and the trainable copies
    assert prm.total_params(a, 4) + trainable == rec["all_parameters"]


def test_all_linear_means_the_seven_projections_at_r64(golden):
    rec = golden["lora_variants"]["llama-2-7b"]["all_linear_string_r64"]
    assert prm.lora_params(find_model("7b"), LAYER_LINEARS, 64, 4) == rec["trainable_parameters"] == 159_907_840


def test_llama2_7b_bf16_weights_bytes():
    spec = TrainingSpec(method="full", precision="bf16-mixed")
    assert ckpt.model_weights_bytes(find_model("7b"), spec) == 13_476_831_232
