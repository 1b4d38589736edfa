"""Run the trace tool itself (fake tensors, no GPU): full-size Llama 2 7B LoRA steps (the second is the steady state the planner predicts).

Needs the harness extra (torch, transformers, peft); skipped with a reason otherwise. About
15-30 s on a 2-core machine.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="harness extra (torch) not installed")
pytest.importorskip("transformers", reason="harness extra (transformers) not installed")
pytest.importorskip("peft", reason="harness extra (peft) not installed")

from harness.cli import main  # noqa: E402
from planner.calibration import agreement  # noqa: E402
from planner.schema.records import read_measurements  # noqa: E402

pytestmark = pytest.mark.harness


def test_live_trace_of_7b_lora_agrees_with_the_planner(tmp_path, capsys):
    out = tmp_path / "trace.jsonl"
    rc = main(["trace", "--model", "7b", "--method", "lora", "--steps", "2", "--out", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    (record,) = read_measurements(out)
    assert record.result is not None and printed["peak_bytes"] == record.result.peak_bytes
    # the --json contract (issue 3)
    assert set(printed["at_peak_bytes"]) == {"parameters", "gradients", "optimizer_states", "activations", "temporaries"}
    assert sum(printed["at_peak_bytes"].values()) == printed["peak_bytes"]
    assert set(printed["phase_peaks_bytes"]) == {"forward", "backward", "optimizer_step"}
    assert max(printed["phase_peaks_bytes"].values()) == printed["peak_bytes"]
    assert printed["flops"]["forward"] > 0 and printed["flops"]["backward"] > printed["flops"]["forward"]
    assert printed["parameters"]["total"] == 6_738_415_616 + 19_988_480 and printed["wall_s"] > 0
    assert len(printed["steps"]) == 2  # the first step (no optimizer states yet) is reported too
    assert record.result.parameters.trainable == 19_988_480  # r=8 on all seven projections, peft's count
    assert record.result.max_rss_bytes < 2 * 2**30
    rows = agreement.compare(record)
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trace", "--model", "7b", "--method", "qlora"], "qlora"),
        (["trace", "--model", "nope"], "unknown model"),
        (["trace", "--model", "7b", "--lora-targets", "q_proj,foo"], "foo"),
        (["trace", "--model", "7b", "--batch-size", "0"], "batch-size"),
        (["trace", "--model", "7b", "--out", "/"], "is a folder"),
        (["trace", "--model", "7b", "--out", "/no/such/dir/x.jsonl"], "does not exist"),
        (["trace", "--model", "llama-3.2-1b", "--modules-to-save", "lm_head"], "ties lm_head"),
        (["trace", "--model", "7b", "--method", "full", "--modules-to-save", "lm_head"], "method lora"),
        (["trace", "--model", "7b", "--lora-rank", "100000"], "lora-rank"),
        (["trace", "--model", "7b", "--world-size", "8", "--precision", "fp32"], "fsdp2"),
    ],
)
def test_bad_trace_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error:") and message in err.lower() and "Traceback" not in err


def test_a_failed_trace_is_recorded_with_its_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    import harness.trace

    def boom(*a, **k):
        raise RuntimeError("out of fake memory")

    monkeypatch.setattr(harness.trace, "trace", boom)
    out = tmp_path / "runs.jsonl"
    assert main(["trace", "--model", "7b", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: out of fake memory" in err and "Traceback" not in err
    (record,) = read_measurements(out)
    assert record.result is None and record.error == "RuntimeError: out of fake memory"
