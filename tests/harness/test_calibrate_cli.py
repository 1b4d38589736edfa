"""``harness calibrate``'s fit-only paths, its refusals and the resume rules: no runs, no torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.calibrate import device_of
from harness.cli import main
from harness.grid import expand, key, load_grid, record_key, run_grid
from planner.catalog import load_calibration
from planner.errors import PlannerError
from planner.schema.records import Measurement, RunResult, append_measurement, read_measurements

RUNS = Path(__file__).resolve().parents[2] / "data" / "measurements" / "run" / "cpu.jsonl"


def test_a_records_file_is_fitted_as_it_is(tmp_path, capsys):
    out = tmp_path / "cal.json"
    assert main(["calibrate", str(RUNS), "--calibration-out", str(out)]) == 0
    cal = load_calibration(str(out))
    assert cal.fitted and cal.device == "cpu" and cal.n_records == 48
    assert "optimizer_scratch_states" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibration-out", "{tmp}"], "give a file in an existing, writable folder"),
        (["--calibration-out", "{tmp}/no/such/x.json"], "give a file in an existing, writable folder"),
        (["--out", "{tmp}/x.jsonl"], "only fitted"),
    ],
)
def test_bad_targets_are_refused_before_anything_runs(tmp_path, capsys, args, message):
    argv = ["calibrate", str(RUNS), *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_fit_only_runs_nothing_and_says_so(tmp_path, capsys):
    assert main(["calibrate", "ci", "--fit-only", "--limit", "2", "--out", str(RUNS)]) == 2
    assert "--fit-only runs nothing" in capsys.readouterr().err
    assert main(["calibrate", "ci", "--fit-only", "--out", str(tmp_path / "none.jsonl")]) == 2
    assert "no records file" in capsys.readouterr().err


def test_a_calibration_from_other_records_is_not_replaced_without_force(tmp_path, capsys):
    target = tmp_path / "cal.json"
    assert main(["calibrate", str(RUNS), "--calibration-out", str(target)]) == 0
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("\n".join(RUNS.read_text().splitlines()[:12]) + "\n")
    capsys.readouterr()
    assert main(["calibrate", str(fewer), "--calibration-out", str(target)]) == 2
    assert "--force" in capsys.readouterr().err
    assert load_calibration(str(target)).n_records == 48  # untouched (read again: the cache knows the file changed)
    assert main(["calibrate", str(fewer), "--calibration-out", str(target), "--force"]) == 0
    assert json.loads(target.read_text())["provenance"]["records"] == {str(fewer): 12}


def _as_gpu(m: Measurement, device: str) -> Measurement:
    r = m.result
    assert isinstance(r, RunResult)
    phases = {k: ph.model_copy(update={"cuda_max_allocated_bytes": ph.peak_bytes}) for k, ph in r.phases.items()}
    return m.model_copy(update={"result": r.model_copy(update={"device": device, "phases": phases})})


def test_the_device_comes_from_the_cuda_counters_not_the_name():
    runs = [m for m in read_measurements(RUNS) if m.result is not None][:3]
    assert device_of(runs) == "cpu"
    assert device_of([_as_gpu(m, "Tesla T4") for m in runs]) == "t4"  # not "NVIDIA ..."
    with pytest.raises(PlannerError, match="mix GPU and CPU"):
        device_of([_as_gpu(runs[0], "NVIDIA H200"), *runs[1:]])
    with pytest.raises(PlannerError, match="several GPUs"):
        device_of([_as_gpu(runs[0], "NVIDIA H200"), _as_gpu(runs[1], "Tesla T4")])


def test_a_recorded_failure_is_done_unless_retried(tmp_path, monkeypatch):
    """Resuming skips specs already recorded, failed ones too; --retry-failed runs those again
    (the newest record of a spec is the one the fit uses)."""
    import harness.run

    grid = load_grid("ci")
    jobs = expand(grid)
    first = next(m for m in read_measurements(RUNS) if record_key(m) == key(*jobs[0]))
    out = tmp_path / "r.jsonl"
    append_measurement(out, first.model_copy(update={"result": None, "error": "out of memory"}))
    ran: list[str] = []

    def fake_run_record(arch, spec, opts, command, progress=None, launcher=None):  # type: ignore[no-untyped-def]
        ran.append(key(arch.name, spec, spec.world_size))
        return first.model_copy(update={"spec": spec, "model": arch.name, "command": command})

    monkeypatch.setattr(harness.run, "run_record", fake_run_record)
    assert run_grid(grid, out, "test", limit=1, progress=lambda _: None) == 1
    assert ran == [key(*jobs[1])]  # the failed first spec was not run again
    assert run_grid(grid, out, "test", limit=1, retry_failed=True, progress=lambda _: None) == 1
    assert ran[-1] == key(*jobs[0])
    from harness.grid import grid_records

    latest = {record_key(m): m for m in grid_records(grid, out)}
    assert latest[key(*jobs[0])].result is not None  # the retry's record wins
