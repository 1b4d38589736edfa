"""A corpus of ``plan`` invocations and what each printed: the behaviour a restructure must keep.

Each case is an argv (``{tmp}`` stands for a scratch folder that holds the case's config files
and any ``--emit`` output), the config files it reads, and, once recorded, its exit code,
stdout, stderr and the files it wrote. ``tests/golden/test_cli_corpus.py`` replays every case
in-process through ``planner.cli.main`` and wants each byte back.

Record again only when an output is meant to change (and list why in the CHANGELOG)::

    python tests/golden/cli_corpus.py            # rewrites tests/golden/cli_corpus.jsonl.gz
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).with_name("cli_corpus.jsonl.gz")

SEED = "examples/seed"
DS13 = f"{SEED}/zero_3_llama_2_13b.json"
DS70 = f"{SEED}/zero_3_llama_2_70b.json"
LORA_ALL = f"{SEED}/lora_all_layers.json"
LORA_SEPT = f"{SEED}/lora_sept2023.json"
ACC = f"{SEED}/accelerate_deepspeed.yaml"

#: Config files written into ``{tmp}`` for the cases that read them.
FILES: dict[str, str] = {
    "ds_auto.json": json.dumps(
        {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"},
         "zero_optimization": {"stage": "auto", "reduce_bucket_size": "auto"}}
    ),
    "ds_z2.json": json.dumps(
        {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 8, "fp16": {"enabled": True},
         "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": 200000000}}
    ),
    "ds_z1_nooff.json": json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0}),
    "ds_nostage.json": json.dumps({"bf16": {"enabled": True}}),
    "ds_bad_stage.json": json.dumps({"zero_optimization": {"stage": 7}}),
    "ds_broken.json": '{"zero_optimization": {"stage": 3',
    "ds_offload_param_z2.json": json.dumps({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}),
    "peft_r16.json": json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    ),
    "peft_all_linear.json": json.dumps({"peft_type": "LORA", "r": 64, "lora_alpha": 16, "target_modules": "all-linear"}),
    "peft_dora.json": json.dumps({"peft_type": "LORA", "r": 8, "use_dora": True, "target_modules": ["q_proj"]}),
    "peft_regex.json": json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ".*proj"}),
    "peft_mts.json": json.dumps(
        {
            "peft_type": "LORA",
            "r": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "modules_to_save": ["embed_tokens", "lm_head"],
        }
    ),
    "acc_ddp.yaml": (
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nmixed_precision: bf16\nnum_machines: 1\nnum_processes: 4\n"
    ),
    "acc_ds4.yaml": (
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n"
        "  offload_optimizer_device: none\n  gradient_accumulation_steps: 2\nmixed_precision: bf16\nnum_machines: 1\nnum_processes: 4\n"
    ),
    "acc_fsdp2.yaml": (
        "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n"
        "mixed_precision: bf16\nnum_machines: 1\nnum_processes: 8\n"
    ),
    "acc_bad.yaml": "distributed_type: [unclosed\n",
    "not_json.txt": "hello",
}


def _plan_cases() -> Iterator[list[str]]:
    models = ["7b", "13b", "70b", "llama-3.1-8b", "mistral-7b-v0.1", "qwen2.5-7b", "llama-3.2-1b", "llama-3.1-70b"]
    for model in models:
        for method in ("full", "lora", "qlora"):
            yield ["--model", model, "--method", method, "--instance", "p4de.24xlarge"]
    for model in ("7b", "13b", "70b"):
        for method in ("full", "lora"):
            yield ["--model", model, "--method", method, "--instance", "p4de.24xlarge", "--batch-size", "max"]
            yield ["--model", model, "--method", method, "--gpu", "a100-80gb", "--gpus", "8", "--batch-size", "max", "--offload", "none"]
    for zero in ("0", "1", "2", "3"):
        for offload in ("none", "optimizer", "all"):
            for method in ("full", "lora"):
                yield ["--model", "7b", "--method", method, "--instance", "p4de.24xlarge", "--zero", zero, "--offload", offload]
    for gpus in ("1", "2", "4"):
        yield ["--model", "7b", "--method", "lora", "--gpu", "h100", "--gpus", gpus, "--zero", "2", "--offload", "none"]
    for precision in ("bf16-mixed", "amp-bf16", "bf16", "fp16-mixed", "fp32"):
        for method in ("full", "lora"):
            yield ["--model", "7b", "--method", method, "--gpu", "a100-80gb", "--precision", precision, "--zero", "2", "--offload", "none"]
    for opt in ("adamw", "adamw8bit", "sgd"):
        for method in ("full", "lora", "qlora"):
            yield ["--model", "7b", "--method", method, "--gpu", "a100-80gb", "--optimizer", opt, "--offload", "none", "--zero", "0"]
    for attention in ("eager", "sdpa", "flash"):
        for ckpt in ("--grad-ckpt", "--no-grad-ckpt"):
            yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--attention", attention, ckpt]
    yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--no-padding-mask"]
    yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--no-padding-mask", "--attention", "eager"]
    for sharding_case in (
        ["--method", "full", "--gpu", "h100", "--gpus", "8"],
        ["--method", "lora", "--gpu", "h100", "--gpus", "8"],
        ["--method", "lora", "--gpu", "h100", "--gpus", "2", "--precision", "bf16"],
        ["--method", "full", "--instance", "p4de.24xlarge", "--batch-size", "max"],
    ):
        yield ["--model", "7b", "--sharding", "fsdp2", "--zero", "3", "--offload", "none", *sharding_case]
    for seq in ("128", "2048", "4096"):
        for b in ("1", "16"):
            yield ["--model", "13b", "--method", "lora", "--instance", "p4de.24xlarge", "--seq-len", seq, "--batch-size", b]
    for accum in ("4", "32"):
        yield ["--model", "7b", "--method", "full", "--instance", "p4de.24xlarge", "--grad-accum", accum]
    for nodes in ("2", "4", "16"):
        for method in ("full", "lora"):
            yield ["--model", "70b", "--method", method, "--instance", "p4de.24xlarge", "--nodes", nodes]
    yield ["--model", "70b", "--method", "full", "--instance", "p5.48xlarge", "--nodes", "2", "--offload", "none"]
    for lora in (
        ["--lora-rank", "64", "--lora-alpha", "128"],
        ["--lora-rank", "1", "--lora-dropout", "0"],
        ["--lora-targets", "q_proj,v_proj"],
        ["--lora-targets", "all"],
        ["--lora-targets", "all-linear", "--modules-to-save", "embed_tokens,lm_head"],
        ["--lora-targets", "q_proj,v_proj", "--modules-to-save", "embed_tokens,lm_head", "--added-tokens", "4"],
        ["--added-tokens", "4"],
        ["--adapter-dtype", "bf16"],
        ["--adapter-dtype", "fp16", "--lora-targets", "all"],
        ["--save-embedding-layers", "full", "--lora-targets", "all"],
        ["--save-embedding-layers", "rows", "--added-tokens", "4", "--modules-to-save", "embed_tokens"],
        ["--save-embedding-layers", "none", "--lora-targets", "all"],
        ["--save-embedding-layers", "targets", "--lora-targets", "all"],
        ["-r", "16"],
    ):
        yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", *lora]
    for dq in ("--double-quant", "--no-double-quant"):
        yield ["--model", "70b", "--method", "qlora", "--gpu", "a100-80gb", "--offload", "none", "--zero", "0", dq]
        yield ["--model", "7b", "--method", "qlora", "--gpu", "rtx-4090", "--offload", "none", "--zero", "0", "--batch-size", "max", dq]
    for knob in (
        ["--reduce-bucket-size", "500000000"],
        ["--stage3-prefetch-bucket-size", "50000000"],
        ["--stage3-param-persistence-threshold", "1000000"],
        ["--stage3-max-live-parameters", "100000000"],
        ["--stage3-max-reuse-distance", "0"],
        ["--sub-group-size", "100000000"],
        ["--no-overlap-comm"],
        ["--no-memory-efficient-linear"],
        ["--overlap-comm", "--memory-efficient-linear"],
    ):
        yield ["--model", "13b", "--method", "lora", "--instance", "p4de.24xlarge", *knob]
    for cal in ("default", "cpu", "auto", "data/calibration/default.json"):
        yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--calibration", cal]
    for extra in (
        ["--storage-gb", "1000"],
        ["--storage-gb", "0"],
        ["--dataset-tokens", "100000000"],
        ["--dataset-samples", "50000", "--epochs", "3"],
        ["--epochs", "0.5"],
        ["--storage-gb", "2500", "--dataset-tokens", "1000000000", "--epochs", "2"],
    ):
        yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", *extra]
    for hw in (
        ["--gpu", "t4", "--method", "qlora", "--precision", "fp16-mixed", "--zero", "0", "--offload", "none"],
        ["--gpu", "v100-32gb", "--gpus", "8", "--method", "lora", "--precision", "fp16-mixed"],
        ["--gpu", "l4", "--method", "qlora", "--zero", "0", "--offload", "none", "--batch-size", "max"],
        ["--gpu", "h200", "--gpus", "8", "--method", "full", "--batch-size", "max"],
        ["--instance", "g5.48xlarge", "--method", "lora"],
        ["--instance", "p5.4xlarge", "--method", "qlora", "--zero", "0", "--offload", "none"],
        ["--instance", "a2-highgpu-8g", "--method", "full"],
        ["--instance", "Standard_ND96amsr_A100_v4", "--method", "lora", "--nodes", "2"],
        ["--instance", "p5e.48xlarge", "--method", "lora"],
        ["--instance", "P4DE.24XLARGE", "--method", "lora"],
        ["--gpu", "A100", "--method", "lora", "--zero", "0", "--offload", "none"],
    ):
        yield ["--model", "7b", *hw]
    paths = ("data/architectures/llama-2-7b.json", "data/architectures/tiny/llama-2-7b-tiny.json")
    for model in (*paths, "meta-llama/Llama-2-7b-hf", "LLAMA-2-7B"):
        yield ["--model", model, "--method", "lora", "--instance", "p4de.24xlarge"]
    yield ["-m", "7b", "-i", "p4de.24xlarge", "-b", "4", "-s", "1024"]
    # configuration files
    yield ["--model", "13b", "--method", "lora", "--instance", "p4de.24xlarge", "--deepspeed", DS13, "--peft", LORA_ALL]
    yield ["--model", "70b", "--method", "lora", "--instance", "p4de.24xlarge", "--deepspeed", DS70, "--peft", LORA_ALL]
    yield ["--model", "7b", "--method", "lora", "--accelerate-config", ACC, "--instance", "p4de.24xlarge", "--peft", LORA_SEPT]
    yield ["--model", "7b", "--method", "full", "--instance", "p4de.24xlarge", "--deepspeed", DS13]
    yield ["--model", "7b", "--method", "full", "--instance", "p4de.24xlarge", "--deepspeed", DS13, "--zero", "2", "--offload", "none"]
    yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--deepspeed", DS13, "--batch-size", "max"]
    yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--accelerate-config", ACC]
    yield ["--model", "7b", "--method", "lora", "--gpu", "a100-80gb", "--accelerate-config", ACC]
    for name in ("ds_auto.json", "ds_z2.json", "ds_z1_nooff.json", "ds_nostage.json"):
        yield ["--model", "7b", "--method", "lora", "--gpu", "a100-80gb", "--gpus", "4", "--deepspeed", "{tmp}/" + name]
    yield ["--model", "7b", "--method", "lora", "--gpu", "a100-80gb", "--gpus", "4", "--deepspeed", "{tmp}/ds_z2.json", "--batch-size", "2"]
    yield ["--model", "7b", "--method", "lora", "--gpu", "a100-80gb", "--gpus", "4", "--deepspeed", "{tmp}/ds_offload_param_z2.json"]
    for name in ("peft_r16.json", "peft_all_linear.json", "peft_mts.json"):
        yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--peft", "{tmp}/" + name]
    yield ["--model", "7b", "--method", "qlora", "--gpu", "a100-80gb", "--zero", "0", "--offload", "none", "--peft", "{tmp}/peft_r16.json"]
    yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--peft", "{tmp}/peft_r16.json", "--lora-rank", "4"]
    for name in ("acc_ddp.yaml", "acc_ds4.yaml"):
        yield ["--model", "7b", "--method", "lora", "--gpu", "a100-80gb", "--accelerate-config", "{tmp}/" + name]
    yield ["--model", "7b", "--method", "lora", "--accelerate-config", "{tmp}/acc_fsdp2.yaml", "--instance", "p4de.24xlarge"]
    yield ["--model", "7b", "--method", "lora", "--instance", "g5.12xlarge", "--accelerate-config", "{tmp}/acc_ds4.yaml"]
    # --emit: the written files are part of the record
    yield ["--model", "7b", "--method", "lora", "--instance", "p4de.24xlarge", "--emit", "{tmp}/emit_lora"]
    yield ["--model", "70b", "--method", "full", "--instance", "p4de.24xlarge", "--nodes", "2", "--emit", "{tmp}/emit_full"]
    yield ["--model", "7b", "--method", "qlora", "--gpu", "a100-80gb", "--zero", "0", "--offload", "none", "--emit", "{tmp}/emit_qlora"]
    # training stacks (data/stacks/): each profile, one behaviour over a profile, several ranks
    for stack in ("deepspeed", "hf-trainer", "accelerate-fsdp", "fsdp2", "lightning", "torchtune", "custom-loop"):
        yield ["--model", "7b", "--method", "lora", "--gpu", "a100-80gb", "--stack", stack, "--batch-size", "2"]
    a100 = ["--model", "7b", "--gpu", "a100-80gb"]
    yield [*a100, "--method", "qlora", "--stack", "hf-trainer", "--batch-size", "4", "--seq-len", "1024"]
    yield [*a100, "--method", "qlora", "--stack", "lightning", "--batch-size", "4", "--no-grad-ckpt"]
    yield [*a100, "--method", "lora", "--gpus", "4", "--stack", "hf-trainer", "--loss-path", "fp32-logits"]
    yield ["--model", "7b", "--method", "full", "--gpu", "h100", "--gpus", "8", "--stack", "hf-trainer", "--no-ddp-grad-copy"]
    yield [*a100, "--method", "lora", "--stack", "hf-trainer", "--adamw-impl", "fused", "--emit", "{tmp}/emit_ddp"]


def _compare_cases() -> Iterator[list[str]]:
    yield ["compare", "--model", "70b", "--instance", "p4de.24xlarge"]
    yield ["compare", "--model", "7b", "--instance", "p4de.24xlarge"]
    yield ["compare", "--model", "13b", "--methods", "full,lora,qlora", "--instances", "p4de.24xlarge,p5.48xlarge"]
    yield ["compare", "--model", "7b", "--methods", "lora", "--gpu", "a100-80gb", "--gpus", "4", "--offload", "none", "--zero", "2"]
    yield ["compare", "--model", "70b", "--instances", "p4d.24xlarge,p4de.24xlarge", "--nodes", "2"]
    yield ["compare", "--model", "7b", "--instance", "p4de.24xlarge", "--batch-size", "2", "--seq-len", "1024", "--storage-gb", "500"]
    yield ["compare", "--model", "13b", "--instance", "p4de.24xlarge", "--deepspeed", DS13, "--peft", LORA_ALL]
    yield ["compare", "--model", "7b", "--instances", "g5.12xlarge", "--accelerate-config", "{tmp}/acc_ds4.yaml"]
    yield ["compare", "--model", "7b", "--methods", "qlora,lora", "--gpu", "rtx-4090", "--zero", "0", "--offload", "none"]
    yield ["compare", "--model", "7b", "--instance", "p4de.24xlarge", "--calibration", "cpu", "--dataset-tokens", "5000000"]


def _sweep_cases() -> Iterator[list[str]]:
    yield ["sweep", "--model", "7b,13b,70b", "--method", "full,lora", "--instance", "p4de.24xlarge,p5.48xlarge"]
    yield ["sweep", "--model", "7b", "--method", "lora", "--instance", "all", "--batch-size", "max"]
    yield ["sweep", "--model", "all", "--method", "lora", "--instance", "p4de.24xlarge", "--batch-size", "1,8,max"]
    yield ["sweep", "--model", "70b", "--method", "all", "--instance", "p4de.24xlarge,p4d.24xlarge", "--nodes", "2"]
    yield ["sweep", "--model", "7b,13b", "--gpu", "a100-80gb", "--gpus", "2", "--offload", "none", "--zero", "2"]
    yield ["sweep", "--model", "7b", "--method", "qlora", "--gpu", "rtx-4090", "--zero", "0", "--offload", "none", "--batch-size", "1,max"]
    yield ["sweep", "--models", "7b", "--methods", "lora", "--instances", "p4de.24xlarge"]
    yield ["sweep", "-m", "13b", "-i", "p4de.24xlarge", "--dataset-samples", "100000", "--epochs", "2"]
    yield ["sweep", "--model", "7b", "--instance", "p4de.24xlarge", "--deepspeed", DS13]
    yield ["sweep", "--model", "all", "--method", "all", "--instance", "all", "--batch-size", "max"]


def _cheapest_cases() -> Iterator[list[str]]:
    yield ["cheapest", "--model", "7b", "--method", "lora"]
    yield ["cheapest", "--model", "70b", "--method", "lora"]
    yield ["cheapest", "--model", "70b", "--method", "full", "--max-nodes", "4"]
    yield ["cheapest", "--model", "13b", "--method", "qlora", "--zero", "0", "--offload", "none"]
    yield ["cheapest", "--model", "7b", "--method", "full", "--gpu", "a100-80gb", "--max-nodes", "2"]
    yield ["cheapest", "--model", "7b", "--method", "lora", "--batch-size", "max", "--dataset-tokens", "1000000000"]
    yield ["cheapest", "--model", "7b", "--method", "lora", "--precision", "fp16-mixed"]
    yield ["cheapest", "--model", "70b", "--method", "full", "--offload", "none", "--max-nodes", "1"]


def _error_cases() -> Iterator[list[str]]:
    hw = ["--instance", "p4de.24xlarge"]
    yield ["--instance", "p4de.24xlarge"]
    yield ["--model", "7b"]
    yield ["--model", "no-such-model", *hw]
    yield ["--model", "7b", "--instance", "no-such-instance"]
    yield ["--model", "7b", "--gpu", "no-such-gpu"]
    yield ["--model", "7b", "--instance", "p4de.24xlarge", "--gpu", "a100-80gb"]
    yield ["--model", "7b", "--instance", "p4de.24xlarge", "--gpus", "4"]
    yield ["--model", "7b", "--method", "dpo", *hw]
    yield ["--model", "7b", *hw, "--batch-size", "0"]
    yield ["--model", "7b", *hw, "--batch-size", "-3"]
    yield ["--model", "7b", *hw, "--batch-size", "lots"]
    yield ["--model", "7b", *hw, "--seq-len", "0"]
    yield ["--model", "7b", *hw, "--seq-len", "abc"]
    yield ["--model", "7b", *hw, "--zero", "4"]
    yield ["--model", "7b", *hw, "--zero", "0"]
    yield ["--model", "7b", *hw, "--zero", "2", "--offload", "all"]
    yield ["--model", "7b", *hw, "--offload", "disk"]
    yield ["--model", "7b", *hw, "--precision", "int4"]
    yield ["--model", "7b", *hw, "--optimizer", "adamw8bit"]
    yield ["--model", "7b", *hw, "--lora-rank", "0"]
    yield ["--model", "7b", *hw, "--lora-rank", "100000"]
    yield ["--model", "7b", *hw, "--lora-alpha", "0"]
    yield ["--model", "7b", *hw, "--lora-alpha", "nan"]
    yield ["--model", "7b", *hw, "--lora-dropout", "1.5"]
    yield ["--model", "7b", *hw, "--lora-targets", "foo_proj"]
    yield ["--model", "7b", *hw, "--lora-targets", ""]
    yield ["--model", "7b", *hw, "--lora-targets", "q_proj", "--modules-to-save", "q_proj"]
    yield ["--model", "7b", *hw, "--added-tokens", "-1"]
    yield ["--model", "7b", *hw, "--epochs", "0"]
    yield ["--model", "7b", *hw, "--epochs", "inf"]
    yield ["--model", "7b", *hw, "--storage-gb", "1e308"]
    yield ["--model", "7b", *hw, "--dataset-tokens", "10", "--dataset-samples", "10"]
    yield ["--model", "7b", *hw, "--nodes", "0"]
    yield ["--model", "7b", "--gpu", "a100", "--gpus", "65"]
    yield ["--model", "7b", *hw, "--sharding", "fsdp2"]
    yield ["--model", "7b", *hw, "--sharding", "fsdp2", "--offload", "none", "--precision", "fp16-mixed"]
    yield ["--model", "7b", *hw, "--sharding", "fsdp2", "--offload", "none", "--method", "qlora"]
    yield ["--model", "7b", *hw, "--sharding", "megatron"]
    yield ["--model", "7b", *hw, "--calibration", "nope"]
    yield ["--model", "7b", *hw, "--calibration", "{tmp}/not_json.txt"]
    yield ["--model", "7b", *hw, "--no-such-option"]
    yield ["--model", "7b", *hw, "--methods", "full,lora"]
    yield ["--model", "7b", *hw, "--models", "7b"]
    yield ["--model", "7b", *hw, "--max-nodes", "3"]
    yield ["--model", "{tmp}/missing.json", *hw]
    yield ["--model", "{tmp}/not_json.txt", *hw]
    yield ["--model", "7b", *hw, "--deepspeed", "{tmp}/missing.json"]
    yield ["--model", "7b", *hw, "--deepspeed", "{tmp}/ds_broken.json"]
    yield ["--model", "7b", *hw, "--deepspeed", "{tmp}/ds_bad_stage.json"]
    yield ["--model", "7b", *hw, "--peft", "{tmp}/peft_dora.json"]
    yield ["--model", "7b", *hw, "--peft", "{tmp}/peft_regex.json"]
    yield ["--model", "7b", "--method", "full", *hw, "--peft", LORA_ALL]
    yield ["--model", "7b", *hw, "--accelerate-config", "{tmp}/acc_bad.yaml"]
    yield ["--model", "7b", "--instance", "p4de.24xlarge", "--accelerate-config", "{tmp}/acc_ds4.yaml"]
    yield ["--model", "7b", *hw, "--emit", "{tmp}/e", "--sharding", "fsdp2", "--offload", "none"]
    yield ["compare", "--model", "7b", *hw, "--methods", "full,dpo"]
    yield ["compare", "--model", "7b", "--instances", "p4de.24xlarge", "--instance", "p4de.24xlarge"]
    yield ["compare", "--model", "7b", *hw, "--emit", "{tmp}/e"]
    yield ["compare", "--model", "7b"]
    yield ["compare", "--instance", "p4de.24xlarge"]
    yield ["compare", "--model", "7b", "--instances", "g5.12xlarge,p4de.24xlarge", "--accelerate-config", "{tmp}/acc_ds4.yaml"]
    yield ["sweep", "--instance", "p4de.24xlarge"]
    yield ["sweep", "--model", "7b"]
    yield ["sweep", "--model", "7b", "--instance", "p4de.24xlarge", "--gpu", "a100"]
    yield ["sweep", "--model", "7b", "--instance", "p4de.24xlarge", "--batch-size", "0,max"]
    yield ["sweep", "--model", "7b", "--instance", "p4de.24xlarge", "--batch-size", ","]
    yield ["sweep", "--model", "7b", "--method", "dpo", "--instance", "p4de.24xlarge"]
    yield ["sweep", "--model", ",", "--instance", "p4de.24xlarge"]
    yield ["sweep", "--model", "7b", "--instance", "p4de.24xlarge", "--emit", "{tmp}/e"]
    yield ["sweep", "--model", "7b", "--instance", "all", "--accelerate-config", ACC]
    yield ["cheapest", "--method", "lora"]
    yield ["cheapest", "--model", "7b", *hw]
    yield ["cheapest", "--model", "7b", "--plot", "{tmp}/x.png"]
    yield ["cheapest", "--model", "7b", "--max-nodes", "0"]
    yield ["cheapest", "--model", "7b", "--max-nodes", "65"]
    yield ["cheapest", "--model", "7b", "--emit", "{tmp}/e"]
    yield ["cheapest", "--model", "70b", "--method", "full", "--gpu", "t4", "--precision", "fp16-mixed"]
    yield ["--model", "7b", *hw, "--stack", "nope"]
    yield ["--model", "7b", *hw, "--stack", "hf-trainer", "--zero", "3"]
    yield ["--model", "7b", *hw, "--stack", "hf-trainer", "--deepspeed", DS13]
    yield ["--model", "7b", *hw, "--stack", "fsdp2", "--sharding", "deepspeed"]
    yield ["--model", "7b", *hw, "--ddp-grad-copy"]
    yield ["list", "stacks"]
    yield ["list", "nothing"]
    yield ["list"]


def cases() -> list[dict[str, Any]]:
    """Every case: an id, the argv (``{tmp}`` to be filled in) and whether it prints JSON."""
    out = []
    for _kind, gen in (("plan", _plan_cases), ("compare", _compare_cases), ("sweep", _sweep_cases), ("cheapest", _cheapest_cases)):
        for argv in gen():
            out.append({"argv": [*argv, "--json"]})
    for argv in _error_cases():
        out.append({"argv": argv if argv[:1] == ["list"] else [*argv, "--json"]})
        if argv[:1] != ["list"]:
            out.append({"argv": argv})  # the table path refuses the same input the same way
    for i, c in enumerate(out):
        c["id"] = i
    return out


def run_case(argv: list[str], tmp: Path) -> dict[str, Any]:
    """Run one case in this process; what it printed and wrote, with ``tmp`` spelled ``{tmp}``."""
    from planner.cli import main

    for name, text in FILES.items():
        (tmp / name).write_text(text)
    before = {p for p in tmp.rglob("*")}
    args = [a.replace("{tmp}", str(tmp)) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    written = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file() and p not in before:
            written[str(p.relative_to(tmp))] = p.read_text().replace(str(tmp), "{tmp}").replace(str(ROOT), "{root}")
            p.unlink()
    return {
        "rc": rc,
        "stdout": out.getvalue().replace(str(tmp), "{tmp}").replace(str(ROOT), "{root}"),
        "stderr": err.getvalue().replace(str(tmp), "{tmp}").replace(str(ROOT), "{root}"),
        "written": written,
    }


def load() -> list[dict[str, Any]]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def record() -> int:
    import os

    os.chdir(ROOT)  # the argv's relative paths (examples/, data/) are the repository's
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for c in cases():
            case_dir = Path(d) / str(c["id"])
            case_dir.mkdir()
            rows.append({**c, **run_case(c["argv"], case_dir)})
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    with open(CORPUS, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))
    codes: dict[int, int] = {}
    for r in rows:
        codes[r["rc"]] = codes.get(r["rc"], 0) + 1
    print(f"{len(rows)} cases -> {CORPUS.relative_to(ROOT)} (exit codes: {codes})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(record())
