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
from planner.schema.spec import LAYER_LINEARS, TrainingSpec  # noqa: E402

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


_COUNT_SCRIPT = """
import json, sys
import transformers
from harness import hook_overhead as ho
from planner.schema.spec import TrainingSpec
transformers.logging.set_verbosity_error()
ho._init()
out = []
for config, spec in json.loads(sys.stdin.read()):
    out.append(ho.count_zero3_calls(config, TrainingSpec(**spec)))
print(json.dumps(out))
"""

_TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 96, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
_SEED_TARGETS = [*LAYER_LINEARS, "embed_tokens", "lm_head"]
_CASES = [
    dict(method="full"),
    dict(method="lora"),  # all seven projections
    dict(method="lora", lora_targets=_SEED_TARGETS),  # the seed's "all layers"
    dict(method="lora", lora_targets=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"]),  # Sept 2023 template
    dict(method="lora", lora_targets=["gate_proj", "down_proj"]),  # the first layer's attention gets no backward
    dict(method="lora", lora_targets=["o_proj"], lora_rank=2),  # adapters under the persistence threshold
    dict(method="lora", lora_targets=["lm_head"]),  # no layer gets a backward
    dict(method="lora", lora_dropout=0.0),  # peft's nn.Identity is still a module call
]


def test_zero3_module_calls_match_deepspeeds_own_hook_calls():
    """``zero3_module_calls`` against the calls DeepSpeed's ZeRO-3 hooks actually make: two real
    steps of a tiny Llama (transformers + peft, DeepSpeed 1 process, gloo, CPU) per case, with
    and without checkpointing, plus tied embeddings; forward, re-run and backward all counted."""
    pytest.importorskip("deepspeed", reason="harness extra (deepspeed) not installed")
    import json
    import subprocess
    import sys

    from planner.catalog import architecture_from_config
    from planner.formulas.zero import zero3_module_calls

    jobs = [(_TINY, {**c, "grad_ckpt": ckpt}) for ckpt in (False, True) for c in _CASES]
    jobs += [({**_TINY, "tie_word_embeddings": True}, dict(method=m, grad_ckpt=False)) for m in ("full", "lora")]
    proc = subprocess.run([sys.executable, "-c", _COUNT_SCRIPT], input=json.dumps(jobs), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counted = json.loads(proc.stdout.strip().splitlines()[-1])
    for (config, spec), got in zip(jobs, counted, strict=True):
        arch = architecture_from_config(config, name="tiny")
        assert zero3_module_calls(arch, TrainingSpec(**spec)) == (got["fetching"], got["hooked"]), spec


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
