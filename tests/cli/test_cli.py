"""The plan command as a user runs it: outputs, JSON contract, bad input, start-up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import main

GIB = 2**30


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(capsys, *args: str) -> dict:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_70b_lora_fits_on_one_p4de(capsys):
    p = plan_json(capsys, "--model", "70b", "--method", "lora", "--instance", "p4de.24xlarge")
    assert p["memory"]["fits"] is True and p["memory"]["limiting"] == []
    assert p["max_micro_batch_size"] >= 8


def test_70b_full_does_not_fit_on_one_p4de_and_says_why(capsys):
    """The seed: full-parameter 70B exceeded one p4de.24xlarge. With the seed's DeepSpeed
    config (ZeRO-3, optimizer offloaded to CPU) the host RAM runs out; without offload the
    GPUs do."""
    p = plan_json(capsys, "--model", "70b", "--method", "full", "--instance", "p4de.24xlarge")
    assert p["memory"]["fits"] is False and "host" in p["memory"]["limiting"]
    assert p["memory"]["per_node_cpu"]["peak_bytes"] > p["memory"]["host_capacity_bytes"]
    p = plan_json(capsys, "--model", "70b", "--method", "full", "--instance", "p4de.24xlarge", "--offload", "none")
    assert p["memory"]["fits"] is False and "gpu" in p["memory"]["limiting"]


def test_does_not_fit_table_names_the_resource(capsys):
    code, out, _ = run(capsys, "--model", "70b", "--method", "full", "--instance", "p4de.24xlarge")
    assert code == 0
    assert "DOES NOT FIT" in out and "host RAM" in out and "RUNS OUT" in out


def test_table_shows_categories_phases_and_gib(capsys):
    code, out, _ = run(capsys, "--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge")
    assert code == 0
    for word in ("Parameters", "Gradients", "Optimizer states", "Activations", "Temporaries", "checkpoint save", "GiB", "FITS"):
        assert word in out
    assert "Cited defaults, not fitted" in out  # says which numbers are calibrated


CONTRACT = [
    "parameters.total",
    "parameters.trainable",
    *(
        f"memory.per_gpu.{k}"
        for k in (
            "parameters_bytes",
            "gradients_bytes",
            "optimizer_states_bytes",
            "activations_bytes",
            "temporaries_bytes",
            "overhead_bytes",
            "peak_allocated_bytes",
            "peak_reserved_bytes",
            "peak_bytes",
        )
    ),
    *(f"memory.per_gpu.phase_peaks_bytes.{k}" for k in ("forward", "backward", "optimizer_step", "checkpoint_save")),
    "memory.per_node_cpu.peak_bytes",
    "memory.gpu_capacity_bytes",
    "memory.host_capacity_bytes",
    "memory.fits",
    "max_micro_batch_size",
    *(f"checkpoint.{k}" for k in ("model_weights_bytes", "adapter_bytes", "training_state_bytes", "merged_model_bytes")),
    "calibration.id",
    *(f"throughput.{k}" for k in ("tokens_per_s", "tokens_per_s_per_gpu", "step_time_s", "mfu")),
    *(f"time_cost.{k}" for k in ("seconds_per_epoch", "usd_per_epoch", "usd_per_million_tokens", "usd_per_hour")),
]


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_json_has_the_documented_keys(capsys, method):
    p = plan_json(capsys, "--model", "13b", "--method", method, "--instance", "p4de.24xlarge")
    for dotted in CONTRACT:
        node = p
        for part in dotted.split("."):
            assert part in node, dotted
            node = node[part]
    g = p["memory"]["per_gpu"]
    cats = sum(g[f"{c}_bytes"] for c in ("parameters", "gradients", "optimizer_states", "activations", "temporaries"))
    assert cats == g["peak_allocated_bytes"] == g["phase_peaks_bytes"][g["peak_phase"]]
    assert g["overhead_bytes"] == g["peak_bytes"] - g["peak_allocated_bytes"]
    assert g["peak_allocated_bytes"] <= g["peak_reserved_bytes"] <= g["peak_bytes"]


DOCS_JSON = Path(__file__).parents[2] / "docs" / "json.md"


def _documented_paths() -> list[tuple[str, ...]]:
    """The first-column paths of docs/json.md's plan table, as key tuples: ``a.b[].c`` is
    ``("a", "b", "[]", "c")``; ``<x>`` stands for any one key (which may itself hold a dot)."""
    section = DOCS_JSON.read_text().split("\n## A plan", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    paths = []
    for line in rows:
        cell = line.split("|")[1].strip()
        assert re.fullmatch(r"`[^`]+`", cell), f"one backticked path per row: {line}"
        parts: list[str] = []
        for word in cell.strip("`").split("."):
            key, lists = re.fullmatch(r"([^\[\]]+)((?:\[\])*)", word).groups()  # type: ignore[union-attr]
            parts += [key] + ["[]"] * (len(lists) // 2)
        paths.append(tuple(parts))
    return paths


def _leaf_paths(node, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every leaf of a JSON value: keys as they are, ``[]`` for a list's elements (an empty
    list, or a list of scalars, is the leaf ``key[]``)."""
    if isinstance(node, dict) and node:
        return set().union(*(_leaf_paths(v, (*prefix, k)) for k, v in node.items()))
    if isinstance(node, list):
        items = [_leaf_paths(v, (*prefix, "[]")) for v in node]
        return set().union({(*prefix, "[]")} if not node else set(), *items)
    return {prefix}


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path).replace(".[]", "[]")


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return len(pattern) == len(path) and all(
        p == k or (p.startswith("<") and p.endswith(">") and k != "[]") for p, k in zip(pattern, path, strict=True)
    )


def test_docs_json_documents_every_key_and_only_real_keys(capsys):
    """docs/json.md's plan table is the --json contract: every path it names is a leaf of a real
    plan, and every leaf of real full, LoRA and QLoRA plans has exactly one row."""
    documented = _documented_paths()
    assert len(documented) == len(set(documented)), "a path is documented twice"
    real: set[tuple[str, ...]] = set()
    for method in ("full", "lora", "qlora"):
        real |= _leaf_paths(plan_json(capsys, "--model", "13b", "--method", method, "--instance", "p4de.24xlarge"))
    for pattern in documented:
        assert any(_matches(pattern, path) for path in real), f"docs/json.md names a key no plan has: {_dotted(pattern)}"
    for path in sorted(real):
        rows = [p for p in documented if _matches(p, path)]
        assert len(rows) == 1, f"{_dotted(path)} is documented by {len(rows)} rows of docs/json.md (want 1)"


def test_gpu_and_count_instead_of_instance(capsys):
    p = plan_json(capsys, "--model", "7b", "--gpu", "A100", "--gpus", "2", "--method", "qlora")
    assert p["inputs"]["hardware"]["gpus_per_node"] == 2 and p["inputs"]["hardware"]["gpu"] == "a100-80gb"
    assert p["memory"]["host_capacity_bytes"] is None and p["memory"]["fits_host"] is None


def test_config_json_path_is_accepted(capsys, tmp_path):
    cfg = json.loads((Path(__file__).parents[2] / "data" / "architectures" / "mistral-7b-v0.1.json").read_text())
    cfg.pop("_catalog")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    p = plan_json(capsys, "--model", str(path), "--gpu", "h100", "--method", "full", "--offload", "none")
    assert p["parameters"]["total"] == 7_241_732_096
    p = plan_json(capsys, "--model", str(tmp_path), "--gpu", "h100")  # a folder holding config.json
    assert p["parameters"]["base"] == 7_241_732_096


@pytest.mark.parametrize("what,expect", [("models", "llama-2-70b"), ("gpus", "a100-80gb"), ("instances", "p4de.24xlarge")])
def test_list(capsys, what, expect):
    code, out, _ = run(capsys, "list", what)
    assert code == 0 and expect in out


BAD = {
    "unknown model": (["--model", "llama-9b", "--gpu", "a100"], "did you mean"),
    "unknown gpu": (["--model", "7b", "--gpu", "a100-80"], "did you mean"),
    "unknown instance": (["--model", "7b", "--instance", "p4de.24xlage"], "did you mean"),
    "zero batch": (["--model", "7b", "--gpu", "a100", "--batch-size", "0"], "batch-size"),
    "negative seq": (["--model", "7b", "--gpu", "a100", "--seq-len", "-5"], "seq-len"),
    "zero gpus": (["--model", "7b", "--gpu", "a100", "--gpus", "0"], "gpus"),
    "negative nodes": (["--model", "7b", "--gpu", "a100", "--nodes", "-1"], "nodes"),
    "rank above layer": (["--model", "7b", "--gpu", "a100", "--lora-rank", "5000"], "larger than"),
    "zero stage 4": (["--model", "7b", "--gpu", "a100", "--zero", "4"], "zero"),
    "bad method": (["--model", "7b", "--gpu", "a100", "--method", "prefix"], "method"),
    "bad lora target": (["--model", "7b", "--gpu", "a100", "--lora-targets", "q_proj,mlp"], "unknown LoRA module"),
    "dropout 1": (["--model", "7b", "--gpu", "a100", "--lora-dropout", "1"], "dropout"),
    "offload all without zero 3": (["--model", "7b", "--gpu", "a100", "--zero", "2", "--offload", "all"], "zero 3"),
    "no hardware": (["--model", "7b"], "instance"),
    "no model": (["--gpu", "a100"], "model"),
    "unreadable path": (["--model", "/nonexistent/dir/config.json", "--gpu", "a100"], "cannot read"),
    "unknown option": (["--model", "7b", "--gpu", "a100", "--bogus"], "bogus"),
    "missing folder path": (["--model", "./no-such-model", "--gpu", "a100"], "cannot read"),
    "empty model": (["--model", "", "--gpu", "a100"], "missing --model"),
    "infinite storage": (["--model", "7b", "--gpu", "a100", "--storage-gb", "inf"], "finite"),
    "infinite alpha": (["--model", "7b", "--gpu", "a100", "--lora-alpha", "inf"], "lora-alpha"),
    "too many gpus per node": (["--model", "7b", "--gpu", "a100", "--gpus", "100000"], "gpus"),
    "sgd with offload": (["--model", "7b", "--gpu", "a100", "--optimizer", "sgd"], "offload none"),
    "8-bit adam with offload": (["--model", "7b", "--gpu", "a100", "--optimizer", "adamw8bit", "--offload", "all"], "offload none"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(capsys, case):
    args, needle = BAD[case]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert "Traceback" not in err and out == ""
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower()


@pytest.mark.parametrize(
    "content,needle",
    [
        ("{not json", "not valid JSON"),
        ('{"model_type": "gpt2", "hidden_size": 768}', "not supported"),
        ('{"model_type": "llama", "hidden_size": 4096}', "invalid config.json field"),
        (
            '{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, '
            '"num_attention_heads": 30, "vocab_size": 32000}',
            "divisible",
        ),
        ("[1, 2]", "JSON object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (
            '{"model_type": "llama", "hidden_size": "4096", "intermediate_size": 11008, "num_hidden_layers": 32, '
            '"num_attention_heads": 32, "vocab_size": 32000}',
            "hidden_size",
        ),
    ],
    ids=["malformed", "non-llama", "missing-fields", "inconsistent-heads", "not-an-object", "deeply-nested", "string-int"],
)
def test_bad_config_json_is_exit_2(capsys, tmp_path, content, needle):
    path = tmp_path / "config.json"
    path.write_text(content)
    code, out, err = run(capsys, "--model", str(path), "--gpu", "a100")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert needle.lower() in err.lower()


def test_bad_input_in_a_real_process_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "planner.cli", "--model", "llama-9b", "--gpu", "a100"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "did you mean" in r.stderr


def test_planner_and_cli_never_import_torch():
    code = (
        "import sys; from planner.cli import main; import planner.estimate.plan, planner.render.tables;"
        "rc = main(['--model', '70b', '--instance', 'p4de.24xlarge', '--json']);"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'deepspeed', 'accelerate') if m in sys.modules];"
        "assert rc == 0 and not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_storage_budget_counts_models_beside_the_base(capsys):
    """The seed's arithmetic from the CLI: ~700 bf16 LoRA 70B adapters plus the base in 280 GB."""
    p = plan_json(
        capsys, "--model", "70b", "--instance", "p4de.24xlarge", "--lora-targets", "all", "--added-tokens", "4",
        "--adapter-dtype", "bf16", "--save-embedding-layers", "rows", "--storage-gb", "280",
    )  # fmt: skip
    assert p["checkpoint"]["storage_bytes"] == 280 * 10**9
    assert p["checkpoint"]["models_in_storage"] == pytest.approx(700, rel=0.10)
    p = plan_json(capsys, "--model", "7b", "--method", "full", "--instance", "p4de.24xlarge", "--storage-gb", "280")
    assert p["checkpoint"]["models_in_storage"] == 20


def test_warnings_for_what_the_hardware_cannot_do(capsys):
    p = plan_json(capsys, "--model", "7b", "--gpu", "t4", "--attention", "flash", "--seq-len", "5000")
    text = " ".join(p["warnings"])
    assert "no bf16" in text and "flash-attention" in text and "max_position_embeddings" in text and "host RAM not checked" in text
    p = plan_json(capsys, "--model", "7b", "--instance", "p4de.24xlarge")
    assert p["warnings"] == []


def test_gradient_accumulation_keeps_gradients_through_the_next_forward(capsys):
    args = ("--model", "7b", "--method", "full", "--gpu", "a100", "--zero", "1", "--offload", "none")
    one = plan_json(capsys, *args)["memory"]["per_gpu"]["phase_splits_bytes"]["forward"]
    four = plan_json(capsys, *args, "--grad-accum", "4")["memory"]["per_gpu"]["phase_splits_bytes"]["forward"]
    assert one["gradients_bytes"] == 0
    assert four["gradients_bytes"] == 2 * 6_738_415_616  # bf16 gradients of every parameter


def test_binary_config_and_fifo_are_clear_errors(capsys, tmp_path):
    import os

    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run(capsys, "--model", str(binary), "--gpu", "a100")
    assert code == 2 and "UTF-8" in err and "Traceback" not in err
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "--model", str(fifo), "--gpu", "a100")
    assert code == 2 and "not a regular file" in err


def test_qlora_with_autocast_keeps_unquantized_parts_fp32(capsys):
    amp = plan_json(
        capsys, "--model", "7b", "--method", "qlora", "--gpu", "a100", "--precision", "amp-bf16", "--offload", "none", "--zero", "0"
    )
    bf16 = plan_json(
        capsys, "--model", "7b", "--method", "qlora", "--gpu", "a100", "--precision", "bf16-mixed", "--offload", "none", "--zero", "0"
    )
    unquantized = 2 * 32000 * 4096 + (2 * 32 + 1) * 4096  # embeddings, lm_head and norms
    params = lambda p: p["memory"]["per_gpu"]["phase_splits_bytes"]["optimizer_step"]["parameters_bytes"]  # noqa: E731
    lora = 19_988_480
    assert params(amp) - params(bf16) == 2 * unquantized + (4 - 2) * lora  # fp32 vs bf16 (adapters fp32 vs bf16 at ZeRO-0)


def test_storage_that_cannot_hold_the_base_says_so(capsys):
    code, out, _ = run(capsys, "--model", "7b", "--instance", "p4de.24xlarge", "--storage-gb", "1")
    assert code == 0 and "does not hold the base model" in out


def test_batch_search_limit_is_shown_as_a_bound(capsys):
    code, out, _ = run(capsys, "--model", "7b", "--instance", "p4de.24xlarge", "--seq-len", "1")
    assert code == 0 and "≥ 65,536" in out
