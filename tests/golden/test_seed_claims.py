"""Claims of the source document (shared/seed) and of the Ray template behind it
(shared/reference/seed_setup.md, published_measurements.jsonl), each a test case."""

from __future__ import annotations

import pytest

from planner.calibration.agreement import (
    ADAPTER_CHECKPOINT_TOLERANCE,
    MODEL_CHECKPOINT_TOLERANCE,
    SEED_ABOUT_TOLERANCE,
    SEED_PRINTED_RATIO_TOLERANCE,
)
from planner.catalog import find_gpu, find_instance, find_model
from planner.estimate.plan import build_plan
from planner.formulas import checkpoint as ckpt
from planner.formulas import params as prm
from planner.schema.spec import EMBEDDING_MODULES, LAYER_LINEARS, TrainingSpec

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
    assert 20 * each == pytest.approx(280e9, rel=SEED_ABOUT_TOLERANCE)


def test_about_700_lora_70b_adapters_plus_the_base_fit_in_the_same_space():
    arch = find_model("70b")
    adapter = ckpt.adapter_bytes(arch, SEED_LORA).total
    base = ckpt.model_weights_bytes(arch, SEED_LORA)
    assert ckpt.copies_that_fit(280 * 10**9, adapter, base) == pytest.approx(700, rel=SEED_ABOUT_TOLERANCE)


@pytest.mark.parametrize(
    "model,published_mb", [("7b", 42), ("13b", 64), ("70b", 202)], ids=["ray-7b-lora-ckpt", "ray-13b-lora-ckpt", "ray-70b-lora-ckpt"]
)
def test_template_lora_checkpoint_sizes(model, published_mb):
    """Ray template README: LoRA checkpoints of 42/64/202 MB with the all-layers config (bf16)."""
    got = ckpt.adapter_bytes(find_model(model), SEED_LORA).total
    assert got / 1e6 == pytest.approx(published_mb, rel=ADAPTER_CHECKPOINT_TOLERANCE)


@pytest.mark.parametrize("model,published_gib", [("7b", 12.8), ("70b", 128)], ids=["ray-7b-hf-ckpt-size", "ray-70b-hf-ckpt-size"])
def test_template_full_checkpoint_sizes(model, published_gib):
    got = ckpt.model_weights_bytes(find_model(model), TrainingSpec(method="full"))
    assert got / 2**30 == pytest.approx(published_gib, rel=MODEL_CHECKPOINT_TOLERANCE)


def test_lora_trains_a_small_fraction_and_shrinks_the_checkpoint():
    arch = find_model("7b")
    trainable = prm.lora_params(arch, LAYER_LINEARS, 8)
    assert trainable / prm.total_params(arch) == pytest.approx(0.00297, rel=SEED_PRINTED_RATIO_TOLERANCE)
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


# --- Training speed: the seed's "Training speed benefits of LoRA" ------------------------------
# Llama 2 7B, seq 512, one p4de.24xlarge, DeepSpeed ZeRO-3. The seed does not publish its exact
# DeepSpeed settings for this comparison; the ones that reproduce both statements are the
# template's without offload: gradient checkpointing, ZeRO-3 on the GPUs, the "all layers" LoRA
# (SEED_LORA: bf16 adapters, as DeepSpeed 2023 cast them). See README "The seed's throughput".
SEED_SPEED = SEED_LORA.model_copy(update={"gpus_per_node": 8, "offload": "none", "grad_ckpt": True, "seq_len": 512})
A100 = find_gpu("a100-80gb")


def _speed(method: str, micro_batch: int, cal=None, **update):
    from planner.catalog import load_calibration

    spec = SEED_SPEED.model_copy(update={"method": method, "micro_batch_size": micro_batch, **update})
    return build_plan(find_model("7b"), spec, A100, P4DE, cal or load_calibration()).throughput


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_lora_at_micro_batch_64_is_about_30_percent_faster_than_full_at_8(attention):
    """'The lower memory footprint of LoRA allows for substantially larger batch sizes, resulting
    in an approximate 30% boost in throughput' (full at 8, LoRA at 64). Accepted: 1.15-1.45x."""
    ratio = _speed("lora", 64, attention=attention).tokens_per_s / _speed("full", 8, attention=attention).tokens_per_s
    assert 1.15 <= ratio <= 1.45


@pytest.mark.parametrize("micro_batch", [8, 16, 64])
def test_lora_is_not_substantially_faster_than_full_at_equal_micro_batch(micro_batch):
    """'Without leveraging the reduced memory footprint (via increasing the batch size), LoRA
    doesn't offer a substantial speed advantage' and 'LoRA ... making the forward pass slightly
    slower'. Accepted: at most 1.25x; and not much slower either."""
    ratio = _speed("lora", micro_batch).tokens_per_s / _speed("full", micro_batch).tokens_per_s
    assert 0.8 <= ratio <= 1.25


def test_the_boost_comes_from_amortising_zero3_host_time_over_a_larger_batch():
    """The mechanism, not the ratio: LoRA's saved weight-gradient FLOPs are partly eaten by its
    elementwise branch and by ZeRO-3's hooks on its four extra modules per adapted projection;
    what the larger micro batch buys is the per-micro-step host time spread over 8x the tokens.
    Without that host time, LoRA at 64 would be barely faster than LoRA at 8."""
    from planner.catalog import load_calibration

    cal = load_calibration()
    zeroed = {k: v.model_copy(update={"value": 0.0}) for k, v in cal.coefficients.items() if k.startswith("zero3_")}
    no_hooks = cal.model_copy(update={"coefficients": {**cal.coefficients, **zeroed}})
    gain = _speed("lora", 64).tokens_per_s / _speed("lora", 8).tokens_per_s
    gain_without_hooks = _speed("lora", 64, no_hooks).tokens_per_s / _speed("lora", 8, no_hooks).tokens_per_s
    assert gain_without_hooks < 1.1 < 1.25 < gain
    lora8, lora64 = _speed("lora", 8), _speed("lora", 64)
    assert lora8.step_time_parts.framework_s == pytest.approx(lora64.step_time_parts.framework_s)  # fixed per micro-step
    assert lora8.step_time_parts.framework_s / lora8.step_time_s > 0.2 > lora64.step_time_parts.framework_s / lora64.step_time_s
    # FSDP2 has no per-module hooks of this kind: nothing to amortise
    assert _speed("full", 8, sharding="fsdp2", precision="bf16-mixed").step_time_parts.framework_s == 0


def test_with_the_templates_cpu_offload_full_fine_tuning_is_cpu_adam_bound_and_the_ratios_move_apart():
    """The template's 7B config offloads the optimizer (and parameters) to the CPU: full
    fine-tuning then pays DeepSpeed's CPU Adam over 6.7 B parameters every step, a fixed cost
    LoRA (40 M trainable) does not have, and the ratio leaves the seed's range by far."""
    full = _speed("full", 8, offload="all")
    assert full.bottleneck == "optimizer"
    assert _speed("lora", 64, offload="all").tokens_per_s / full.tokens_per_s > 3
    assert _speed("lora", 8, offload="all").tokens_per_s / full.tokens_per_s > 3


def _max_batch(method: str, **update) -> int:
    from planner.catalog import load_calibration

    spec = SEED_SPEED.model_copy(update={"method": method, **update})
    return build_plan(find_model("7b"), spec, A100, P4DE, load_calibration()).max_micro_batch_size


def test_largest_micro_batches_on_one_p4de():
    """The seed: full fine-tuning 'would require a batch size of 8 to make the most out of the
    available GRAM', LoRA 'up to 64'. With ZeRO-3 sharding full fine-tuning's 16 B/param of
    model state over eight 80 GB GPUs (13.5 GB each), both fit far larger micro batches with
    checkpointing; the seed's pair is reproduced (as the largest power of two that fits) only
    with full fine-tuning *without* checkpointing and eager attention (the Sept 2023 script's),
    beside LoRA with checkpointing, a setting in which the throughput claims do not hold."""
    ckpt_full, ckpt_lora = _max_batch("full"), _max_batch("lora")
    assert 150 <= ckpt_full <= 220 and 150 <= ckpt_lora <= 250  # report: README "The seed's throughput"
    eager_full = _max_batch("full", grad_ckpt=False, attention="eager")
    assert 8 <= eager_full < 16
    assert _max_batch("lora", attention="eager") >= 64
