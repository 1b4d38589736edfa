"""Step FLOPs by hand, measured records on disk, and the new plan options."""

from __future__ import annotations

import json

import pytest

from planner.catalog import data_dir, find_model
from planner.cli import main
from planner.errors import PlannerError
from planner.formulas.flops import step_flops
from planner.schema.records import append_measurement, read_measurements
from planner.schema.spec import TrainingSpec

A7 = find_model("7b")
T = 8 * 512
# Llama 2 7B matmul weights: 32 layers x (4 x 4096^2 + 3 x 4096 x 11008) + lm_head 32000 x 4096
N_MATMUL = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 32000 * 4096
ATTN_FWD = 32 * 4 * 8 * 32 * 512 * 512 * 128  # L x 4 b a s^2 d (QK^T and PV, full s x s)


def test_full_fine_tuning_flops_by_hand():
    """6 N T for the matmuls, attention 1x forward and 2.5x backward (fused kernel recomputes
    the scores): FlopCounterMode counted exactly this on the trace."""
    f = step_flops(A7, TrainingSpec(method="full", grad_ckpt=False))
    assert N_MATMUL == 6_607_077_376
    assert f.forward == 2 * N_MATMUL * T + ATTN_FWD == 55_224_689_491_968
    assert f.backward == 4 * N_MATMUL * T + ATTN_FWD * 5 // 2 == 110_999_134_797_824
    assert f.total == 6 * N_MATMUL * T + ATTN_FWD * 7 // 2


def test_lora_step_is_about_two_thirds_of_full_and_checkpointing_adds_a_forward():
    full = step_flops(A7, TrainingSpec(method="full", grad_ckpt=False))
    lora = step_flops(A7, TrainingSpec(method="lora", grad_ckpt=False))
    assert lora.total / full.total == pytest.approx(0.675, abs=0.005)
    ckpt = step_flops(A7, TrainingSpec(method="full", grad_ckpt=True))
    # the re-run is every layer's forward except its last projection (early stop), not lm_head
    recompute = ckpt.backward - full.backward
    layers_fwd = full.forward - 2 * 32000 * 4096 * T
    assert recompute == layers_fwd - 32 * 2 * T * 11008 * 4096


def test_eager_attention_backward_is_twice_its_forward():
    sdpa = step_flops(A7, TrainingSpec(method="full", grad_ckpt=False, attention="sdpa"))
    eager = step_flops(A7, TrainingSpec(method="full", grad_ckpt=False, attention="eager"))
    assert sdpa.forward == eager.forward
    assert sdpa.backward - eager.backward == ATTN_FWD // 2


def _record_line(**over) -> str:
    """The first committed 7B trace record as a JSON line, with fields replaced."""
    record = read_measurements(data_dir() / "measurements" / "trace" / "llama-2-7b.jsonl")[0]
    raw = json.loads(record.model_dump_json())
    raw.update(over)
    return json.dumps(raw)


def test_records_round_trip_and_append_whole_lines(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(_record_line() + "\n")
    (record,) = read_measurements(one)
    path = tmp_path / "m.jsonl"
    append_measurement(path, record)
    append_measurement(path, record)
    assert read_measurements(path) == [record, record]
    assert path.read_text().count("\n") == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"schema_version": 2}', "schema_version 2"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "schema_version None"),
    ],
)
def test_bad_record_files_name_the_file_and_line(tmp_path, text, message):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n" + text + "\n")
    with pytest.raises(PlannerError, match=rf"bad.jsonl:2: .*{message}"):
        read_measurements(p)


def test_a_hand_edited_field_is_named(tmp_path):
    raw = json.loads(_record_line())
    raw["result"]["peak_bytes"] = -1
    p = tmp_path / "edited.jsonl"
    p.write_text(json.dumps(raw) + "\n")
    with pytest.raises(PlannerError, match=r"edited.jsonl:1: field result.peak_bytes"):
        read_measurements(p)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sharding", "fsdp2", "--offload", "all"], "--offload none"),
        (["--sharding", "fsdp2", "--offload", "none", "--precision", "fp32"], "bf16"),
        (["--sharding", "fsdp2", "--offload", "none", "--zero", "2"], "--zero 3"),
    ],
)
def test_fsdp2_needs_what_it_models(argv, message, capsys):
    assert main(["--model", "7b", "--gpu", "h100", "--gpus", "8", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unpadded_batches_keep_grouped_kv_for_sdpa(capsys):
    """70B has 8 k/v heads for 64 query heads: without a padding mask SDPA keeps k/v at 8 heads."""
    peaks = []
    for flag in ("--padding-mask", "--no-padding-mask"):
        assert main(["--model", "70b", "--gpu", "h100", "--gpus", "8", "--offload", "none", "--no-grad-ckpt", flag, "--json"]) == 0
        peaks.append(json.loads(capsys.readouterr().out)["memory"]["per_gpu"]["peak_allocated_bytes"])
    padded, unpadded = peaks
    # per layer: k and v at 56 of 64 heads fewer, b8 s512 bf16, plus the bool s x s mask
    assert padded - unpadded == 80 * 2 * 2 * 8 * 512 * 56 * 128 + 8 * 512 * 512


def test_a_bad_run_record_names_the_run_field(tmp_path):
    import json

    from planner.errors import PlannerError
    from planner.schema.records import read_measurements

    rec = {"schema_version": 1, "kind": "run", "model": "llama-2-7b-tiny", "spec": {}, "tool": "t", "versions": {}, "command": "c",
           "date": "2026-11-28", "host": "h", "result": {"device": "cpu", "world_size": 0}}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(PlannerError, match=r"bad.jsonl:1: field result\.world_size"):
        read_measurements(path)
