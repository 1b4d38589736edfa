"""Recount with the real libraries (meta device, no download) and compare with the planner.

Needs torch, transformers and peft (the ``harness`` extra); skipped with a reason otherwise.
This is what keeps tests/golden/reference_counts.json honest as the libraries move.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="harness extra (torch) not installed")
pytest.importorskip("transformers", reason="harness extra (transformers) not installed")
pytest.importorskip("peft", reason="harness extra (peft) not installed")

from harness import golden  # noqa: E402
from planner.catalog import find_model  # noqa: E402
from planner.formulas import checkpoint as ckpt  # noqa: E402
from planner.formulas import params as prm  # noqa: E402
from planner.spec import LAYER_LINEARS, TrainingSpec  # noqa: E402

pytestmark = pytest.mark.harness


@pytest.fixture(scope="module")
def configs():
    with golden._quiet():
        return golden.architecture_configs()


def test_live_parameter_counts_match_the_planner(configs):
    import torch

    with golden._quiet():
        for name, config in configs.items():
            with torch.device("meta"):
                model = golden.build_meta_model(config)
            assert golden.count_parameters(model) == prm.total_params(find_model(name)), name


def test_live_peft_adapter_of_7b_matches_the_planner(configs):
    setups = {"all_linear_embed_head": golden.SETUPS["all_linear_embed_head"]}
    with golden._quiet():
        rec = golden.lora_records(configs["llama-2-7b"], 32004, setups)["setups"]["all_linear_embed_head"]
    spec = TrainingSpec(
        method="lora", lora_targets=LAYER_LINEARS + ("embed_tokens", "lm_head"), added_tokens=4, save_embedding_layers="targets"
    )
    assert ckpt.adapter_bytes(find_model("7b"), spec).total == rec["adapter_state_dict"]["total_bytes"]
    assert prm.lora_params(find_model("7b"), spec.lora_targets, 8, 4) == rec["trainable_parameters"]


@pytest.mark.parametrize(
    "targets, modules_to_save, rank",
    [
        (None, (), 8),  # full fine-tuning: no peft
        (LAYER_LINEARS + ("embed_tokens", "lm_head"), (), 8),  # the seed's "all layers"
        (("q_proj", "v_proj"), ("embed_tokens", "lm_head"), 8),  # the Sept 2023 template
        (LAYER_LINEARS, (), 2),  # a rank whose adapters stay under the persistence threshold
    ],
)
def test_zero3_module_calls_match_the_modules_transformers_and_peft_call(tmp_path, targets, modules_to_save, rank):
    """ZeRO-3's hooks fire on every module call: count the calls of one forward with real
    transformers + peft (a tiny Llama on the CPU) and split them as DeepSpeed does, by whether
    the module holds a parameter above ``stage3_param_persistence_threshold`` itself."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from planner.formulas.zero import persistence_threshold_elems, zero3_module_calls

    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 96, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = find_model(str(tmp_path / "config.json"))
    with golden._quiet():
        model = LlamaForCausalLM(LlamaConfig(**cfg))
        method = "full"
        if targets is not None:
            method = "lora"
            model = get_peft_model(model, LoraConfig(r=rank, target_modules=list(targets), modules_to_save=list(modules_to_save) or None))
    targets = targets or LAYER_LINEARS
    spec = TrainingSpec(method=method, lora_rank=rank, lora_targets=targets, modules_to_save=modules_to_save, grad_ckpt=False)
    threshold = persistence_threshold_elems(arch, spec.deepspeed)
    fetching = hooked = 0

    def count(module, _args):
        nonlocal fetching, hooked
        if any(p.numel() > threshold for p in module.parameters(recurse=False)):
            fetching += 1
        else:
            hooked += 1

    for m in model.modules():
        m.register_forward_pre_hook(count)
    with torch.no_grad():
        model(torch.randint(0, 96, (1, 8)))
    # the formula counts forward + backward (2 passes without checkpointing)
    assert zero3_module_calls(arch, spec) == (2 * fetching, 2 * hooked)


def test_hook_overhead_measurement_runs(tmp_path):
    """harness/hook_overhead.py (the source of the zero3_* coefficients) runs on the CPU and
    appends one record; a few blocks, one step: only that it works, not the numbers."""
    pytest.importorskip("deepspeed", reason="harness extra (deepspeed) not installed")
    import json
    import subprocess
    import sys

    out = tmp_path / "hooks.jsonl"
    proc = subprocess.run([sys.executable, "-m", "harness.hook_overhead", "--blocks", "2", "--steps", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text().splitlines()[-1])
    assert rec["kind"] == "zero3_host_overhead" and rec["setup"]["linears"] == 18
    assert rec["seconds"]["z3"]["forward"] > rec["seconds"]["z0"]["forward"] > 0
    bad = subprocess.run([sys.executable, "-m", "harness.hook_overhead", "--blocks", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "at least 1" in bad.stderr
