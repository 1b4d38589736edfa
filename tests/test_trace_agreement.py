"""The planner against the committed traces (data/measurements/trace/*.jsonl), no torch needed.

Each record is a full-size training step traced by ``harness trace`` (regenerate with
``python -m harness.trace_grid``). Tolerances live in planner/agreement.py: each category within
3 % (or, when it is under 0.5 % of its phase, within that), the peak within 2 % (5 % sharded),
FLOPs within 1 %. The perturbation tests show the comparison can fail: 10 % on any one of the
planner's terms breaks agreement with some record.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from planner import agreement, memory
from planner.catalog import data_dir
from planner.formulas import activations as act
from planner.formulas import dtypes as dts
from planner.formulas import flops as fl
from planner.measurement import read_measurements

RECORDS = read_measurements(data_dir() / "measurements" / "trace")
SINGLE = [m for m in RECORDS if m.sharding == "none"]


def test_the_committed_grid_is_complete():
    """Issue 3's grid: Llama 2 7B/13B/70B x full/LoRA x checkpointing on/off x sdpa/eager, b8 s512."""
    want = set(itertools.product(("llama-2-7b", "llama-2-13b", "llama-2-70b"), ("full", "lora"), (True, False), ("sdpa", "eager")))
    have = {
        (m.model, m.spec.method, m.spec.grad_ckpt, m.spec.attention)
        for m in SINGLE
        if m.spec.micro_batch_size == 8 and m.spec.seq_len == 512 and m.result is not None
    }
    assert want <= have, sorted(want - have)


@pytest.mark.parametrize("record", RECORDS, ids=agreement.label)
def test_planner_agrees_with_the_trace(record):
    rows = agreement.compare(record)
    bad = [f"{r.what}: planner {r.predicted:,} vs trace {r.measured:,} ({r.error_rel:+.2%})" for r in rows if not r.ok]
    assert not bad, bad
    assert any(r.what == "peak" for r in rows)
    if record.sharding == "none":
        assert any(r.what.startswith("flops") for r in rows)


def _scale(fn, factor=1.1):
    def wrapped(*a, **k):
        out = fn(*a, **k)
        if isinstance(out, int):
            return int(out * factor)
        if isinstance(out, list):
            return [
                dataclasses.replace(x, **{f: int(getattr(x, f) * factor) for f in ("bytes", "temporaries") if hasattr(x, f)}) for x in out
            ]
        return type(out)(**{k: int(v * factor) for k, v in dataclasses.asdict(out).items()})

    return wrapped


PERTURBATIONS = {
    "layer activation inventory": (act, "layer_inventory"),
    "checkpointed layer input": (act, "layer_checkpoint_input"),
    "head and loss saved tensors": (act, "model_level_saved"),
    "loss backward gradients": (act, "loss_backward_transient"),
    "optimizer state bytes": (memory, "optimizer_state_bytes"),
    "optimizer step scratch": (memory, "optimizer_step_temp_bytes"),
    "step FLOPs": (fl, "_layer"),
}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_agreement_fails_when_a_planner_term_is_off_by_10_percent(name, monkeypatch):
    module, attr = PERTURBATIONS[name]
    original = getattr(module, attr)
    if attr == "_layer":
        monkeypatch.setattr(module, attr, lambda *a, **k: tuple(int(x * 1.1) for x in original(*a, **k)))
    elif attr == "layer_checkpoint_input":
        monkeypatch.setattr(module, attr, lambda *a, **k: act.Saved(original(*a, **k).name, int(original(*a, **k).bytes * 1.1)))
    else:
        monkeypatch.setattr(module, attr, _scale(original))
    failing = [agreement.label(m) for m in SINGLE if not all(r.ok for r in agreement.compare(m))]
    assert failing, f"10% on {name} went unnoticed"


def test_state_bytes_are_the_ones_the_trace_saw():
    """Sanity of the perturbation hook: the composition reads these names at call time."""
    assert memory.optimizer_state_bytes is dts.optimizer_state_bytes
