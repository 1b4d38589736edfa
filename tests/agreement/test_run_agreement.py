"""The planner against the committed real runs (data/measurements/run/, ``harness run`` on the
CPU: DeepSpeed ZeRO 0-3, 1 and 2 processes, tiny Llama shapes, full and LoRA), with the
calibration fitted to them (data/calibration/cpu.json).

Held exactly: parameters and optimizer states (the counted terms). Each phase's live peak within
``RUN_PHASE_TOLERANCE`` (10 %), every stage and method alike. Regenerate the records with ``harness calibrate cpu --out
data/measurements/run/cpu.jsonl`` (or ``python -m harness.run_grid``).
"""

from __future__ import annotations

import pytest

from planner.calibration import agreement
from planner.catalog import data_dir
from planner.schema.records import RunResult, read_measurements

RECORDS = [m for m in read_measurements(data_dir() / "measurements" / "run") if m.kind == "run"]


def test_there_are_runs_of_every_zero_stage_with_one_and_two_processes():
    seen = {(m.spec.zero_stage, m.spec.world_size) for m in RECORDS if m.result is not None}
    assert seen >= {(z, n) for z in range(4) for n in (1, 2)}


@pytest.mark.parametrize("record", [m for m in RECORDS if m.result is not None], ids=agreement.label)
def test_counted_terms_are_exact_and_peaks_near(record):
    assert isinstance(record.result, RunResult)
    bad = [(r.what, r.predicted, r.measured) for r in agreement.compare_run(record) if not r.ok]
    assert not bad


def test_the_planner_uses_the_cpu_calibration_for_cpu_runs():
    m = next(m for m in RECORDS if m.result is not None)
    cal = agreement.device_calibration(m)
    assert cal.device == "cpu" and cal.value("optimizer_scratch_states") == pytest.approx(2.0, abs=0.05)


def test_failed_runs_are_kept_with_their_error():
    for m in RECORDS:
        assert (m.result is None) == (m.error is not None)
