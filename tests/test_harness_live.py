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
