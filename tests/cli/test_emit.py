"""``plan --emit DIR`` (issue 6): ready-to-run configs that read back into the same plan, and a
run spec that ``harness run --spec`` measures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.catalog import find_model
from planner.cli import main
from planner.configs.emit import FILES, read_run_spec
from planner.errors import PlannerError
from planner.formulas.zero import persistence_threshold_elems, prefetch_bucket_elems, reduce_bucket_elems

ROOT = Path(__file__).resolve().parents[2]
BUCKET = ["--reduce-bucket-size", "500000000"]


def _plan(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _resolved(plan: dict) -> dict:
    """The plan with its DeepSpeed sizes resolved to elements (an emitted file writes Hugging
    Face's "auto" values out) and without the record of where settings came from (the stack's
    behaviours keep their values, not their sources)."""
    plan = dict(plan)
    plan.pop("settings_sources"), plan.pop("settings_ignored")
    stack = plan.pop("stack")
    plan["stack_values"] = {k: b["value"] for k, b in stack["behaviours"].items()}, stack["name"]
    spec = dict(plan["inputs"]["spec"])
    from planner.schema.spec import DeepSpeedConfig

    ds = DeepSpeedConfig.model_validate(spec["deepspeed"])
    arch = find_model(plan["inputs"]["model"])
    spec["deepspeed"] = {
        **ds.model_dump(),
        "reduce_bucket_size": reduce_bucket_elems(arch, ds),
        "stage3_prefetch_bucket_size": prefetch_bucket_elems(arch, ds),
        "stage3_param_persistence_threshold": persistence_threshold_elems(arch, ds),
    }
    plan["inputs"] = {**plan["inputs"], "spec": spec}
    return plan


@pytest.mark.parametrize(
    ("model", "hardware", "options"),
    [
        ("7b", ["--instance", "p4de.24xlarge"], ["--method", "lora"]),
        ("13b", ["--instance", "p4de.24xlarge"], ["--method", "lora", "--offload", "all", "--lora-targets", "all", "--batch-size", "16"]),
        ("70b", ["--gpu", "h100", "--gpus", "8", "--nodes", "2"], ["--method", "full", "--zero", "3", "--grad-accum", "4"]),
        ("7b", ["--gpu", "a10g", "--gpus", "4"], ["--method", "lora", "--zero", "2", "--offload", "none", "--precision", "fp16-mixed"]),
        ("llama3.1-8b", ["--instance", "p5.48xlarge"], ["--method", "lora", "-r", "64", "--lora-targets", "q_proj,v_proj", *BUCKET]),
    ],
)
def test_emit_then_read_back_gives_the_same_plan(capsys, tmp_path, model, hardware, options):
    first = _plan(capsys, "--model", model, *hardware, *options, "--emit", str(tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f for f in FILES if not (f == "adapter_config.json" and "full" in options))
    files = ["--deepspeed", str(tmp_path / "ds_config.json"), "--accelerate-config", str(tmp_path / "accelerate_config.yaml")]
    if (tmp_path / "adapter_config.json").exists():
        files += ["--peft", str(tmp_path / "adapter_config.json")]
    method = ["--method", options[options.index("--method") + 1]]
    # what the files cannot carry (the model, the hardware, the training script's sequence length)
    again = _plan(capsys, "--model", model, *(hardware if "--instance" in hardware else hardware[:2]), *method, *files)
    assert _resolved(again) == _resolved(first)
    assert again["settings_sources"]["zero_stage"] == "ds_config.json: zero_optimization.stage"
    assert read_run_spec(tmp_path).spec.model_dump(mode="json") == first["inputs"]["spec"]


def test_emitted_files_are_what_a_user_launches(capsys, tmp_path):
    _plan(capsys, "--model", "70b", "--gpu", "h100", "--gpus", "8", "--nodes", "2", "--method", "full", "--emit", str(tmp_path))
    launch = (tmp_path / "launch.sh").read_text()
    assert os.access(tmp_path / "launch.sh", os.X_OK) and "--num_nodes 2 --num_gpus 8" in launch
    acc = (tmp_path / "accelerate_config.yaml").read_text()
    assert "num_processes: 16" in acc and "num_machines: 2" in acc and "main_process_ip" in acc
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert not (tmp_path / "adapter_config.json").exists()  # full fine-tuning has no adapter
    assert not list(tmp_path.glob(".*.tmp"))


def test_emit_errors_are_one_line(capsys, tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert main(["--model", "7b", "--gpu", "a100", "--emit", str(a_file)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(["compare", "--model", "7b", "--gpu", "a100", "--emit", str(tmp_path / "d")]) == 2
    assert main(["sweep", "--model", "7b", "--gpu", "a100", "--emit", str(tmp_path / "d")]) == 2
    assert main(["--model", "7b", "--gpu", "a100", "--optimizer", "adamw8bit", "--offload", "none", "--emit", str(tmp_path / "d")]) == 2
    assert "adamw8bit" in capsys.readouterr().err


def test_a_bad_run_spec_names_the_file(tmp_path):
    f = tmp_path / "run_spec.json"
    f.write_text('{"model": "7b", "spec": {"zero_stage": 9}}')
    with pytest.raises(PlannerError, match=r"run_spec.json: spec.zero_stage"):
        read_run_spec(f)
    f.write_text("{")
    with pytest.raises(PlannerError, match="run_spec.json"):
        read_run_spec(f)


@pytest.mark.harness
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the harness extra (deepspeed)")
def test_harness_runs_the_emitted_spec_on_the_cpu(capsys, tmp_path):
    plan = _plan(
        capsys, "--model", "7b-tiny", "--gpu", "a100", "--zero", "2", "--offload", "none", "--batch-size", "2", "--seq-len", "64",
        "--emit", str(tmp_path),
    )  # fmt: skip
    cmd = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())", "run", "--spec", str(tmp_path)]
    records = tmp_path / "measured.jsonl"
    done = subprocess.run(
        [*cmd, "--steps", "1", "--warmup", "0", "--no-save", "--out", str(records)],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(records.read_text())
    assert record["spec"] == plan["inputs"]["spec"] and record["model"] == "llama-2-7b-tiny" and record["error"] is None
    # the planner's GPU defaults already land near this CPU run (the dropout mask differs)
    measured, planned = record["result"]["peak_bytes"], plan["memory"]["per_gpu"]["peak_allocated_bytes"]
    assert abs(planned - measured) < 0.1 * measured
    assert subprocess.run([*cmd, "--zero", "3"], cwd=ROOT, capture_output=True, text=True).returncode == 2


def test_emit_refuses_what_it_cannot_write_and_quotes_no(capsys, tmp_path):
    for bad in (["--sharding", "fsdp2", "--offload", "none", "--precision", "bf16"], ["--precision", "amp-bf16"], ["--precision", "bf16"]):
        assert main(["--model", "7b", "--gpu", "a100", *bad, "--emit", str(tmp_path / "x")]) == 2
        assert "emit" in capsys.readouterr().err
    # fp32: accelerate's mixed_precision 'no' reads back as fp32 (YAML's bare no is false)
    first = _plan(capsys, "--model", "7b", "--gpu", "a100", "--gpus", "2", "--precision", "fp32", "--emit", str(tmp_path / "f"))
    files = ["--deepspeed", str(tmp_path / "f" / "ds_config.json"), "--accelerate-config", str(tmp_path / "f" / "accelerate_config.yaml")]
    again = _plan(capsys, "--model", "7b", "--gpu", "a100", *files, "--peft", str(tmp_path / "f" / "adapter_config.json"))
    assert _resolved(again) == _resolved(first)


def test_a_multi_node_launch_script_does_not_offer_harness_run(capsys, tmp_path):
    _plan(capsys, "--model", "7b", "--gpu", "a100", "--gpus", "8", "--nodes", "2", "--emit", str(tmp_path))
    assert "\nharness run" not in (tmp_path / "launch.sh").read_text()


@pytest.mark.parametrize(("field", "value"), [("method", "qlora"), ("sharding", "fsdp2"), ("attention", "flash"), ("optimizer", "sgd")])
def test_harness_run_spec_refuses_what_harness_run_cannot_run(tmp_path, field, value):
    pytest.importorskip("typer")
    from harness.cli import main as harness_main

    spec = {"method": "lora", "zero_stage": 2, "offload": "none"}
    if value == "fsdp2":
        spec.update(sharding="fsdp2", zero_stage=3, precision="bf16")
    else:
        spec[field] = value
    (tmp_path / "run_spec.json").write_text(json.dumps({"model": "7b-tiny", "spec": spec}))
    assert harness_main(["run", "--spec", str(tmp_path)]) == 2
