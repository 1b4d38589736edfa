"""The published runs of other stacks (data/published/stacks.json, issue 14): every point maps to a
plan on the stack it ran on, and the planner's error on them against the issue's targets."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from planner.api import resolve
from planner.calibration.published import planner_peak_memory_bytes, stack_memory_points, stack_points
from planner.catalog import calibration_for, data_dir, stack_names
from planner.estimate.memory import gpu_memory


def test_every_point_names_a_known_stack_and_plans():
    points = stack_memory_points()
    assert len(points) >= 19 and len({p.id for p in points}) == len(points)
    for p in points:
        assert p.plan_options.stack in stack_names(), p.id
    rows = stack_points()
    assert all(r.predicted > 0 and r.published > 0 for r in rows)


def test_skipped_rows_say_why_and_are_not_points():
    raw = json.loads((data_dir() / "published" / "stacks.json").read_text())
    ids = [p["id"] for part in ("points", "other", "skipped", "blocked") for p in raw[part]]
    assert len(ids) == len(set(ids))
    assert all(len(s["why"]) > 20 for s in raw["skipped"] + raw["blocked"])


SHARED_2 = Path(__file__).parents[3] / "shared" / "reference" / "published_measurements_2.jsonl"


@pytest.mark.skipif(not SHARED_2.exists(), reason="shared/reference/ is not beside this checkout")
def test_every_row_of_the_second_published_file_is_mapped_or_says_why_not():
    raw = json.loads((data_dir() / "published" / "stacks.json").read_text())
    ids = {p["id"] for part in ("points", "other", "skipped", "blocked") for p in raw[part]}
    rows = {json.loads(line)["id"] for line in SHARED_2.read_text().splitlines() if line.strip()}
    assert rows <= ids, sorted(rows - ids)[:5]


@pytest.mark.xfail(
    strict=True,
    reason="issue 14 not resolved: 46 points at median 6.6 %, p90 14.5 %, mean -3.4 % (2026-12-05); FSDP1's reserve, "
    "Lightning's fp16 lm_head copies and the overheads per regime are not modelled yet; "
    "`python -m planner.calibration report` prints every point",
)
def test_peak_memory_meets_the_issue_targets():
    errors = [r.error_rel for r in stack_points()]
    ranked = sorted(abs(e) for e in errors)
    p90 = ranked[math.ceil(0.9 * len(ranked)) - 1]
    assert statistics.median(ranked) <= 0.05 and p90 <= 0.12 and abs(statistics.fmean(errors)) <= 0.03


def _error(point_id: str, **update: object) -> float:
    """The planner's relative error on one published point, with ``update`` applied to its plan."""
    p = next(x for x in stack_memory_points() if x.id == point_id)
    arch, spec, gpu, _ = resolve(p.plan_options)
    mem = gpu_memory(arch, spec.model_copy(update=update), calibration_for("auto", gpu.id))
    return planner_peak_memory_bytes(mem, p.memory_counter) / p.peak_memory_bytes_per_gpu - 1


@pytest.mark.parametrize("point", ["litgpt-rt-l2-7b-lora-2xa100-mbs1", "litgpt-rt-l2-13b-lora-4xa100-mbs1"])
def test_fsdp1_no_sync_with_flat_units_explains_litgpts_multi_gpu_rows(point):
    """lit-gpt's LoRA over 2 and 4 A100s (FSDP1 per Block, use_orig_params, accumulating under
    no_backward_sync): within 5 % with the behaviours; a quarter low or more without no_sync (the
    whole-unit gradients then sharded), more than half without the whole-unit gradients."""
    assert abs(_error(point)) <= 0.05
    assert _error(point, fsdp_no_sync=False) < -0.25
    assert _error(point, fsdp_flat_grads=False) < -0.5


@pytest.mark.parametrize("point", ["litgpt-rt-l2-7b-qlora-nf4-mbs1", "litgpt-rt-l2-13b-qlora-nf4-mbs1"])
def test_old_bitsandbytes_keeping_its_inputs_explains_half_of_litgpts_qlora_gap(point):
    """lit-gpt's 2023 QLoRA tables ran bitsandbytes 0.41.1, whose MatMul4Bit keeps every input:
    about 10 % low with it, more than 20 % without. The rest (Lightning's dequantized fp16
    lm_head copies) is not modelled yet (docs/stacks.md)."""
    assert abs(_error(point)) <= 0.12
    assert _error(point, bnb_keeps_input=False) < -0.2
