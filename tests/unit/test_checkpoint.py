"""Checkpoint sizes and the adapter dtype rules, worked by hand."""

from __future__ import annotations

import pytest

from planner.catalog import find_model
from planner.formulas import checkpoint as ckpt
from planner.formulas.dtypes import adapter_bytes_per_elem
from planner.schema.spec import TrainingSpec


@pytest.mark.parametrize(
    "precision,zero,expected",
    [
        ("bf16-mixed", 3, 4),
        ("bf16-mixed", 2, 2),
        ("bf16-mixed", 0, 2),
        ("fp16-mixed", 3, 4),
        ("bf16", 3, 2),
        ("amp-bf16", 1, 4),
        ("fp32", 0, 4),
    ],
)
def test_auto_adapter_dtype(precision, zero, expected):
    offload = "optimizer" if zero else "none"
    assert adapter_bytes_per_elem(TrainingSpec(precision=precision, zero_stage=zero, offload=offload)) == expected


def test_explicit_adapter_dtype_wins():
    assert adapter_bytes_per_elem(TrainingSpec(adapter_dtype="bf16", zero_stage=3)) == 2


def test_full_training_state_is_14_bytes_per_parameter():
    # bf16 weights (2) + fp32 master (4) + two fp32 Adam moments (8)
    assert ckpt.training_state_bytes(TrainingSpec(method="full"), 6_738_415_616) == 14 * 6_738_415_616


def test_lora_training_state_keeps_fp32_adapters():
    lora = 103_546_880  # Llama 2 70B, r=8 on all linear layers (tests/golden)
    assert ckpt.training_state_bytes(TrainingSpec(method="lora"), lora, lora) == (4 + 4 + 8) * lora


def test_merged_model_grows_with_added_tokens():
    arch = find_model("7b")
    spec = TrainingSpec(method="lora", added_tokens=4)
    assert ckpt.merged_model_bytes(arch, spec) - ckpt.model_weights_bytes(arch, spec) == 2 * 2 * 4 * 4096


def test_copies_that_fit():
    assert ckpt.copies_that_fit(100, 10) == 10
    assert ckpt.copies_that_fit(100, 10, shared_bytes=35) == 6
    assert ckpt.copies_that_fit(10, 10, shared_bytes=35) == 0
