"""The planner against published measurements (data/published/, as records in
data/measurements/published/points.jsonl).

Throughput: with today's cited default coefficients (not fitted), the median absolute error over
the 46 throughput records is 9.4 % (11.0 % before the plateau efficiency followed each GPU's
measured matmul ceiling). H100 runs are still over-predicted (-2 to +16 %) and A100-80GB runs
under-predicted (-7 to -21 %): the matmul ceilings (0.803 vs 0.869 of peak) explain a third of
the gap between the generations; fitting per device from real runs (issue 5) is the next step.

The worst point is ``ray-70b-full-epoch``, predicted +409 %: Llama-2-70B on 32 A10G (4x
g5.48xlarge) with ZeRO-3 and the optimizer offloaded through unpinned (pageable) host buffers, a
CPU Adam step over 2.2 B parameters per rank, PCIe-only links inside the node and a 100 Gbps
network; the planner assumes pinned copies and no PCIe-switch contention (its ``known_gap``).
The other two Ray runs (+55 %, +87 %) share that gap. Among the points without a known gap the
worst is ``mfu:llm-foundry:a100-40gb:70b:seq2048:64gpu``, +25.7 %: the smallest per-GPU work of
any 70B point (micro batch 2 of 2048 tokens, no accumulation), so FSDP's all-gathers of the
70B weights are exposed for few tokens; the same run on 128 GPUs with micro batch 4 is -4.9 %.
The bounds (``PUBLISHED_*`` in planner/calibration/agreement.py, each with today's value) hold
today with a little margin: they guard against getting worse, and no coefficient was tuned to
meet them. Each point is held to its regime's band: a modelled point within
``PUBLISHED_WORST_MODELLED_ABS_ERROR_MAX``, a known-gap point over-predicted (its gap slows the
real run) by at most ``PUBLISHED_WORST_ABS_ERROR_MAX``; 10 % on the plateau compute efficiency,
the coefficient these compute-bound points pin, breaks a band.

Memory: one published point is specified well enough (``tt-l32-3b-packed``, torchtune's Peak
Memory Active of a packed, uncompiled full fine-tune of Llama 3.2 3B); the planner is -0.5 % on
it. See ``PUBLISHED_MEMORY_TOLERANCE``. The other rows of the reference list
(data/published/reference.json), and why they are not points, are the ``skipped`` lists of the
data files.

``python -m planner.calibration report`` prints the full table.
"""

from __future__ import annotations

import json
import statistics

import pytest

from planner.calibration.agreement import (
    PUBLISHED_MEDIAN_ABS_ERROR_MAX,
    PUBLISHED_MEMORY_TOLERANCE,
    PUBLISHED_WORST_ABS_ERROR_MAX,
    PUBLISHED_WORST_MODELLED_ABS_ERROR_MAX,
)
from planner.calibration.calibrate import with_values
from planner.calibration.published import (
    PublishedPoint,
    compare_published,
    points_file,
    predicted_tokens_per_s_per_gpu,
    published_jsonl,
    published_measurements,
    published_memory,
    published_throughput,
    reference_rows,
    skipped_points,
)
from planner.catalog import data_dir, load_calibration
from planner.errors import PlannerError
from planner.schema.calibration import Calibration
from planner.schema.records import Measurement, PublishedResult, read_measurements
from planner.units import GIB

POINTS = published_throughput()
RECORDS = published_measurements()


def _errors(what: str, records: tuple[Measurement, ...] = RECORDS) -> dict[str, float]:
    """source_id -> planner / published - 1 for one figure, over the records that give it."""
    out = {}
    for m in records:
        assert isinstance(m.result, PublishedResult)
        for c in compare_published(m):
            if c.what == what:
                out[m.result.source_id] = c.error_rel
    return out


def test_points_are_there():
    assert len(POINTS) >= 40
    ids = [p.id for p in POINTS] + [p.id for p in published_memory()]
    assert len(set(ids)) == len(ids)


def _outside_its_band(point: PublishedPoint, cal: Calibration | None = None) -> str | None:
    """Why the planner's tokens/s per GPU for ``point`` is outside its regime's band, or None:
    a modelled point within ``PUBLISHED_WORST_MODELLED_ABS_ERROR_MAX`` either way; a point with a
    ``known_gap`` (a run slower than the planner models) over-predicted, by at most
    ``PUBLISHED_WORST_ABS_ERROR_MAX``."""
    error = predicted_tokens_per_s_per_gpu(point, cal) / point.tokens_per_s_per_gpu - 1
    if point.known_gap is None:
        ok = abs(error) <= PUBLISHED_WORST_MODELLED_ABS_ERROR_MAX
    else:
        ok = 0 < error <= PUBLISHED_WORST_ABS_ERROR_MAX
    return None if ok else f"{point.id}: planner / published - 1 = {error:+.1%}"


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p.id)
def test_each_point_is_predicted_within_its_regimes_band(point):
    """No mapping is wildly wrong; points whose runs the planner knowingly does not model (their
    ``known_gap``) must err the way their gap says, and stay in the median and the table."""
    if point.known_gap is not None:
        assert "slower than predicted" in point.known_gap  # the direction the band holds them to
    assert _outside_its_band(point) is None


@pytest.mark.parametrize(
    "coefficient, factor, gap",
    [("compute_efficiency_max", 1.1, False), ("compute_efficiency_max", 0.9, False), ("network_efficiency", 0.5, True)],
    ids=["plateau +10%", "plateau -10%", "network -50%"],
)
def test_the_bands_fail_when_a_coefficient_is_off(coefficient, factor, gap):
    """The per-point bands can fail: 10 % on ``compute_efficiency_max`` (the step-time model's
    plateau, which the compute-bound llm-foundry points pin) puts a modelled point outside its
    band; half the network efficiency makes a Ray run (known gap) under-predicted."""
    cal = load_calibration()
    off = with_values(cal, {coefficient: cal.value(coefficient) * factor})
    outside = [p for p in POINTS if _outside_its_band(p, off)]
    assert outside and all((p.known_gap is not None) == gap for p in outside)


def test_median_error_against_published_throughput():
    errors = [abs(predicted_tokens_per_s_per_gpu(p) / p.tokens_per_s_per_gpu - 1) for p in POINTS]
    assert statistics.median(errors) <= PUBLISHED_MEDIAN_ABS_ERROR_MAX


# -- the records ---------------------------------------------------------------------------


def test_the_committed_records_are_what_the_data_files_give():
    """data/measurements/published/points.jsonl cannot drift from data/published/: after editing
    a point, run ``python -m planner.calibration published --write``."""
    assert points_file().read_text() == published_jsonl()


def test_every_record_loads_and_round_trips():
    loaded = read_measurements(points_file())
    assert loaded == list(RECORDS)
    assert {m.kind for m in loaded} == {"published"}
    assert all(isinstance(m.result, PublishedResult) and m.error is None for m in loaded)


def test_one_record_per_point_with_its_source_and_hardware():
    by_id = {m.result.source_id: m for m in RECORDS if isinstance(m.result, PublishedResult)}
    assert len(by_id) == len(RECORDS) == len(POINTS) + len(published_memory())
    for p in POINTS:
        r = by_id[p.id].result
        assert isinstance(r, PublishedResult)
        assert r.tokens_per_s_per_gpu == p.tokens_per_s_per_gpu and r.source == p.source == by_id[p.id].command
        assert r.gpu and (r.instance is None) == (p.plan_options.instance is None)
    ray = by_id["ray-7b-full-epoch"]
    assert (ray.model, ray.spec.world_size, ray.result.instance, ray.host) == ("llama-2-7b", 16, "g5.4xlarge", "NVIDIA A10G (AWS)")
    tt = by_id["tt-l32-3b-packed"]
    assert isinstance(tt.result, PublishedResult)
    assert tt.result.peak_memory_bytes_per_gpu == 60 * GIB and tt.result.memory_counter == "active"
    assert (tt.model, tt.spec.precision, tt.spec.grad_ckpt, tt.sharding) == ("llama-3.2-3b", "bf16", False, "none")


def test_every_reference_row_is_a_point_or_skipped_with_a_reason():
    """data/published/reference.json, the reference list the points were mapped from: each row
    a point or skipped, where it says, with a reason; nothing skipped that is not a row."""
    rows = reference_rows()
    reference = [r.id for r in rows]
    assert len(reference) == len(set(reference)) == 87
    points = {m.result.source_id for m in RECORDS if isinstance(m.result, PublishedResult)}
    skipped = {s.id: s.why for s in skipped_points()}
    assert not points & set(skipped)
    assert all(len(why) > 20 for why in skipped.values())
    assert sorted(set(reference) - points - set(skipped)) == []
    # the efficiency.json / README ids of llm-foundry are points without a reference row of their own
    assert sorted(set(skipped) - set(reference)) == []
    # each row is what it says it is, in the file it names
    for name in ("throughput.json", "memory.json"):
        raw = json.loads((data_dir() / "published" / name).read_text())
        in_file = {p["id"]: p for p in raw["points"]}
        skipped_here = {s["id"] for s in raw["skipped"]}
        assert {r.id for r in rows if r.in_file == name and r.taken_as == "point"} == set(in_file) & set(reference)
        assert {r.id for r in rows if r.in_file == name and r.taken_as == "skipped"} == skipped_here
        for r in rows:
            if r.in_file == name and r.taken_as == "point":  # the point's published figure is the row's
                assert (in_file[r.id]["published_value"], in_file[r.id]["published_unit"]) == (r.value, r.unit), r.id
    assert all(r.source for r in rows)


def _published_line(**result) -> dict:
    raw = json.loads(RECORDS[-1].model_dump_json())
    raw["result"].update(result)
    return raw


@pytest.mark.parametrize(
    "raw, message",
    [
        (_published_line(tokens_per_s_per_gpu=-1.0), r"field result\.tokens_per_s_per_gpu"),
        (_published_line(gpu=None), r"field result\.gpu"),
        (_published_line(memory_counter=None), r"field result: peak_memory_bytes_per_gpu and memory_counter go together"),
        (_published_line(tokens_per_s_per_gpu=None, peak_memory_bytes_per_gpu=None, memory_counter=None), r"needs tokens_per_s_per_gpu"),
        ({**_published_line(), "kind": "trace"}, r"a 'trace' record holds a TraceResult, not a PublishedResult"),
    ],
    ids=["negative-tokens", "no-gpu", "memory-without-counter", "no-figure", "kind-mismatch"],
)
def test_a_bad_published_record_names_its_field(tmp_path, raw, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(raw) + "\n")
    with pytest.raises(PlannerError, match=rf"bad.jsonl:1: .*{message}"):
        read_measurements(p)


# -- the planner's error on the records ------------------------------------------------------


def test_throughput_median_and_worst_error_on_the_records():
    errors = _errors("tokens_per_s_per_gpu")
    assert len(errors) == len(POINTS) + sum(p.tokens_per_s_per_gpu is not None for p in published_memory())
    gaps = {m.result.source_id for m in RECORDS if isinstance(m.result, PublishedResult) and m.result.known_gap}
    modelled = {k: abs(e) for k, e in errors.items() if k not in gaps}
    assert statistics.median(abs(e) for e in errors.values()) <= PUBLISHED_MEDIAN_ABS_ERROR_MAX
    assert max(modelled.values()) <= PUBLISHED_WORST_MODELLED_ABS_ERROR_MAX
    assert max(abs(e) for e in errors.values()) <= PUBLISHED_WORST_ABS_ERROR_MAX


@pytest.mark.parametrize("record", [m for m in RECORDS if m.result is not None and getattr(m.result, "memory_counter", None)],
                         ids=lambda m: m.result.source_id)
def test_peak_memory_per_gpu_on_the_records(record):
    (mem,) = [c for c in compare_published(record) if c.what == "peak_memory_bytes_per_gpu"]
    assert mem.predicted == pytest.approx(mem.published, rel=PUBLISHED_MEMORY_TOLERANCE)


def test_memory_median_and_worst_error_on_the_records():
    errors = [abs(e) for e in _errors("peak_memory_bytes_per_gpu").values()]
    assert len(errors) == len(published_memory()) >= 1
    assert statistics.median(errors) <= PUBLISHED_MEMORY_TOLERANCE and max(errors) <= PUBLISHED_MEMORY_TOLERANCE
