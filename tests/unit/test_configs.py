"""Users' own configuration files in (issue 6): DeepSpeed JSON, PEFT adapter_config.json,
accelerate YAML, read into plan's settings; the seed's configurations (examples/seed/, written
from their published values) give the same plan as the equivalent flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cli import main
from planner.configs.read import read_accelerate, read_deepspeed, read_peft
from planner.errors import PlannerError

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed"
SAVE = ["--modules-to-save", "embed_tokens,lm_head"]


def _plan(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _values(read) -> dict:
    return {k: v.value for k, v in read.settings.items()}


def _without_sources(plan: dict) -> dict:
    """The plan without where its settings came from (``settings_sources``, ``settings_ignored``
    and each stack behaviour's ``source``): what a file and the equivalent flags must share."""
    plan.pop("settings_sources"), plan.pop("settings_ignored")
    stack = plan["stack"]
    stack["behaviours"] = {k: b["value"] for k, b in stack["behaviours"].items()}
    return plan


def test_the_seeds_7b_13b_deepspeed_file():
    got = read_deepspeed(SEED / "zero_3_llama_2_13b.json")
    assert _values(got) == {
        "zero_stage": 3,
        "offload": "all",
        "deepspeed": {
            "reduce_bucket_size": 500_000_000,
            "stage3_prefetch_bucket_size": 500_000_000,
            "stage3_param_persistence_threshold": 1_000_000,
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            "sub_group_size": 1_000_000_000,
            "overlap_comm": True,
        },
    }
    assert got.settings["zero_stage"].source == "zero_3_llama_2_13b.json: zero_optimization.stage"
    assert "zero_optimization.offload_param.pin_memory" in got.ignored and "gradient_clipping" in got.ignored


def test_the_seeds_70b_deepspeed_file_and_lora_config():
    ds = _values(read_deepspeed(SEED / "zero_3_llama_2_70b.json"))
    assert ds == {"precision": "bf16-mixed", "zero_stage": 3, "offload": "optimizer", "deepspeed": {"overlap_comm": True}}
    lora = _values(read_peft(SEED / "lora_all_layers.json"))
    assert lora == {
        "lora_rank": 8,
        "lora_alpha": 16.0,
        "lora_dropout": 0.05,
        "lora_targets": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"),
    }
    old = _values(read_peft(SEED / "lora_sept2023.json"))
    assert old["lora_targets"] == ("q_proj", "v_proj") and old["modules_to_save"] == ("embed_tokens", "lm_head")


def test_the_seeds_accelerate_config_names_its_deepspeed_file():
    got, ds_file = read_accelerate(SEED / "accelerate_deepspeed.yaml")
    # accelerate's plugin defaults (stage 2, no offload) until the DeepSpeed file it names says otherwise
    assert _values(got) == {"nodes": 1, "gpus_per_node": 8, "precision": "bf16-mixed", "zero_stage": 2, "offload": "none"}
    assert ds_file == SEED / "zero_3_llama_2_13b.json"


@pytest.mark.parametrize(
    ("model", "ds", "peft", "flags"),
    [
        # 7B/13B: ZeRO-3, optimizer and parameters offloaded, the seed's buffer sizes
        ("13b", "zero_3_llama_2_13b.json", "lora_all_layers.json", ["--zero", "3", "--offload", "all", "--lora-targets", "all"]),
        ("7b", "zero_3_llama_2_13b.json", "lora_sept2023.json", ["--offload", "all", "--lora-targets", "q_proj,v_proj", *SAVE]),
        # 70B: optimizer offloaded, buffers "auto" (= the planner's defaults)
        ("70b", "zero_3_llama_2_70b.json", "lora_all_layers.json", ["--offload", "optimizer", "--lora-targets", "all"]),
    ],
)
def test_the_seeds_files_give_the_plan_of_the_equivalent_flags(capsys, model, ds, peft, flags):
    hw = ["--model", model, "--method", "lora", "--instance", "p4de.24xlarge", "--batch-size", "8"]
    from_files = _plan(capsys, *hw, "--deepspeed", str(SEED / ds), "--peft", str(SEED / peft))
    knobs = read_deepspeed(SEED / ds).settings["deepspeed"].value
    knob_flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in knobs.items()]
    from_flags = _plan(capsys, *hw, *flags, *knob_flags)
    sources, ignored = from_files["settings_sources"], from_files["settings_ignored"]
    assert ignored and not from_flags["settings_ignored"]
    assert _without_sources(from_files) == _without_sources(from_flags)
    assert sources["zero_stage"].startswith(ds) and sources["lora_rank"] == f"{peft}: r"


def test_a_file_of_autos_equals_no_file(capsys, tmp_path):
    autos = tmp_path / "ds.json"
    autos.write_text(
        json.dumps(
            {
                "zero_optimization": {
                    "stage": 3,
                    "offload_optimizer": {"device": "cpu"},
                    "reduce_bucket_size": "auto",
                    "stage3_prefetch_bucket_size": "auto",
                    "stage3_param_persistence_threshold": "auto",
                },
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "bf16": {"enabled": "auto"},
            }
        )
    )
    hw = ["--model", "7b", "--instance", "p4de.24xlarge"]
    a, b = _plan(capsys, *hw, "--deepspeed", str(autos)), _plan(capsys, *hw)
    assert _without_sources(a) == _without_sources(b)


def test_flags_override_files_and_the_plan_says_where_each_setting_came_from(capsys):
    ds = str(SEED / "zero_3_llama_2_70b.json")
    got = _plan(capsys, "--model", "7b", "--gpu", "a100-80gb", "--deepspeed", ds, "--zero", "2", "--offload", "none")
    assert got["inputs"]["spec"]["zero_stage"] == 2 and got["inputs"]["spec"]["offload"] == "none"
    assert got["inputs"]["spec"]["precision"] == "bf16-mixed"  # from the file
    src = got["settings_sources"]
    assert src["zero_stage"] == "--zero" and src["offload"] == "--offload" and src["precision"] == "zero_3_llama_2_70b.json: bf16.enabled"
    assert src["lora_rank"] == "default"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected an object"),
        ('{"zero_optimization": {"stage": 7}}', "zero_optimization.stage must be 0-3"),
        ('{"zero_optimization": {"stage": "three"}}', "zero_optimization.stage: expected a whole number"),
        ('{"zero_optimization": {"reduce_bucket_size": 1.5}}', "reduce_bucket_size: expected a whole number"),
        ('{"zero_optimization": {"stage3_max_live_parameters": "auto"}}', 'cannot be "auto"'),
        ('{"zero_optimization": {"offload_optimizer": {"device": "gpu"}}}', "must be cpu, nvme or none"),
        ('{"bf16": {"enabled": true}, "fp16": {"enabled": true}}', "both true"),
        ('{"optimizer": {"type": "Lamb"}}', "optimizer.type 'lamb'"),
        ('{"train_micro_batch_size_per_gpu": 0}', "out of range"),
        ('{"train_micro_batch_size_per_gpu": 1e300}', "out of range"),
    ],
)
def test_bad_deepspeed_files_name_the_file_and_key(tmp_path, content, message):
    f = tmp_path / "ds.json"
    f.write_text(content)
    with pytest.raises(PlannerError, match=message) as err:
        read_deepspeed(f)
    assert "ds.json" in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"peft_type": "PREFIX_TUNING"}', "peft_type 'PREFIX_TUNING'"),
        ('{"use_dora": true}', "DoRA"),
        ('{"bias": "all"}', "bias 'all'"),
        ('{"r": -1}', "r: -1 is out of range"),
        ('{"lora_alpha": "x"}', "lora_alpha must be a number"),
        ('{"lora_dropout": 1.5}', "lora_dropout must be a number in"),
        ('{"target_modules": 5}', "target_modules must be"),
        ('{"modules_to_save": "lm_head"}', "modules_to_save must be a list"),
        ('{"rank_pattern": {"q_proj": 16}}', "rank_pattern is set"),
    ],
)
def test_bad_peft_configs_name_the_file_and_key(tmp_path, content, message):
    f = tmp_path / "adapter_config.json"
    f.write_text(content)
    with pytest.raises(PlannerError, match=message):
        read_peft(f)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("distributed_type: DEEPSPEED\ndeepspeed_config: [1]\n", "deepspeed_config: expected an object"),
        ("num_processes: 3\nnum_machines: 2\n", "not a multiple"),
        ("mixed_precision: fp8\n", "mixed_precision 'fp8'"),
        ("distributed_type: TPU\n", "distributed_type 'TPU'"),
        ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 1}\n", "FSDP2"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_accelerate_configs_name_the_file_and_key(tmp_path, content, message):
    f = tmp_path / "acc.yaml"
    f.write_text(content)
    with pytest.raises(PlannerError, match=message):
        read_accelerate(f)


def test_missing_and_unreadable_files_are_one_line_errors(tmp_path, capsys):
    assert main(["--model", "7b", "--gpu", "a100-80gb", "--deepspeed", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--model", "7b", "--gpu", "a100-80gb", "--peft", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["--model", "7b", "--gpu", "a100-80gb", "--deepspeed", str(binary)]) == 2
    assert "bin.json" in capsys.readouterr().err


def test_a_target_the_model_lacks_names_the_file(tmp_path, capsys):
    f = tmp_path / "adapter_config.json"
    f.write_text('{"r": 8, "target_modules": ["wq", "wk"]}')
    assert main(["--model", "7b", "--gpu", "a100-80gb", "--peft", str(f)]) == 2
    assert "adapter_config.json: target_modules" in capsys.readouterr().err


def test_accelerate_processes_set_the_gpu_count_and_must_match_an_instance(tmp_path, capsys):
    acc = tmp_path / "acc.yaml"
    acc.write_text("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 2, offload_optimizer_device: none}\nnum_processes: 4\n")
    got = _plan(capsys, "--model", "7b", "--gpu", "a100-80gb", "--accelerate-config", str(acc))
    assert got["inputs"]["hardware"]["gpus_per_node"] == 4 and got["inputs"]["spec"]["zero_stage"] == 2
    assert got["settings_sources"]["gpus_per_node"] == "acc.yaml: num_processes / num_machines"
    assert main(["--model", "7b", "--instance", "p4de.24xlarge", "--accelerate-config", str(acc)]) == 2
    assert "has 8 GPUs" in capsys.readouterr().err


def test_the_plan_table_says_which_file_set_what(capsys):
    assert main(["--model", "70b", "--instance", "p4de.24xlarge", "--deepspeed", str(SEED / "zero_3_llama_2_70b.json")]) == 0
    out = capsys.readouterr().out
    assert "From zero_3_llama_2_70b.json: stage=3; offload_*=optimizer; bf16.enabled=bf16-mixed" in " ".join(out.split())


def test_micro_batch_and_accumulation_from_the_deepspeed_file_unless_given(tmp_path, capsys):
    f = tmp_path / "ds.json"
    cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "fp16": {"enabled": True}}
    cfg["zero_optimization"] = {"stage": 2}
    f.write_text(json.dumps(cfg))
    got = _plan(capsys, "--model", "7b", "--gpu", "v100", "--deepspeed", str(f))
    spec = got["inputs"]["spec"]
    assert (spec["micro_batch_size"], spec["grad_accum"], spec["precision"], spec["zero_stage"]) == (4, 2, "fp16-mixed", 2)
    assert got["settings_sources"]["micro_batch_size"] == "ds.json: train_micro_batch_size_per_gpu"
    again = _plan(capsys, "--model", "7b", "--gpu", "v100", "--deepspeed", str(f), "--batch-size", "8")
    assert again["inputs"]["spec"]["micro_batch_size"] == 8 and again["settings_sources"]["micro_batch_size"] == "--batch-size"


@pytest.mark.parametrize(
    ("content", "expected", "ignored"),
    [
        # what a file leaves out is DeepSpeed's default, not the planner's (ZeRO-3, optimizer offloaded)
        ({"bf16": {"enabled": True}}, {"zero_stage": 0, "offload": "none", "precision": "bf16-mixed"}, None),
        # one precision block left to "auto": the trainer decides, nothing concluded
        (
            {"bf16": {"enabled": "auto"}, "fp16": {"enabled": False}, "zero_optimization": {"stage": 2}},
            {"zero_stage": 2, "offload": "none"},
            None,
        ),
        # below stage 3 DeepSpeed does not offload parameters: the key is listed, not planned
        (
            {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}},
            {"zero_stage": 2, "offload": "optimizer"},
            "offload_param",
        ),
    ],
)
def test_deepspeed_defaults_and_what_deepspeed_ignores(tmp_path, content, expected, ignored):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps(content))
    got = read_deepspeed(f)
    assert _values(got) == expected
    assert ignored is None or any(ignored in k for k in got.ignored)


def test_parameters_offloaded_without_the_optimizer_is_refused(tmp_path):
    f = tmp_path / "ds.json"
    zero = {"stage": 3, "offload_optimizer": {"device": "none"}, "offload_param": {"device": "cpu"}}
    f.write_text(json.dumps({"zero_optimization": zero}))
    with pytest.raises(PlannerError, match="offload_param without offload_optimizer"):
        read_deepspeed(f)


@pytest.mark.parametrize(
    ("yaml", "precision"),
    [
        ("distributed_type: MULTI_GPU\nmixed_precision: bf16\n", "amp-bf16"),  # DDP: autocast over fp32 weights
        ("distributed_type: DEEPSPEED\nmixed_precision: bf16\n", "bf16-mixed"),
        ("distributed_type: DEEPSPEED\nmixed_precision: no\n", "fp32"),  # YAML's unquoted no is false
        ("distributed_type: MULTI_GPU\nmixed_precision: 'no'\n", "fp32"),
    ],
)
def test_accelerate_mixed_precision_depends_on_the_backend(tmp_path, yaml, precision):
    f = tmp_path / "acc.yaml"
    f.write_text(yaml)
    assert read_accelerate(f)[0].settings["precision"].value == precision


def test_ddp_fp16_autocast_is_refused(tmp_path):
    f = tmp_path / "acc.yaml"
    f.write_text("distributed_type: MULTI_GPU\nmixed_precision: fp16\n")
    with pytest.raises(PlannerError, match="mixed_precision 'fp16' with distributed_type MULTI_GPU"):
        read_accelerate(f)
