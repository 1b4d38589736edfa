"""Step time, throughput and cost: hand-worked values for each formula and for the composition."""

from __future__ import annotations

import pytest

from planner.catalog import find_gpu, find_instance, find_model, load_calibration
from planner.errors import PlannerError
from planner.estimate.memory import param_counts
from planner.estimate.plan import build_plan
from planner.estimate.timing import SEED_DATASET_SAMPLES, step_timing
from planner.formulas import throughput as tp
from planner.formulas.flops import step_flops
from planner.schema.spec import LAYER_LINEARS, TrainingSpec

CAL = load_calibration()
A7 = find_model("7b")
P4DE = find_instance("p4de.24xlarge")
A100 = find_gpu(P4DE.gpu)


def test_ring_collectives_move_n_minus_1_over_n():
    assert tp.ring_bytes_per_gpu(8_000, 8, "all_gather") == 7_000
    assert tp.ring_bytes_per_gpu(8_000, 8, "reduce_scatter") == 7_000
    assert tp.ring_bytes_per_gpu(8_000, 8, "all_reduce") == 14_000
    assert tp.ring_bytes_per_gpu(8_000, 1, "all_reduce") == 0


def test_zero_volumes_follow_the_zero_paper():
    w, wt, g = 8_000, 800, 4_000  # all 16-bit weights, the trainable ones, gradients
    # (per micro-step, per optimizer step)
    assert tp.zero_comm_bytes_per_gpu(0, 8, w, wt, g) == (0, 7_000)  # all-reduce once per step
    assert tp.zero_comm_bytes_per_gpu(1, 8, w, wt, g) == (0, 3_500 + 700)  # reduce-scatter + all-gather of what trains
    assert tp.zero_comm_bytes_per_gpu(2, 8, w, wt, g) == (3_500, 700)  # reduce-scatter each micro-step
    assert tp.zero_comm_bytes_per_gpu(3, 8, w, wt, g) == (2 * 7_000 + 3_500, 0)  # gathers all weights, frozen too
    # full fine-tuning (trainable = all, grads = weights): stages 0-2 move 2 (n-1)/n, stage 3 1.5x that
    full = [sum(tp.zero_comm_bytes_per_gpu(z, 8, 8_000, 8_000, 8_000)) for z in range(4)]
    assert full == [14_000, 14_000, 14_000, 21_000]


def test_gradient_accumulation_repeats_only_the_per_micro_step_collectives():
    spec = TrainingSpec(method="full", gpus_per_node=8, offload="none", zero_stage=2)
    pc = param_counts(A7, spec)
    one = step_timing(A7, spec, pc, A100, P4DE, CAL)
    four = step_timing(A7, spec.model_copy(update={"grad_accum": 4}), pc, A100, P4DE, CAL)
    assert four.compute_s == pytest.approx(4 * one.compute_s)
    assert four.optimizer_s == pytest.approx(one.optimizer_s)  # one optimizer step either way
    assert four.tokens_per_step == 4 * one.tokens_per_step


def test_efficiency_saturates_with_tokens():
    assert tp.compute_efficiency(256, 0.6, 256) == pytest.approx(0.3)
    assert tp.compute_efficiency(10**9, 0.6, 256) == pytest.approx(0.6, rel=1e-6)
    assert tp.compute_efficiency(1024, 0.6, 256) < tp.compute_efficiency(2048, 0.6, 256)


def test_optimizer_bytes_per_element():
    # mixed precision: read bf16 grad (2), read+write fp32 master (8), two fp32 moments (16), write bf16 param (2)
    assert tp.optimizer_bytes_per_element("adamw", param=2, grad=2, master=4, state=4) == 28
    # fp32 AdamW on fp32 weights: grad 4 + param 8 + moments 16
    assert tp.optimizer_bytes_per_element("adamw", param=4, grad=4, master=0, state=4) == 28
    # pure bf16: 8-bit moments read+write (4), SGD none
    assert tp.optimizer_bytes_per_element("adamw8bit", param=2, grad=2, master=0, state=2) == 2 + 4 + 4
    assert tp.optimizer_bytes_per_element("sgd", param=2, grad=2, master=0, state=2) == 2 + 4


def test_full_7b_on_one_a100_is_compute_plus_gpu_adam_by_hand():
    spec = TrainingSpec(method="full", zero_stage=0, offload="none", grad_ckpt=False, micro_batch_size=8)
    t = step_timing(A7, spec, param_counts(A7, spec), A100, None, CAL)
    flops = step_flops(A7, spec).total
    eff = 0.69 * 0.869 * 4096 / (4096 + 256)  # framework share x the A100's matmul ceiling
    assert t.compute_s == pytest.approx(flops / (312e12 * eff))
    assert t.communication_s == 0 and t.offload_s == 0  # one GPU, nothing offloaded
    assert t.optimizer_s == pytest.approx(6_738_415_616 * 28 / (2039e9 * 0.8), rel=1e-6)
    assert t.tokens_per_s == pytest.approx(4096 / (t.compute_s + t.optimizer_s))
    assert t.mfu == pytest.approx(flops / (t.step_time_s * 312e12))  # no recomputation: model FLOPs = executed FLOPs


def test_offloaded_optimizer_is_cpu_adam_over_the_node():
    spec = TrainingSpec(method="full", gpus_per_node=8)  # seed default: ZeRO-3, optimizer offloaded
    t = step_timing(A7, spec, param_counts(A7, spec), A100, P4DE, CAL)
    assert t.optimizer_s == pytest.approx(6_738_415_616 / 1e9, rel=1e-6)
    assert t.bottleneck == "optimizer"


def test_plan_reports_time_and_cost_for_the_seed_dataset():
    p = build_plan(A7, TrainingSpec(method="lora", gpus_per_node=8, offload="none"), A100, P4DE, CAL)
    tc, t = p.time_cost, p.throughput
    assert tc.dataset_tokens == SEED_DATASET_SAMPLES * 512 == 3_826_176
    assert tc.seconds_per_epoch == pytest.approx(tc.dataset_tokens / t.tokens_per_s)
    assert tc.usd_per_hour == P4DE.usd_per_hour
    assert tc.usd_per_epoch == pytest.approx(P4DE.usd_per_hour * tc.seconds_per_epoch / 3600)
    assert tc.usd_per_million_tokens == pytest.approx(P4DE.usd_per_hour / (t.tokens_per_s * 3600) * 1e6)
    assert t.tokens_per_s_per_gpu == pytest.approx(t.tokens_per_s / 8)
    assert p.cost == p.time_cost and not t.calibrated
    three = build_plan(A7, TrainingSpec(method="lora", gpus_per_node=8, offload="none"), A100, P4DE, CAL, epochs=3)
    assert three.time_cost.seconds_total == pytest.approx(3 * tc.seconds_per_epoch)


def test_zero3_gathers_a_lora_models_whole_base_but_zero2_does_not():
    """Under ZeRO-3 LoRA still gathers the frozen base twice per micro-step, so its collectives
    are nearly full fine-tuning's (the seed's 'not much faster at equal batch'); under ZeRO-2 it
    moves only its adapters. Two nodes, so the collectives are not hidden behind compute."""
    inst = find_instance("p4de.24xlarge")
    times = {}
    for zero in (2, 3):
        for method in ("full", "lora"):
            spec = TrainingSpec(method=method, gpus_per_node=8, nodes=2, offload="none", zero_stage=zero, micro_batch_size=1)
            t = step_timing(A7, spec, param_counts(A7, spec), A100, inst, CAL)
            times[zero, method] = t.communication_s
    assert times[3, "lora"] > 0.6 * times[3, "full"]
    assert times[2, "lora"] < 0.05 * times[2, "full"]


def test_two_nodes_cost_twice_per_hour_and_cross_the_network():
    spec = TrainingSpec(method="full", gpus_per_node=8, nodes=2, offload="none", micro_batch_size=1)
    p = build_plan(A7, spec, A100, P4DE, CAL)
    assert p.time_cost.usd_per_hour == pytest.approx(2 * P4DE.usd_per_hour)
    # ZeRO-3 over 16 GPUs, 7B: 2 gathers of 13.48 GB + a reduce-scatter of 13.48 GB, 15/16 each,
    # over the node network (400 Gbps EFA x 0.85) -- 37.9 GB at 42.5 GB/s, minus half the compute
    moved = 3 * 13_476_831_232 * 15 // 16
    link = P4DE.network_bytes_per_s * 0.85
    t = p.throughput.step_time_parts
    assert t.communication_s == pytest.approx(max(0.0, moved / link - 0.5 * t.compute_s), rel=1e-6)


def test_bad_time_inputs_are_one_line(capsys):
    from planner.cli import main

    assert main(["--model", "7b", "--gpu", "a100", "--dataset-tokens", "5", "--dataset-samples", "5"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["--model", "7b", "--gpu", "a100", "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_batch_size_max_plans_at_the_largest_micro_batch_that_fits(capsys):
    import json

    from planner.cli import main

    argv = ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--offload", "none", "--json"]
    assert main([*argv, "--batch-size", "max"]) == 0
    p = json.loads(capsys.readouterr().out)
    b = p["inputs"]["spec"]["micro_batch_size"]
    assert b == p["max_micro_batch_size"] > 8 and p["memory"]["fits"]
    assert main([*argv, "--batch-size", str(b + 1)]) == 0
    assert not json.loads(capsys.readouterr().out)["memory"]["fits"]
    assert main([*argv[:-1], "--batch-size", "x"]) == 2
    assert "whole number or 'max'" in capsys.readouterr().err


def test_plan_compare_full_vs_lora_on_one_node(capsys):
    import json

    from planner.cli import main

    assert main(["compare", "--model", "7b", "--instance", "p4de.24xlarge", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["plan"]["inputs"]["spec"]["method"] for r in rows] == ["full", "lora"]
    for r in rows:
        best = r["plan"]["max_micro_batch_size"]
        assert r["plan"]["inputs"]["spec"]["micro_batch_size"] == 8
        assert r["plan_at_max_batch"]["inputs"]["spec"]["micro_batch_size"] == best >= 1
        assert r["plan_at_max_batch"]["memory"]["fits"]
    full, lora = (r["plan"]["checkpoint"] for r in rows)
    assert lora["adapter_bytes"] < full["model_weights_bytes"] / 100


def test_plan_compare_methods_and_instances(capsys):
    import json

    from planner.cli import main

    argv = ["compare", "--model", "70b", "--methods", "lora,qlora", "--instances", "p4de.24xlarge,p5.48xlarge", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    got = [(r["plan"]["inputs"]["hardware"]["instance"], r["plan"]["inputs"]["spec"]["method"]) for r in rows]
    assert got == [("p4de.24xlarge", "lora"), ("p4de.24xlarge", "qlora"), ("p5.48xlarge", "lora"), ("p5.48xlarge", "qlora")]
    assert main(["compare", "--model", "7b", "--gpu", "a10g", "--methods", "full,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["--model", "7b", "--gpu", "a10g", "--methods", "full"]) == 2
    assert "plan compare" in capsys.readouterr().err


def test_plan_sweep_ranks_by_dollars_and_marks_what_does_not_fit(capsys):
    import json

    from planner.cli import main

    argv = ["sweep", "--model", "7b,70b", "--method", "full,lora", "--instance", "p4de.24xlarge,g5.48xlarge", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 * 2 * 2
    fitting = [r for r in rows if r["fits"]]
    costs = [r["usd_per_epoch"] for r in fitting]
    assert costs == sorted(costs) and rows[: len(fitting)] == fitting  # cheapest first, infeasible last
    full70 = next(r for r in rows if r["model"] == "llama-2-70b" and r["method"] == "full" and r["hardware"] == "p4de.24xlarge")
    assert not full70["fits"] and "host RAM" in full70["reason"]


def test_plan_sweep_batch_list_with_max(capsys):
    import json

    from planner.cli import main

    assert main(["sweep", "--model", "7b", "--method", "lora", "--gpu", "a10g", "--batch-size", "1,4,max", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    batches = sorted(r["micro_batch_size"] for r in rows)
    assert batches[:2] == [1, 4] and batches[2] == rows[0]["max_micro_batch_size"] > 4
    assert all(r["usd_per_epoch"] is None for r in rows)  # no instance, no price


def test_plan_cheapest_picks_the_lowest_cost_that_fits(capsys):
    import json

    from planner.cli import main

    assert main(["cheapest", "--model", "70b", "--method", "lora", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    best, cands = out["cheapest"], out["candidates"]
    assert best["fits"] and best["usd_per_epoch"] == min(c["usd_per_epoch"] for c in cands if c["fits"])
    assert main(["cheapest", "--model", "70b", "--method", "full", "--offload", "none"]) == 2
    assert "no catalog instance" in capsys.readouterr().err


def test_zero3_module_calls_of_llama_2_7b_by_hand():
    from planner.formulas.zero import zero3_module_calls

    # full, checkpointed, per layer: 7 projections gather in forward, re-run and backward; the
    # 2 norms, attention, MLP and SiLU only hook, 3 times too; the layer itself twice (the
    # re-run happens inside its hooks). Outside: embedding and LM head gather twice; the model,
    # its body and the final norm hook twice, the rotary embedding once (no backward).
    assert zero3_module_calls(A7, TrainingSpec(method="full")) == (3 * 32 * 7 + 2 * 2, 32 * (3 * 5 + 2) + 3 * 2 + 1)
    assert zero3_module_calls(A7, TrainingSpec(method="full", grad_ckpt=False)) == (2 * 32 * 7 + 2 * 2, 32 * (2 * 5 + 2) + 3 * 2 + 1)
    # LoRA r=8 on all seven projections: the threshold is 10 h = 40,960 elements; of the 14
    # adapters only gate/up B (11008 x 8) and down A (8 x 11008) exceed it. Per layer 7 + 3
    # gather; 5 + 7 x 2 (wrapper, dropout) + 11 small adapters hook; plus peft's root module.
    seven = TrainingSpec(method="lora")
    assert zero3_module_calls(A7, seven) == (3 * 32 * 10 + 2 * 2, 32 * (3 * 30 + 2) + 4 * 2 + 1)
    # plus LoRA on lm_head (B = 32000 x 8 gathers; wrapper, dropout and A hook) and on the
    # embedding (its wrapper hooks)
    seed = seven.model_copy(update={"lora_targets": LAYER_LINEARS + ("embed_tokens", "lm_head")})
    assert zero3_module_calls(A7, seed) == (3 * 32 * 10 + 3 * 2, 32 * (3 * 30 + 2) + 8 * 2 + 1)
    # without checkpointing the first layer's frozen modules under q/k/v (norm, three base
    # layers and dropouts) and the frozen embedding get no backward
    assert zero3_module_calls(A7, seven.model_copy(update={"grad_ckpt": False})) == (
        2 * 32 * 10 + 2 * 2 - 3 - 1,
        32 * (2 * 30 + 2) + 4 * 2 + 1 - 1 - 3,
    )


def test_zero3_host_time_is_fixed_per_micro_step_and_only_under_deepspeed_zero3():
    full = TrainingSpec(method="full", gpus_per_node=8, offload="none")
    t = step_timing(A7, full, param_counts(A7, full), A100, P4DE, CAL)
    assert t.framework_s == pytest.approx(676 * CAL.value("zero3_fetch_s_per_module") + 551 * CAL.value("zero3_hook_s_per_module"))
    assert t.framework_s == pytest.approx(676 * 193e-6 + 551 * 76e-6)  # the measured defaults: 0.172 s
    big = full.model_copy(update={"micro_batch_size": 64})
    assert step_timing(A7, big, param_counts(A7, big), A100, P4DE, CAL).framework_s == t.framework_s
    accum = full.model_copy(update={"grad_accum": 4})
    assert step_timing(A7, accum, param_counts(A7, accum), A100, P4DE, CAL).framework_s == pytest.approx(4 * t.framework_s)
    for other in (full.model_copy(update={"zero_stage": 2}), full.model_copy(update={"sharding": "fsdp2"})):
        assert step_timing(A7, other, param_counts(A7, other), A100, P4DE, CAL).framework_s == 0


def test_plateau_efficiency_follows_each_gpus_matmul_ceiling():
    from planner.catalog import find_gpu
    from planner.estimate.timing import plateau_efficiency

    assert plateau_efficiency(A100, CAL) == pytest.approx(0.69 * 0.869)  # 0.5996: the 0.6 llm-foundry's A100 runs reach
    assert plateau_efficiency(find_gpu("h100-80gb"), CAL) == pytest.approx(0.69 * 0.803)
    a10g = find_gpu("a10g")
    assert a10g.matmul_efficiency is None  # not measured: the mean of the measured NVIDIA parts
    assert plateau_efficiency(a10g, CAL) == pytest.approx(0.69 * CAL.value("matmul_efficiency_default"))


def test_a_calibration_written_before_a_coefficient_existed_gets_its_cited_default(tmp_path, monkeypatch):
    """Also: the data folder is read where ``PLANNER_DATA_DIR`` points now, and a changed file is
    read again (no stale cache from an earlier call)."""
    import json
    import shutil

    from planner.catalog import data_dir, load_calibration

    (tmp_path / "calibration").mkdir()
    shutil.copy(data_dir() / "calibration" / "default.json", tmp_path / "calibration" / "default.json")
    old = json.loads((data_dir() / "calibration" / "default.json").read_text())
    old["id"] = "old"
    for k in ("zero3_fetch_s_per_module", "zero3_hook_s_per_module", "matmul_efficiency_default"):
        del old["coefficients"][k]
    (tmp_path / "calibration" / "old.json").write_text(json.dumps(old))
    monkeypatch.setenv("PLANNER_DATA_DIR", str(tmp_path))
    cal = load_calibration("old")
    assert cal.id == "old" and cal.value("zero3_hook_s_per_module") == CAL.value("zero3_hook_s_per_module")
    broken = json.loads((data_dir() / "calibration" / "default.json").read_text())
    del broken["coefficients"]["zero3_fetch_s_per_module"]
    (tmp_path / "calibration" / "default.json").write_text(json.dumps(broken))  # a broken default still fails
    with pytest.raises(PlannerError, match="lacks zero3_fetch_s_per_module"):
        load_calibration("default")
    monkeypatch.delenv("PLANNER_DATA_DIR")
    assert load_calibration("default").value("zero3_fetch_s_per_module") == CAL.value("zero3_fetch_s_per_module")


def test_zero3_keeps_what_it_reuses_soon_around_the_turn():
    from planner.estimate.memory import gpu_memory
    from planner.formulas.zero import zero3_retained_params_bytes

    # 10^9 elements of reuse distance: with checkpointing a module x below the top is reused
    # after 3x elements of fetches, so 333,333,333 elements (bf16) stay gathered; 2x without
    assert zero3_retained_params_bytes(10**9, True, 2, 10**12) == 333_333_333 * 2
    assert zero3_retained_params_bytes(10**9, False, 2, 10**12) == 500_000_000 * 2
    assert zero3_retained_params_bytes(10**9, True, 2, 12_345) == 12_345  # a small model stays whole
    assert zero3_retained_params_bytes(0, True, 2, 12_345) == 0
    spec = TrainingSpec(method="lora", gpus_per_node=8, offload="none")
    near = spec.model_copy(update={"deepspeed": spec.deepspeed.model_copy(update={"stage3_max_reuse_distance": 0})})
    far, none = gpu_memory(A7, spec, CAL), gpu_memory(A7, near, CAL)
    # the top of backward carries the retained parameters (0.67 GB, of which the module window
    # and prefetch bucket, 0.29 GB, were counted already); the optimizer step does not
    extra = far.phases["backward"].temporaries - none.phases["backward"].temporaries
    assert 0.3e9 < extra <= 333_333_333 * 2
    assert far.phases["optimizer_step"] == none.phases["optimizer_step"]
