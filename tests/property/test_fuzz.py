"""Robustness (issue 6): whatever the input, ``plan`` answers or refuses in one line. Exit 0 or
2, never a traceback (an exception escaping ``main`` fails these tests). Bounded examples, so
CI stays fast; the kinds of bad input tried are listed in each strategy.

Also: damaged or hand-edited data files (catalog, calibration, measurements) are refused with the
file and the field named, and a calibration of another schema version is refused, not misread.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cli import main
from planner.errors import PlannerError
from planner.schema.records import read_measurements

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed"
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

#: values that are wrong in every way an option can be: empty, negative, zero, huge, non-finite,
#: non-numeric, another option's word, control characters, very long
NASTY = st.sampled_from(
    ["", "-1", "0", "1e309", "nan", "inf", "-inf", "1e-300", "10" * 40, "9" * 400, "max", "all", "none", "auto", "  ",
     "x" * 2000, "\x00", "\n", "🙂", "--json", "-", "1,2,,3", "0x10", "1_000", "3.5", "a100", "70b", "full"]
)  # fmt: skip
NUMBERS = st.one_of(st.integers(-(10**30), 10**30).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr), NASTY)
WORDS = st.one_of(st.text(max_size=30), NASTY)


def mostly(lo: int, hi: int) -> st.SearchStrategy[str]:
    """A sensible whole number three times in four, anything else the fourth."""
    fine = st.integers(lo, hi).map(str)
    return st.one_of(fine, fine, fine, NUMBERS)


OPTIONS = {
    "--model": st.sampled_from(["7b", "13b", "70b", "llama3.2-1b", "qwen2.5-7b", "7b-tiny", "mistral-7b", "nope", "/etc/passwd", "."]),
    "--method": st.sampled_from(["full", "lora", "qlora", "lora", "dora"]),
    "--instance": st.sampled_from(["p4de.24xlarge", "p5.48xlarge", "g5.48xlarge", "g5.xlarge", "p4d", "nope"]),
    "--gpu": st.sampled_from(["a100", "h100", "a10g", "t4", "h200", "l4", "nope"]),
    "--gpus": mostly(1, 16),
    "--nodes": mostly(1, 8),
    "--batch-size": st.one_of(mostly(1, 64), st.just("max")),
    "--seq-len": mostly(1, 16384),
    "--grad-accum": mostly(1, 64),
    "--zero": mostly(0, 3),
    "--offload": st.sampled_from(["none", "optimizer", "all", "nvme"]),
    "--precision": st.sampled_from(["bf16-mixed", "amp-bf16", "bf16", "fp16-mixed", "fp32", "fp8"]),
    "--optimizer": st.sampled_from(["adamw", "adamw8bit", "sgd", "lion"]),
    "--attention": st.sampled_from(["eager", "sdpa", "flash", "xformers"]),
    "--sharding": st.sampled_from(["deepspeed", "fsdp2", "fsdp"]),
    "--lora-rank": mostly(1, 512),
    "--lora-alpha": NUMBERS,
    "--lora-dropout": NUMBERS,
    "--lora-targets": st.one_of(st.sampled_from(["all", "all-linear", "q_proj,v_proj", "lm_head", "wq"]), WORDS),
    "--modules-to-save": st.one_of(st.sampled_from(["embed_tokens,lm_head", "lm_head", ""]), WORDS),
    "--added-tokens": mostly(0, 1000),
    "--adapter-dtype": st.sampled_from(["auto", "fp32", "bf16", "int8"]),
    "--save-embedding-layers": st.sampled_from(["auto", "targets", "full", "rows", "none", "some"]),
    "--calibration": st.sampled_from(["auto", "default", "cpu", "nope", "/etc/passwd", "/dev/null"]),
    "--storage-gb": NUMBERS,
    "--dataset-tokens": mostly(1, 10**10),
    "--dataset-samples": mostly(1, 10**7),
    "--epochs": NUMBERS,
    "--reduce-bucket-size": mostly(1, 10**9),
    "--stage3-max-live-parameters": mostly(1, 10**10),
    "--methods": st.sampled_from(["full,lora", "lora", "x", ""]),
    "--instances": st.sampled_from(["p4de.24xlarge,p5.48xlarge", "p4de.24xlarge", "nope", ""]),
    "--max-nodes": mostly(1, 4),
}
FLAGS = ["--grad-ckpt", "--no-grad-ckpt", "--padding-mask", "--no-padding-mask", "--double-quant", "--no-double-quant", "--json", "--bogus"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    sub = draw(st.sampled_from([[], [], [], ["compare"], ["sweep"], ["cheapest"], ["list"], ["list", "gpus"]]))
    picked = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=7, unique=True))
    if sub[:1] != ["list"] and draw(st.booleans()):  # half the time a well-formed core
        core = ("--model", "--instance", "--gpu")
        picked = ["--model", draw(st.sampled_from(["--instance", "--gpu"])), *[p for p in picked if p not in core]]
    argv = list(sub)
    for opt in picked:
        argv += [opt, draw(OPTIONS[opt])]
    argv += draw(st.lists(st.sampled_from(FLAGS), max_size=2))
    if sub[:1] == ["sweep"] and "all" in argv:  # keep each example fast: no all x all x all sweeps
        argv = [a for a in argv if a != "all"]
    return argv


@FUZZ
@given(argv=command_lines())
def test_random_command_lines_answer_or_refuse_in_one_line(argv):
    rc, out, err = _run(argv)
    assert rc in (0, 2), (argv, rc)
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("plan: error: "), (argv, err)


@FUZZ
@given(data=st.binary(max_size=400), which=st.sampled_from(["--deepspeed", "--peft", "--accelerate-config"]))
def test_random_bytes_as_a_config_file(tmp_path_factory, data, which):
    f = tmp_path_factory.mktemp("fuzz") / "cfg"
    f.write_bytes(data)
    rc, _, err = _run(["--model", "7b", "--gpu", "a100", which, str(f), "--json"])
    assert rc in (0, 2)
    assert rc == 0 or str(f) in err or "cfg" in err


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=10), st.just("auto")),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12,
)
DS_KEYS = ["stage", "offload_optimizer", "offload_param", "reduce_bucket_size", "stage3_prefetch_bucket_size", "sub_group_size"]
DS_TOP = ["train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16", "optimizer"]
PEFT_KEYS = ["r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "peft_type", "bias"]


@FUZZ
@given(
    zero=st.dictionaries(st.sampled_from(DS_KEYS), JSON, max_size=5),
    top=st.dictionaries(st.sampled_from(DS_TOP), JSON),
    peft=st.dictionaries(st.sampled_from(PEFT_KEYS), JSON),
)
def test_config_files_with_random_values_in_the_right_places(tmp_path_factory, zero, top, peft):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "ds.json").write_text(json.dumps({**top, "zero_optimization": zero}))
    (d / "adapter_config.json").write_text(json.dumps(peft))
    files = ["--deepspeed", str(d / "ds.json"), "--peft", str(d / "adapter_config.json")]
    rc, _, err = _run(["--model", "7b", "--gpu", "a100", *files, "--json"])
    assert rc in (0, 2), err


@pytest.mark.parametrize("name", ["zero_3_llama_2_13b.json", "lora_all_layers.json", "accelerate_deepspeed.yaml"])
def test_every_truncation_of_the_seed_configs(tmp_path, name):
    text = (SEED / name).read_text()
    option = {"z": "--deepspeed", "l": "--peft", "a": "--accelerate-config"}[name[0]]
    for cut in range(0, len(text), max(1, len(text) // 40)):
        f = tmp_path / name
        f.write_text(text[:cut])
        rc, _, err = _run(["--model", "7b", "--gpu", "a100", option, str(f), "--json"])
        assert rc in (0, 2), (cut, err)


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-size", str(10**30)],
        ["--seq-len", str(10**20)],
        ["--nodes", str(10**9)],
        ["--gpus", str(10**6)],
        ["--lora-rank", str(10**12)],
        ["--dataset-tokens", str(10**40)],
        ["--dataset-samples", str(10**30)],
        ["--epochs", "1e308"],
        ["--storage-gb", "1e308"],
        ["--grad-accum", str(10**18)],
        ["--added-tokens", str(10**15)],
        ["--reduce-bucket-size", str(10**30)],
        ["--batch-size", "max", "--seq-len", str(10**7)],
    ],
)
def test_huge_numbers(argv):
    rc, out, err = _run(["--model", "70b", "--instance", "p4de.24xlarge", *argv, "--json"])
    assert rc in (0, 2), err
    if rc == 0:
        json.loads(out)


def _damaged_data(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data", data, ignore=shutil.ignore_patterns("measurements"))
    edit(data)
    return data


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: (d / "gpus.json").write_text((d / "gpus.json").read_text()[:500]), "gpus.json: not valid JSON"),
        (lambda d: (d / "gpus.json").write_text('{"a": 1}'), "gpus.json: expected a list"),
        (
            lambda d: (d / "instances.json").write_text(
                json.dumps([{**json.loads((d / "instances.json").read_text())[0], "gpu_count": "eight"}])
            ),
            "instances.json record 0: field gpu_count",
        ),
        (lambda d: (d / "architectures" / "llama-2-7b.json").write_text("{"), "llama-2-7b.json: not valid JSON"),
        (
            lambda d: (d / "architectures" / "llama-2-7b.json").write_text(
                json.dumps({**json.loads((d / "architectures" / "llama-2-7b.json").read_text()), "hidden_size": -5})
            ),
            "llama-2-7b.json: invalid config.json field hidden_size",
        ),
        (
            lambda d: (d / "calibration" / "default.json").write_text(
                json.dumps({**json.loads((d / "calibration" / "default.json").read_text()), "fitted": "maybe"})
            ),
            "default.json: field fitted",
        ),
        (
            lambda d: (d / "calibration" / "default.json").write_text(
                json.dumps({**json.loads((d / "calibration" / "default.json").read_text()), "schema_version": 2})
            ),
            "calibration schema_version 2; this planner reads 1",
        ),
        (lambda d: (d / "calibration" / "default.json").write_bytes(b"\xff\xfe"), "default.json: cannot be read"),
    ],
)
def test_damaged_data_files_are_named_with_the_field(tmp_path, edit, needle):
    data = _damaged_data(tmp_path, edit)
    r = subprocess.run(
        [sys.executable, "-m", "planner.cli", "--model", "7b", "--instance", "p4de.24xlarge", "--json"],
        env=dict(os.environ, PLANNER_DATA_DIR=str(data)), capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert needle in r.stderr, r.stderr


def test_a_calibration_without_schema_version_is_version_1(tmp_path, capsys):
    raw = json.loads((ROOT / "data" / "calibration" / "default.json").read_text())
    raw.pop("schema_version", None)
    f = tmp_path / "old.json"
    f.write_text(json.dumps(raw))
    rc, out, _ = _run(["--model", "7b", "--gpu", "a100", "--calibration", str(f), "--json"])
    assert rc == 0 and json.loads(out)["calibration"]["id"] == raw["id"]


def test_a_damaged_measurement_line_is_named_by_file_and_line(tmp_path):
    good = (ROOT / "data" / "measurements" / "run" / "cpu.jsonl").read_text().splitlines()
    f = tmp_path / "runs.jsonl"
    f.write_text("\n".join([good[0], good[1][: len(good[1]) // 2], good[2]]) + "\n")
    with pytest.raises(PlannerError, match=r"runs.jsonl:2"):
        read_measurements(f)
    f.write_text("\n".join([good[0], json.dumps({**json.loads(good[1]), "schema_version": 7})]) + "\n")
    with pytest.raises(PlannerError, match=r"runs.jsonl:2: measurement schema_version 7"):
        read_measurements(f)


SENSIBLE = {
    "--method": st.sampled_from(["full", "lora", "qlora"]),
    "--nodes": st.integers(1, 4).map(str),
    "--batch-size": st.one_of(st.integers(1, 128).map(str), st.just("max")),
    "--seq-len": st.integers(1, 32768).map(str),
    "--grad-accum": st.integers(1, 16).map(str),
    "--zero": st.integers(0, 3).map(str),
    "--offload": st.sampled_from(["none", "optimizer", "all"]),
    "--precision": st.sampled_from(["bf16-mixed", "amp-bf16", "bf16", "fp16-mixed", "fp32"]),
    "--optimizer": st.sampled_from(["adamw", "adamw8bit", "sgd"]),
    "--attention": st.sampled_from(["eager", "sdpa", "flash"]),
    "--sharding": st.sampled_from(["deepspeed", "fsdp2"]),
    "--lora-rank": st.integers(1, 1024).map(str),
    "--lora-dropout": st.sampled_from(["0", "0.05", "0.5"]),
    "--lora-targets": st.sampled_from(["all", "all-linear", "q_proj,v_proj", "lm_head", "embed_tokens", "down_proj"]),
    "--modules-to-save": st.sampled_from(["embed_tokens,lm_head", "lm_head", ""]),
    "--added-tokens": st.integers(0, 300000).map(str),
    "--adapter-dtype": st.sampled_from(["auto", "fp32", "bf16", "fp16"]),
    "--save-embedding-layers": st.sampled_from(["auto", "targets", "full", "rows", "none"]),
    "--stage3-max-live-parameters": st.integers(1, 10**10).map(str),
    "--stage3-param-persistence-threshold": st.integers(0, 10**9).map(str),
}


@st.composite
def sensible_plans(draw: st.DrawFn) -> list[str]:
    argv = ["--model", draw(st.sampled_from(["7b", "13b", "70b", "llama3.2-1b", "llama3.1-8b", "qwen2.5-7b", "mistral-7b", "7b-tiny"]))]
    if draw(st.booleans()):
        argv += ["--instance", draw(st.sampled_from(["p4de.24xlarge", "p5.48xlarge", "g5.48xlarge", "g5.xlarge", "g6.xlarge"]))]
    else:
        argv += ["--gpu", draw(st.sampled_from(["a100", "h100", "a10g", "t4", "h200", "l4"])), "--gpus", str(draw(st.integers(1, 16)))]
    for opt in draw(st.lists(st.sampled_from(sorted(SENSIBLE)), max_size=8, unique=True)):
        argv += [opt, draw(SENSIBLE[opt])]
    offs = ["--no-grad-ckpt", "--no-padding-mask", "--no-double-quant", "--no-memory-efficient-linear"]
    argv += draw(st.lists(st.sampled_from(offs), max_size=2))
    return argv


@FUZZ
@given(argv=sensible_plans())
def test_sensible_random_plans_are_whole(argv):
    """Deep paths: plausible settings in random combinations; a refusal is one line, a plan is
    whole JSON with non-negative memory."""
    rc, out, err = _run([*argv, "--json"])
    assert rc in (0, 2), (argv, err)
    if rc == 0:
        p = json.loads(out)
        assert p["memory"]["per_gpu"]["peak_allocated_bytes"] >= 0 and p["max_micro_batch_size"] >= 0
    else:
        assert len(err.strip().splitlines()) == 1, err
