"""Golden parameter and LoRA-adapter counts, computed with the real libraries.

These numbers are the ground truth the planner's tests compare against. Nothing here
is estimated by formula: every figure comes from ``transformers`` / ``peft`` objects.

What is counted
---------------
* ``parameter_counts``: for each ``data/architectures/*.json`` (an HF ``config.json`` plus
  our ``_catalog`` block, which is dropped), the model is built from its config on the
  ``meta`` device in bf16 and ``sum(p.numel() for p in model.parameters())`` is recorded.
  ``parameters()`` yields a shared tensor once, so tied input/output embeddings count once.
* ``lora``: Llama 2 7B/13B/70B with the vocabulary resized to 32004 (the seed's four added
  special tokens) in three LoRA setups (r=8, alpha=16, dropout=0.05, bias="none"), and with
  the stock 32000 vocabulary in the ``all_linear`` setup. For each: peft's
  ``get_nb_trainable_parameters()`` and the state dict ``get_peft_model_state_dict`` returns
  (the tensors ``save_pretrained`` writes), summed per category (``lora``,
  ``modules_to_save``, ``embedding_layers``), with every non-LoRA key listed with its shape.
  Three save variants are recorded where they differ: peft's defaults on our from-config
  model, ``save_embedding_layers=False``, and ``save_embedding_layers="auto"`` as it behaves
  for a model loaded from a hub id (peft then compares the vocabulary with the base
  config and, when it was resized, adds the full embedding layers).
* ``lora_variants``: Llama 2 7B with r=64 and with peft's ``"all-linear"`` shorthand, to
  confirm that shorthand is exactly the seven projections (``lm_head`` excluded).
* ``save_pretrained_crosscheck``: a tiny Llama with real CPU weights is saved with
  ``save_pretrained`` in each setup and the safetensors file is compared, key by key, with
  ``get_peft_model_state_dict``; it shows that the state dict is what lands on disk.

Notes on the meta device
------------------------
Everything runs inside ``with torch.device("meta")`` so 70B costs no memory. peft works on
meta tensors (LoRA layers are created on meta and cast to fp32 by the default
``autocast_adapter_dtype=True``). The one thing that breaks is
``resize_token_embeddings`` with its default ``mean_resizing=True``: it calls ``.item()``
on a covariance check, which meta tensors cannot do. We pass ``mean_resizing=False``; that
only changes how the new rows are initialised, never a shape.

Run from the repository root::

    python -m harness.golden --out tests/golden/reference_counts.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

JSON = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES_DIR = REPO_ROOT / "data" / "architectures"

LLAMA2_MODELS = ("llama-2-7b", "llama-2-13b", "llama-2-70b")
RESIZED_VOCAB = 32004  # 32000 + the seed's four added special tokens
SEVEN_PROJECTIONS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]
LORA_DEFAULTS: JSON = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "bias": "none"}

SETUPS: dict[str, JSON] = {
    "all_linear": {"target_modules": SEVEN_PROJECTIONS},
    "all_linear_embed_head": {"target_modules": [*SEVEN_PROJECTIONS, "embed_tokens", "lm_head"]},
    "qv_save_embed_head": {
        "target_modules": ["q_proj", "v_proj"],
        "modules_to_save": ["embed_tokens", "lm_head"],
    },
}

_LAYER_INDEX = re.compile(r"\.layers\.\d+\.")


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the library warnings (deprecations, peft's save notices) while counting."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(previous)


_quiet = quiet  # the name the tests use


def load_architecture(path: Path) -> tuple[str, PretrainedConfig]:
    """Read one catalog file and return its catalog name and the HF config built from it."""
    fields: JSON = json.loads(path.read_text())
    catalog = fields.pop("_catalog")
    model_type = fields.pop("model_type")
    return catalog["name"], AutoConfig.for_model(model_type, **fields)


def architecture_configs() -> dict[str, PretrainedConfig]:
    """All catalog architectures, keyed by catalog name."""
    return dict(load_architecture(p) for p in sorted(ARCHITECTURES_DIR.glob("*.json")))


def build_meta_model(config: PretrainedConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """Build a bf16 causal LM on the meta device, optionally resizing its vocabulary.

    Call inside ``torch.device("meta")``. ``dtype=`` is transformers 5's name for ``torch_dtype=``.
    The config is copied: the model keeps a reference to the config it was built from, and
    ``resize_token_embeddings`` rewrites that config's ``vocab_size`` in place.
    """
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.bfloat16)
    if vocab_size is not None and vocab_size != config.vocab_size:
        # mean_resizing=True (the default) calls .item(), impossible on meta tensors.
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters as ``parameters()`` yields them: a tied tensor counts once."""
    return sum(p.numel() for p in model.parameters())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _modules_to_save_names(peft_model: PeftModel) -> list[str]:
    return [n for n, m in peft_model.named_modules() if isinstance(m, ModulesToSaveWrapper)]


def summarize_state_dict(state_dict: dict[str, torch.Tensor], modules_to_save_keys: set[str]) -> JSON:
    """Totals, per-category totals, LoRA key patterns and every non-LoRA key of an adapter.

    Categories: ``lora`` (any key containing ``lora_``, which covers ``lora_A/B`` and
    ``lora_embedding_A/B``), ``modules_to_save`` (the trained copies that peft saves without
    being asked for embedding layers) and ``embedding_layers`` (full embedding / lm_head
    tensors added because ``save_embedding_layers`` resolved to True).
    """
    categories: dict[str, JSON] = {}
    lora_patterns: dict[str, JSON] = {}
    non_lora: dict[str, JSON] = {}
    for key, tensor in state_dict.items():
        numel, nbytes, dtype = (
            tensor.numel(),
            tensor.numel() * tensor.element_size(),
            _dtype_name(tensor.dtype),
        )
        if "lora_" in key:
            category = "lora"
            pattern = _LAYER_INDEX.sub(".layers.{i}.", key)
            entry = lora_patterns.setdefault(pattern, {"count": 0, "shape": list(tensor.shape), "dtype": dtype})
            if entry["shape"] != list(tensor.shape) or entry["dtype"] != dtype:
                raise AssertionError(f"{pattern} is not uniform across layers")
            entry["count"] += 1
        else:
            category = "modules_to_save" if key in modules_to_save_keys else "embedding_layers"
            non_lora[key] = {
                "category": category,
                "shape": list(tensor.shape),
                "dtype": dtype,
                "numel": numel,
                "bytes": nbytes,
            }
        cat = categories.setdefault(category, {"num_tensors": 0, "numel": 0, "bytes": 0, "dtypes": []})
        cat["num_tensors"] += 1
        cat["numel"] += numel
        cat["bytes"] += nbytes
        if dtype not in cat["dtypes"]:
            cat["dtypes"] = sorted([*cat["dtypes"], dtype])
    return {
        "num_tensors": len(state_dict),
        "total_numel": sum(c["numel"] for c in categories.values()),
        "total_bytes": sum(c["bytes"] for c in categories.values()),
        "by_category": categories,
        "lora_key_patterns": lora_patterns,
        "non_lora_keys": non_lora,
    }


def _lora_config(setup: JSON, **overrides: Any) -> LoraConfig:
    return LoraConfig(task_type="CAUSAL_LM", **{**LORA_DEFAULTS, **setup, **overrides})


def adapter_record(peft_model: PeftModel, lora_config: LoraConfig, base_config_dir: Path | None) -> JSON:
    """Everything recorded for one LoRA setup on one base model.

    ``base_config_dir`` holds the original (un-resized) config; pointing the adapter's
    ``base_model_name_or_path`` at it reproduces what peft does for a hub-loaded model.
    """
    sd_false = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    modules_to_save_keys = {k for k in sd_false if "lora_" not in k}
    for key in modules_to_save_keys:
        if not any(key.startswith(f"{name}.") for name in _modules_to_save_names(peft_model)):
            raise AssertionError(f"unexpected non-LoRA key without embedding layers: {key}")
    trainable, total = peft_model.get_nb_trainable_parameters()
    target_modules = lora_config.target_modules
    record: JSON = {
        "lora_config": {
            **{k: getattr(lora_config, k) for k in LORA_DEFAULTS},
            "target_modules": target_modules if isinstance(target_modules, str) else sorted(target_modules),
            "modules_to_save": sorted(lora_config.modules_to_save or []),
        },
        "targeted_module_count": len(peft_model.targeted_module_names),
        "targeted_module_suffixes": sorted({n.rsplit(".", 1)[-1] for n in peft_model.targeted_module_names}),
        "trainable_parameters": trainable,
        "all_parameters": total,
        "base_model_name_or_path": peft_model.peft_config["default"].base_model_name_or_path,
        "adapter_state_dict": summarize_state_dict(get_peft_model_state_dict(peft_model), modules_to_save_keys),
        "adapter_state_dict_save_embedding_layers_false": summarize_state_dict(sd_false, modules_to_save_keys),
    }
    if base_config_dir is not None:
        adapter_config = peft_model.peft_config["default"]
        adapter_config.base_model_name_or_path = str(base_config_dir)
        try:
            sd_hub = get_peft_model_state_dict(peft_model)
        finally:
            adapter_config.base_model_name_or_path = record["base_model_name_or_path"]
        record["adapter_state_dict_auto_hub_loaded_base"] = summarize_state_dict(sd_hub, modules_to_save_keys)
    return record


def lora_records(config: PretrainedConfig, vocab_size: int, setups: dict[str, JSON]) -> JSON:
    """Base parameter count and one ``adapter_record`` per setup for one model/vocabulary."""
    resized = vocab_size != config.vocab_size
    out: JSON = {"vocab_size": vocab_size, "setups": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp)
        config.save_pretrained(base_dir)
        for name, setup in setups.items():
            with torch.device("meta"):
                model = build_meta_model(config, vocab_size)
                out["base_parameters"] = count_parameters(model)
                lora_config = _lora_config(setup)
                peft_model = get_peft_model(model, lora_config)
                out["setups"][name] = adapter_record(peft_model, lora_config, base_dir if resized else None)
    return out


def lora_variants(config: PretrainedConfig) -> JSON:
    """Llama 2 7B (vocab 32004): r=64 and the ``"all-linear"`` shorthand vs the seven projections."""
    variants = {
        "seven_projections_r8": {"target_modules": SEVEN_PROJECTIONS, "r": 8},
        "seven_projections_r64": {"target_modules": SEVEN_PROJECTIONS, "r": 64},
        "all_linear_string_r8": {"target_modules": "all-linear", "r": 8},
        "all_linear_string_r64": {"target_modules": "all-linear", "r": 64},
    }
    out: JSON = {}
    for name, overrides in variants.items():
        with torch.device("meta"):
            model = build_meta_model(config, RESIZED_VOCAB)
            peft_model = get_peft_model(model, _lora_config({}, **overrides))
            trainable, total = peft_model.get_nb_trainable_parameters()
            sd = get_peft_model_state_dict(peft_model)
        out[name] = {
            "r": overrides["r"],
            "target_modules": overrides["target_modules"],
            "targeted_module_count": len(peft_model.targeted_module_names),
            "targeted_module_suffixes": sorted({n.rsplit(".", 1)[-1] for n in peft_model.targeted_module_names}),
            "trainable_parameters": trainable,
            "all_parameters": total,
            "adapter_total_numel": sum(t.numel() for t in sd.values()),
            "adapter_total_bytes": sum(t.numel() * t.element_size() for t in sd.values()),
        }
    for r in (8, 64):
        string, listed = out[f"all_linear_string_r{r}"], out[f"seven_projections_r{r}"]
        keys = (
            "targeted_module_count",
            "targeted_module_suffixes",
            "trainable_parameters",
            "adapter_total_bytes",
        )
        out[f"all_linear_string_equals_seven_projections_r{r}"] = all(string[k] == listed[k] for k in keys)
    return out


def meta_mean_resizing_error(config: PretrainedConfig) -> str | None:
    """The error ``resize_token_embeddings`` raises on meta with its default mean resizing."""
    with torch.device("meta"):
        model = build_meta_model(config)
        try:
            model.resize_token_embeddings(config.vocab_size + 4)
        except RuntimeError as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def save_pretrained_crosscheck() -> JSON:
    """Save a tiny real-weight Llama adapter in each setup; compare the file with the state dict."""
    tiny = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=100,
        tie_word_embeddings=False,
    )
    out: JSON = {}
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        tiny.save_pretrained(base_dir)
        for setup_name, setup in SETUPS.items():
            for variant, base_id in (
                ("from_config", None),
                ("hub_loaded_base", base_dir),
            ):
                torch.manual_seed(0)
                model = AutoModelForCausalLM.from_config(copy.deepcopy(tiny), dtype=torch.bfloat16)
                model.resize_token_embeddings(104)
                peft_model = get_peft_model(model, _lora_config(setup))
                if base_id is not None:
                    peft_model.peft_config["default"].base_model_name_or_path = str(base_id)
                sd = get_peft_model_state_dict(peft_model)
                save_dir = Path(tmp) / f"{setup_name}-{variant}"
                peft_model.save_pretrained(save_dir)
                on_disk = load_file(save_dir / "adapter_model.safetensors")
                by_ptr: dict[int, list[str]] = {}
                for k, t in sd.items():
                    by_ptr.setdefault(t.data_ptr(), []).append(k)
                out[f"{setup_name}/{variant}"] = {
                    "keys_match": sorted(sd) == sorted(on_disk),
                    "shapes_and_dtypes_match": all(
                        k in on_disk and sd[k].shape == on_disk[k].shape and sd[k].dtype == on_disk[k].dtype for k in sd
                    ),
                    "state_dict_bytes": sum(t.numel() * t.element_size() for t in sd.values()),
                    "file_tensor_bytes": sum(t.numel() * t.element_size() for t in on_disk.values()),
                    "aliased_keys_in_state_dict": sorted(sorted(v) for v in by_ptr.values() if len(v) > 1),
                }
    return out


def compute() -> JSON:
    """All golden values as one JSON-ready dict."""
    with quiet():
        configs = architecture_configs()
        parameter_counts: dict[str, int] = {}
        for name, config in configs.items():
            with torch.device("meta"):
                parameter_counts[name] = count_parameters(build_meta_model(config))
        lora: JSON = {}
        for name in LLAMA2_MODELS:
            lora[name] = {
                f"vocab_{RESIZED_VOCAB}": lora_records(configs[name], RESIZED_VOCAB, SETUPS),
                f"vocab_{configs[name].vocab_size}": lora_records(
                    configs[name],
                    configs[name].vocab_size,
                    {"all_linear": SETUPS["all_linear"]},
                ),
            }
        variants = lora_variants(configs["llama-2-7b"])
        resize_error = meta_mean_resizing_error(configs["llama-2-7b"])
        crosscheck = save_pretrained_crosscheck()
    return {
        "generated": {
            "date": dt.date.today().isoformat(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            "lora_defaults": {
                **LORA_DEFAULTS,
                "task_type": "CAUSAL_LM",
                "autocast_adapter_dtype": True,
            },
            "meta_resize_with_default_mean_resizing": resize_error,
        },
        "parameter_counts": parameter_counts,
        "lora": lora,
        "lora_variants": {"llama-2-7b": variants},
        "save_pretrained_crosscheck": crosscheck,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, help="write JSON here (default: print to stdout)")
    args = parser.parse_args(argv)
    text = json.dumps(compute(), indent=2, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
