"""The training-stack behaviours (``data/stacks/*.json``, ``planner/configs/stack.py``) worked by
hand on the tiny Llama of ``test_formulas_memory`` (h=8, i=16, 2 layers, vocab 32; 1704 parameters,
of which 2 x 576 are layer projections), and the stack's resolution from a request.

LoRA r=2 on q and v: 56 adapter elements per layer, 112 in all.
"""

from __future__ import annotations

import json

import pytest

from planner import api, catalog
from planner.cli import main
from planner.configs.stack import auto_stack, resolve_stack
from planner.estimate.memory import gpu_memory
from planner.formulas import activations as act
from planner.formulas import counts, params
from planner.formulas.dtypes import PRECISIONS, spec_dtypes
from planner.schema.spec import TrainingSpec
from tests.unit.test_formulas_memory import TINY

CAL = catalog.load_calibration("default")
T, V = 4, 32  # one sequence of 4 tokens; the vocabulary
DDP = {"sharding": "ddp", "zero_stage": 0, "offload": "none", "precision": "bf16", "micro_batch_size": 1, "seq_len": T}
LORA = {"method": "lora", "lora_rank": 2, "lora_targets": ("q_proj", "v_proj"), "lora_dropout": 0.0}


def spec(**kw: object) -> TrainingSpec:
    return TrainingSpec.model_validate({**DDP, **LORA, **kw})


# --- loss path (transformers version) ----------------------------------------------------------


def test_loss_paths_hold_10_14_and_12_bytes_per_logit():
    dt = PRECISIONS["bf16"]
    padded, shifted, fp32 = (spec(loss_path=p) for p in ("padded-labels", "shift-fp32-copy", "fp32-logits"))
    # logits (bf16 2) + log_softmax (fp32 4) are saved; the loss adds the fp32 upcast (4): 10
    assert act.logits_elem_bytes(padded, dt) == 2 and act.loss_forward_transient(TINY, padded, dt) == 4 * T * V
    # 4.46-4.48: the upcast and its contiguous shifted copy: 2 + 4 + 4 + 4 = 14
    assert act.loss_forward_transient(TINY, shifted, dt) == 8 * T * V
    # <= 4.45: the model returns fp32 logits (4), the loss shifts them (4), log_softmax (4): 12
    assert act.logits_elem_bytes(fp32, dt) == 4 and act.loss_forward_transient(TINY, fp32, dt) == 4 * T * V
    fwd = {p: gpu_memory(TINY, s, CAL).phases["forward"].activations for p, s in (("a", padded), ("b", shifted), ("c", fp32))}
    assert fwd["b"] - fwd["a"] == 4 * T * V  # the shifted copy
    assert fwd["c"] - fwd["a"] == 2 * T * V  # fp32 logits (+2) with the shifted copy (+4) instead of the upcast (+4)


def test_a_loop_that_keeps_outputs_holds_the_logits_through_backward():
    kept, dropped = gpu_memory(TINY, spec(keep_outputs=True), CAL), gpu_memory(TINY, spec(), CAL)
    # the bf16 logits, 2 x T x V bytes, at the last moment of backward (the embedding end)
    assert kept.phases["backward"].total - dropped.phases["backward"].total == 2 * T * V
    assert kept.phases["forward"].total == dropped.phases["forward"].total


# --- no DeepSpeed: DDP buckets, fp32 adapters and their moments, fused AdamW ------------------


def test_fp32_adapters_get_fp32_moments_without_deepspeed():
    m = gpu_memory(TINY, spec(), CAL)
    assert params.lora_params(TINY, ("q_proj", "v_proj"), 2) == 112
    assert m.phases["optimizer_step"].optimizer_states == 2 * 4 * 112  # exp_avg + exp_avg_sq, fp32
    # foreach AdamW's sqrt buffer: one moment (optimizer_scratch_states = 1)
    assert m.phases["optimizer_step"].temporaries == 4 * 112
    assert gpu_memory(TINY, spec(adamw_impl="fused"), CAL).phases["optimizer_step"].temporaries == 0


def test_ddp_buckets_copy_every_gradient_over_several_ranks():
    one, two = gpu_memory(TINY, spec(), CAL), gpu_memory(TINY, spec(gpus_per_node=2), CAL)
    grads = 4 * 112  # fp32 adapter gradients
    for phase in ("forward", "backward", "optimizer_step"):
        assert two.phases[phase].temporaries - one.phases[phase].temporaries == grads, phase
    view = gpu_memory(TINY, spec(gpus_per_node=2, ddp_grad_copy=False), CAL)
    assert view.phases["forward"].temporaries == one.phases["forward"].temporaries
    assert view.phases["forward"].gradients == grads  # the buckets are the gradients, held for good
    # DeepSpeed's ZeRO-0 all-reduce copy is not torch DDP's
    assert two.phases["backward"].total - one.phases["backward"].total == grads


def test_under_autocast_the_loss_is_made_from_bf16_logits_and_the_loop_gets_fp32_ones():
    """transformers computes the loss inside forward from lm_head's bf16 output (autocast runs
    nn.Linear in bf16): logits 2 + upcast 4 + log_softmax 4; accelerate's convert_outputs_to_fp32
    then hands the loop fp32 logits (4 T V kept by a loop that keeps outputs)."""
    s = spec(autocast=True)
    dt = spec_dtypes(s)
    assert act.logits_elem_bytes(s, dt) == 2 and act.loss_forward_transient(TINY, s, dt) == 4 * T * V
    assert act.returned_logits_elem_bytes(s, dt) == 4 and act.returned_logits_elem_bytes(spec(), dt) == 2
    kept, dropped = (gpu_memory(TINY, spec(autocast=True, keep_outputs=k), CAL) for k in (True, False))
    assert kept.phases["backward"].total - dropped.phases["backward"].total == 4 * T * V
    assert act.logits_elem_bytes(spec(autocast=True, loss_path="fp32-logits"), dt) == 4


def test_old_bitsandbytes_keeps_every_frozen_4bit_projections_input():
    """bitsandbytes < 0.43.2 MatMul4Bit saves its input A: q/k/v's (one tensor, T x h), gate/up's
    (T x h) and down's (T x I) in bf16 per layer; o_proj reads SDPA's output, already kept. A
    quantized lm_head keeps the final norm's output (T x h)."""
    layer = {}
    for keeps in (True, False):
        s = spec(method="qlora", qlora_prep="none", bnb_keeps_input=keeps, grad_ckpt=False)
        layer[keeps] = act.total(act.layer_inventory(TINY, s, spec_dtypes(s)))
    assert layer[True] - layer[False] == 2 * T * 8 + 2 * T * 8 + 2 * T * 16
    s = spec(method="qlora", qlora_prep="none", bnb_keeps_input=True, quantize_lm_head=True)
    head = {x.name: x.bytes for x in act.model_level_saved(TINY, s, spec_dtypes(s))}
    assert head["lm_head.input"] == 2 * T * 8
    s = s.model_copy(update={"quantize_lm_head": False})  # a 16-bit frozen lm_head keeps nothing
    assert "lm_head.input" not in {x.name for x in act.model_level_saved(TINY, s, spec_dtypes(s))}


# --- FSDP1 gradient accumulation ---------------------------------------------------------------

FSDP1 = {"sharding": "fsdp1", "zero_stage": 3, "gpus_per_node": 2, "grad_accum": 2, "adapter_dtype": "bf16"}


def test_fsdp1_no_sync_holds_every_units_unsharded_gradient_and_flat_units_their_whole_size():
    """TINY's decoder layer has 592 weights (q 64, k 32, v 32, o 64, gate/up/down 128 each, two
    norms 8) and 56 LoRA elements (q 2*(8+8), v 2*(8+4)): a unit of 648, bf16 gradients."""
    forward = {
        (no_sync, flat): gpu_memory(TINY, spec(**FSDP1, fsdp_no_sync=no_sync, fsdp_flat_grads=flat), CAL).phases["forward"].gradients
        for no_sync in (True, False)
        for flat in (True, False)
    }
    assert forward[(True, True)] == 2 * 648 * 2  # Lightning: both layers' whole flat gradients, unsharded
    assert forward[(True, False)] == 2 * 56 * 2  # peft's wrap policy: only the LoRA units', unsharded
    assert forward[(False, True)] == 2 * 648 * 2 // 2  # synced every micro batch: the whole shards
    assert forward[(False, False)] == 2 * 56 * 2 // 2  # the LoRA shards
    # one micro batch per step: nothing is accumulated, whatever the loop does
    single = spec(**{**FSDP1, "grad_accum": 1}, fsdp_no_sync=True, fsdp_flat_grads=True)
    assert gpu_memory(TINY, single, CAL).phases["forward"].gradients == 0


def test_lightning_runs_fsdp1_as_its_other_engine(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "7b", "--gpu", "a100-40gb", "--gpus", "2", "--method", "lora", "--stack", "lightning", "--sharding", "fsdp1"]
    assert main([*argv, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    b = plan["stack"]["behaviours"]
    assert plan["inputs"]["spec"]["zero_stage"] == 3 and b["zero"]["source"] == "--sharding fsdp1 (FULL_SHARD)"
    assert b["fsdp_no_sync"]["value"] is True and b["fsdp_flat_grads"]["value"] is True
    assert main(["--model", "7b", "--gpu", "a100-40gb", "--stack", "lightning", "--sharding", "fsdp2"]) == 2
    assert "runs ddp or fsdp1" in capsys.readouterr().err


# --- QLoRA preparation -------------------------------------------------------------------------


def test_peft_prepared_qlora_is_fp32_outside_the_4bit_projections_and_trl_casts_the_ends_back():
    peft, trl, none = (spec(method="qlora", qlora_prep=p) for p in ("peft", "trl", "none"))
    assert spec_dtypes(peft).resid == 4 and spec_dtypes(peft).weight == 4 and spec_dtypes(none).resid == 2
    nf4 = params.qlora_linear_bytes(TINY, True)
    others = 1704 - 2 * 576  # embeddings 256 + lm_head 256 + norms 5 x 8 = 552
    assert counts.count_params(TINY, peft).weights_bytes - 4 * 112 == nf4 + 4 * others
    assert counts.count_params(TINY, trl).weights_bytes - 4 * 112 == nf4 + 4 * others - 2 * (256 + 256)
    assert counts.count_params(TINY, none).weights_bytes - 4 * 112 == nf4 + 2 * others
    # DeepSpeed's engine casts the module back to 16 bit: no fp32 residual there
    ds = TrainingSpec.model_validate({**LORA, "method": "qlora", "micro_batch_size": 1, "seq_len": T, "zero_stage": 2, "offload": "none"})
    assert spec_dtypes(ds).resid == 2


def test_the_fp32_residual_doubles_each_checkpointed_layer_input():
    # fms-acceleration's Mistral-7B QLoRA vs LoRA: 32 layers x 4096 x 2 bytes more per token
    prepared, unprepared = spec(method="qlora", qlora_prep="peft"), spec(method="qlora", qlora_prep="none")
    assert act.layer_checkpoint_input(TINY, prepared, spec_dtypes(prepared)).bytes == 4 * T * 8
    assert act.layer_checkpoint_input(TINY, unprepared, spec_dtypes(unprepared)).bytes == 2 * T * 8


def test_lightning_quantizes_lm_head():
    plain, quantized = spec(method="qlora", qlora_prep="none"), spec(method="qlora", qlora_prep="none", quantize_lm_head=True)
    diff = counts.count_params(TINY, plain).weights_bytes - counts.count_params(TINY, quantized).weights_bytes
    assert diff == 2 * 256 - params.nf4_tensor_bytes(256, True)


# --- the stack of a request ----------------------------------------------------------------------


def test_a_profile_sets_what_no_option_gave_and_an_option_wins():
    fields = api.spec_fields(api.PlanRequest())
    r = resolve_stack("hf-trainer", fields, {}, {"loss_path": "fp32-logits"}, None)
    assert (r.fields["sharding"], r.fields["zero_stage"], r.fields["offload"], r.fields["autocast"]) == ("ddp", 0, "none", True)
    assert r.fields["loss_path"] == "fp32-logits" and r.sources["loss_path"] == "--loss-path"
    assert "transformers" in r.sources["keep_outputs"]  # the profile's cited source


def test_auto_reads_versions_into_the_profile_and_its_behaviours():
    name, over = auto_stack({"transformers": "4.44.2", "bitsandbytes": "0.42.0", "peft": "0.12.0"})
    assert name == "hf-trainer" and over["loss_path"][0] == "fp32-logits" and over["bnb_keeps_input"][0] is True
    name, over = auto_stack({"transformers": "4.47.1", "deepspeed": "0.15.4", "bitsandbytes": "0.45.0"})
    assert name == "deepspeed" and over["loss_path"][0] == "shift-fp32-copy" and over["bnb_keeps_input"][0] is False
    assert auto_stack({"transformers": "4.49.0"})[1]["loss_path"][0] == "padded-labels"
    assert auto_stack({"torchtune": "0.4.0"})[0] == "torchtune"


def test_the_plan_says_which_stack_it_assumed():
    plan = api.plan("7b", method="lora", gpu="a100-80gb", stack="hf-trainer", batch_size=1)
    assert plan.stack is not None and plan.stack.name == "hf-trainer" and not plan.stack.auto
    assert plan.stack.behaviours["sharding"].value == "ddp" and plan.stack.versions["transformers"] == ">=4.49"
    assert plan.inputs.spec.sharding == "ddp" and plan.settings_sources["zero_stage"] == "stack hf-trainer"
    default = api.plan("7b", method="lora", gpu="a100-80gb", batch_size=1)
    assert default.stack is not None and default.stack.name == "deepspeed" and default.settings_sources["zero_stage"] == "default"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stack", "hf-trainr"], "--stack: unknown stack 'hf-trainr'; did you mean 'hf-trainer'?"),
        (["--stack", "hf-trainer", "--zero", "2"], "--zero 2: ZeRO is DeepSpeed's, and --stack hf-trainer runs torch DDP"),
        (["--stack", "hf-trainer", "--reduce-bucket-size", "9"], "--reduce-bucket-size is a DeepSpeed setting, but --stack hf-trainer"),
        (["--stack", "deepspeed", "--sharding", "ddp"], "--sharding ddp contradicts --stack deepspeed, which runs deepspeed"),
        (["--ddp-grad-copy"], "--ddp-grad-copy is torch DDP's, but --stack deepspeed runs DeepSpeed"),
        (["--stack", "lightning", "--adamw-impl", "fusd"], "Invalid value for '--adamw-impl'"),
    ],
)
def test_a_contradicting_or_unknown_stack_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "7b", "--gpu", "a100-80gb", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_every_profile_is_valid_and_list_stacks_shows_each(capsys: pytest.CaptureFixture[str]) -> None:
    names = catalog.stack_names()
    assert {"deepspeed", "hf-trainer", "accelerate-fsdp", "fsdp2", "lightning", "torchtune", "custom-loop"} <= set(names)
    for st in catalog.stacks():
        # every profile resolves on the defaults into a spec the planner accepts
        r = resolve_stack(st.name, api.spec_fields(api.PlanRequest()), {}, {}, None)
        TrainingSpec.model_validate({**r.fields, "method": "lora"})
    assert main(["list", "stacks"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in names) and "loss_path" in out


def test_json_carries_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "7b", "--gpu", "a100-80gb", "--stack", "custom-loop", "-b", "1", "--json"]) == 0
    stack = json.loads(capsys.readouterr().out)["stack"]
    kept = stack["behaviours"]["keep_outputs"]
    assert stack["name"] == "custom-loop" and kept["value"] is True and "outputs" in kept["source"]
    assert set(stack) == {"name", "title", "auto", "behaviours", "versions"}


def test_docs_stacks_table_is_the_profiles():
    """docs/stacks.md's profile table says what data/stacks/*.json say, for every behaviour."""
    from pathlib import Path

    from planner.schema.stack import BEHAVIOURS

    text = (Path(__file__).parents[2] / "docs" / "stacks.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| `")]
    header = next(line for line in text.splitlines() if line.startswith("| behaviour |")).split("|")[2:-1]
    names = [h.strip() for h in header]
    table = {r[0].strip().strip("`"): dict(zip(names, (c.strip() for c in r[1:]), strict=True)) for r in rows}
    assert set(table) == set(BEHAVIOURS)
    for st in catalog.stacks():
        for b in BEHAVIOURS:
            v = st.value(b, "–")
            assert table[b][st.name] == (str(v).lower() if isinstance(v, bool) else str(v)), (st.name, b)
