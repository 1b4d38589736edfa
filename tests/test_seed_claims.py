"""Claims of the source document (shared/seed) and of the Ray template behind it
(shared/reference/seed_setup.md, published_measurements.jsonl), each a test case."""

from __future__ import annotations

import pytest

from planner.catalog import find_gpu, find_instance, find_model
from planner.formulas import checkpoint as ckpt
from planner.formulas import params as prm
from planner.plan import build_plan
from planner.spec import EMBEDDING_MODULES, LAYER_LINEARS, TrainingSpec

# The seed's "all layers" LoRA (r=8, alpha 16 on all linear layers plus embed_tokens and
# lm_head, 32004 tokens), saved in bf16 by the peft of Sept 2023 (A/B plus the added rows).
SEED_LORA = TrainingSpec(
    method="lora",
    lora_targets=LAYER_LINEARS + EMBEDDING_MODULES,
    added_tokens=4,
    adapter_dtype="bf16",
    save_embedding_layers="rows",
)
P4DE = find_instance("p4de.24xlarge")


def seed_spec(model: str, method: str) -> TrainingSpec:
    """The seed's DeepSpeed configs: 7B/13B offload optimizer and parameters, 70B only the optimizer."""
    offload = "optimizer" if model == "70b" else "all"
    return SEED_LORA.model_copy(update={"method": method, "offload": offload, "gpus_per_node": 8})


@pytest.mark.parametrize("model", ["7b", "13b", "70b"])
def test_lora_fits_on_one_p4de(model):
    plan = build_plan(find_model(model), seed_spec(model, "lora"), find_gpu(P4DE.gpu), P4DE)
    assert plan.memory.fits


def test_full_70b_exceeds_one_p4de_host_ram():
    """'The missing graph for the full-parameter fine-tuning underlines the fact that the memory
    requirements exceeded the specs of the p4de.24xlarge instance' (70B)."""
    plan = build_plan(find_model("70b"), seed_spec("70b", "full"), find_gpu(P4DE.gpu), P4DE)
    assert not plan.memory.fits and plan.memory.limiting == ["host"]
    # optimizer on host: 18 bytes per parameter (fp32 master, two fp32 moments, fp32 gradient,
    # and ZeRO-3's bf16 gradient-partition buffer, pinned on the host when offloading)
    assert plan.memory.per_node_cpu.offloaded_optimizer_bytes == pytest.approx(18 * 68_976_713_728, rel=1e-6)


def test_checkpoint_peaks_the_host_memory():
    """'Memory consumption peaks towards the end of an epoch — during checkpointing.'"""
    plan = build_plan(find_model("70b"), seed_spec("70b", "lora"), find_gpu(P4DE.gpu), P4DE)
    assert plan.memory.per_node_cpu.peak_phase == "checkpoint_save"


def test_twenty_full_7b_models_take_about_280_gb():
    each = ckpt.model_weights_bytes(find_model("7b"), TrainingSpec(method="full", added_tokens=4))
    assert 20 * each == pytest.approx(280e9, rel=0.10)


def test_about_700_lora_70b_adapters_plus_the_base_fit_in_the_same_space():
    arch = find_model("70b")
    adapter = ckpt.adapter_bytes(arch, SEED_LORA).total
    base = ckpt.model_weights_bytes(arch, SEED_LORA)
    assert ckpt.copies_that_fit(280 * 10**9, adapter, base) == pytest.approx(700, rel=0.10)


@pytest.mark.parametrize(
    "model,published_mb", [("7b", 42), ("13b", 64), ("70b", 202)], ids=["ray-7b-lora-ckpt", "ray-13b-lora-ckpt", "ray-70b-lora-ckpt"]
)
def test_template_lora_checkpoint_sizes(model, published_mb):
    """Ray template README: LoRA checkpoints of 42/64/202 MB with the all-layers config (bf16)."""
    got = ckpt.adapter_bytes(find_model(model), SEED_LORA).total
    assert got / 1e6 == pytest.approx(published_mb, rel=0.05)


@pytest.mark.parametrize("model,published_gib", [("7b", 12.8), ("70b", 128)], ids=["ray-7b-hf-ckpt-size", "ray-70b-hf-ckpt-size"])
def test_template_full_checkpoint_sizes(model, published_gib):
    got = ckpt.model_weights_bytes(find_model(model), TrainingSpec(method="full"))
    assert got / 2**30 == pytest.approx(published_gib, rel=0.03)


def test_lora_trains_a_small_fraction_and_shrinks_the_checkpoint():
    arch = find_model("7b")
    trainable = prm.lora_params(arch, LAYER_LINEARS, 8)
    assert trainable / prm.total_params(arch) == pytest.approx(0.00297, rel=0.01)
    full = ckpt.model_weights_bytes(arch, TrainingSpec(method="full"))
    assert full / ckpt.adapter_bytes(arch, SEED_LORA).total > 300


def test_lora_needs_far_less_memory_than_full_in_total():
    """'For the 7B and 13B models, LoRA consumes much less memory' (GPUs + host RAM of the node
    while training and checkpointing; the seed's curves cover the epoch, not model loading)."""
    for model in ("7b", "13b"):
        lora = build_plan(find_model(model), seed_spec(model, "lora"), find_gpu(P4DE.gpu), P4DE)
        full = build_plan(find_model(model), seed_spec(model, "full"), find_gpu(P4DE.gpu), P4DE)
        total = lambda p: p.memory.per_node_gpu.peak_bytes + p.memory.per_node_cpu.phase_peaks_bytes.checkpoint_save  # noqa: E731
        assert total(lora) < 0.6 * total(full)
