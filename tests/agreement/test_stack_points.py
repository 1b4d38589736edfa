"""The published runs of other stacks (data/published/stacks.json, issue 14): every point maps to a
plan on the stack it ran on, and the planner's error on them against the issue's targets."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from planner.calibration.published import stack_memory_points, stack_points
from planner.catalog import data_dir, stack_names


def test_every_point_names_a_known_stack_and_plans():
    points = stack_memory_points()
    assert len(points) >= 19 and len({p.id for p in points}) == len(points)
    for p in points:
        assert p.plan_options.stack in stack_names(), p.id
    rows = stack_points()
    assert all(r.predicted > 0 and r.published > 0 for r in rows)


def test_skipped_rows_say_why_and_are_not_points():
    raw = json.loads((data_dir() / "published" / "stacks.json").read_text())
    ids = [p["id"] for p in raw["points"]] + [s["id"] for s in raw["skipped"]] + [o["id"] for o in raw["other"]]
    assert len(ids) == len(set(ids))
    assert all(len(s["why"]) > 20 for s in raw["skipped"])


@pytest.mark.xfail(
    strict=True,
    reason="issue 14 not resolved: Lightning QLoRA (-20..-29 %) and FSDP1 under litgpt (-52..-73 %) are not modelled yet; "
    "`python -m planner.calibration report` prints every point",
)
def test_peak_memory_meets_the_issue_targets():
    errors = [r.error_rel for r in stack_points()]
    ranked = sorted(abs(e) for e in errors)
    p90 = ranked[math.ceil(0.9 * len(ranked)) - 1]
    assert statistics.median(ranked) <= 0.05 and p90 <= 0.12 and abs(statistics.fmean(errors)) <= 0.03
