"""``harness run``: real DeepSpeed (+ peft) training steps of a tiny Llama on the CPU.

Needs the harness extra (torch, transformers, peft, deepspeed); skipped with a reason
otherwise. Each run takes 10-20 s on the CI machine (DeepSpeed's start-up dominates).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="harness extra (torch) not installed")
pytest.importorskip("deepspeed", reason="harness extra (deepspeed) not installed")
pytest.importorskip("peft", reason="harness extra (peft) not installed")

from harness.cli import main  # noqa: E402
from planner.calibration.agreement import LIVE_RUN_PHASE_TOLERANCE  # noqa: E402
from planner.catalog import (
    find_model,  # noqa: E402
    load_calibration,  # noqa: E402
)
from planner.estimate.memory import gpu_memory  # noqa: E402
from planner.formulas import checkpoint as ckpt  # noqa: E402
from planner.schema.records import RunResult, read_measurements  # noqa: E402

pytestmark = pytest.mark.harness
TINY = find_model("7b-tiny")


def _run(tmp_path, capsys, *args):
    out = tmp_path / "runs.jsonl"
    rc = main(["run", "--model", "7b-tiny", "--batch-size", "4", "--seq-len", "128", "--steps", "2", "--out", str(out), "--json", *args])
    printed = capsys.readouterr()
    return rc, printed, read_measurements(out)


def test_lora_zero2_one_process_matches_the_planner_and_writes_its_adapter(tmp_path, capsys):
    rc, printed, records = _run(tmp_path, capsys, "--method", "lora", "--zero", "2")
    assert rc == 0, printed.err[-2000:]
    (record,) = records
    r = record.result
    assert isinstance(r, RunResult) and record.kind == "run" and r.world_size == 1
    assert json.loads(printed.out)["peak_bytes"] == r.peak_bytes
    # the adapter save_pretrained wrote holds exactly the planner's adapter bytes (DeepSpeed
    # trains the adapters in bf16 under ZeRO-2)
    assert r.checkpoint is not None and "pretrained/adapter_model.safetensors" in r.checkpoint.files_bytes
    assert r.checkpoint.pretrained_tensor_bytes == ckpt.adapter_bytes(TINY, record.spec).total == 156_160 * 2
    # parameters and optimizer states are exact; each phase's live tensors within
    # LIVE_RUN_PHASE_TOLERANCE (5 %) of the planner calibrated for CPU runs
    # (data/calibration/cpu.json: torch's single-tensor AdamW)
    pred = gpu_memory(TINY, record.spec, load_calibration("cpu")).phases
    for phase, ph in r.phases.items():
        assert ph.at_peak_bytes.parameters == pred[phase].parameters == (4_188_416 + 156_160) * 2  # base + adapters, bf16
        assert ph.at_peak_bytes.optimizer_states - pred[phase].optimizer_states in (0, 4)  # + Adam's step counter
        assert pred[phase].total == pytest.approx(ph.peak_bytes, rel=LIVE_RUN_PHASE_TOLERANCE), phase
    assert r.tokens_per_s > 0 and len(r.step_times_s) == 2


def test_zero3_over_two_processes_partitions_what_it_should(tmp_path, capsys):
    rc, printed, records = _run(tmp_path, capsys, "--method", "full", "--zero", "3", "--nproc", "2", "--no-save")
    assert rc == 0, printed.err[-2000:]
    r = records[0].result
    assert isinstance(r, RunResult) and r.world_size == 2 and len(r.rank_peaks_bytes) == 2
    # fp32 master + two moments of half the 4,188,416 parameters on each rank (+ a step counter)
    assert r.parameters.total == 4_188_416
    opt = r.phases["optimizer_step"].at_peak_bytes.optimizer_states
    assert 12 * 4_188_416 // 2 <= opt <= 12 * 4_188_416 // 2 + 64


def test_a_rank_that_dies_is_recorded_not_lost(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_FAULT_RANK", "1")
    rc, printed, records = _run(tmp_path, capsys, "--method", "lora", "--zero", "1", "--nproc", "2", "--no-save")
    assert rc == 1 and "the run failed" in printed.err
    (record,) = records
    assert record.result is None and "injected fault on rank 1" in (record.error or "")


def test_bad_run_input_is_one_line(capsys):
    assert main(["run", "--model", "7b-tiny", "--lora-rank", "1000"]) == 2
    assert "lora-rank" in capsys.readouterr().err
    assert main(["run", "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_gpu_calibration_script_dry_run_on_the_cpu(tmp_path):
    """harness/gpu_calibration.sh with DRY_RUN=1: the same nine runs with a tiny model on the
    CPU, every one recorded (the offloaded one included)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "dry.jsonl"
    env = dict(os.environ, DRY_RUN="1", OUT=str(out))
    proc = subprocess.run(["bash", str(root / "harness" / "gpu_calibration.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_measurements(out)
    assert len(records) == 9, proc.stderr[-3000:]
    failed = [(r.spec.method, r.spec.zero_stage, r.spec.offload, r.error) for r in records if r.result is None]
    assert not failed
    assert {(r.spec.zero_stage, r.spec.offload) for r in records} == {(2, "none"), (3, "none"), (2, "optimizer")}
    assert "(0 run(s) failed" in proc.stderr
    # then the fit, written beside the records (a real run writes data/calibration/<gpu>.json)
    from planner.catalog import load_calibration

    cal = load_calibration(str(tmp_path / "calibration.json"))
    assert cal.fitted and cal.device == "cpu" and cal.n_records == 9


def test_json_output_is_only_json_on_stdout():
    """``harness run --json`` in a fresh process: stdout holds the JSON alone (DeepSpeed's
    import-time log line went to stdout once)."""
    import subprocess
    import sys

    args = ["run", "--model", "7b-tiny", "--method", "lora", "--zero", "0", "--steps", "1", "--warmup", "0", "--no-save", "--json"]
    code = "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["world_size"] == 1
