"""Checkpoint sizes on disk (tensor bytes; the safetensors JSON header, a few KiB, is left out).

* model weights: ``save_pretrained`` writes every parameter in its dtype (16-bit for the
  16-bit modes; DeepSpeed's ``stage3_gather_16bit_weights_on_model_save`` also gathers 16-bit).
* LoRA adapter: what peft's ``get_peft_model_state_dict`` returns and ``save_pretrained``
  writes: the A/B matrices (in the dtype they are trained in, see
  ``dtypes.adapter_bytes_per_elem``), the ``modules_to_save`` copies (base dtype), and — with
  ``save_embedding_layers="auto"`` (peft >= 0.7) — whole embedding layers (see
  ``embedding_layers_saved``), which carry the rows of added tokens (peft ``utils/save_and_load.py``).
* training state: DeepSpeed ``save_checkpoint`` of the trainable weights, their fp32 master
  copy and the optimizer moments (the frozen base of LoRA is not part of it).
"""

from __future__ import annotations

from typing import NamedTuple

from planner.formulas import params as prm
from planner.formulas.dtypes import PRECISIONS, adapter_bytes_per_elem, optimizer_state_bytes
from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec


class AdapterBytes(NamedTuple):
    lora_bytes: int
    modules_to_save_bytes: int
    embedding_layers_bytes: int

    @property
    def total(self) -> int:
        return self.lora_bytes + self.modules_to_save_bytes + self.embedding_layers_bytes


def save_dtype_bytes(spec: TrainingSpec) -> int:
    """16-bit modes save 2 bytes per weight; fp32 weights (amp-bf16, fp32) save 4."""
    return 4 if PRECISIONS[spec.precision].weight == 4 else 2


def embedding_layers_saved(spec: TrainingSpec) -> tuple[str, ...]:
    """Which of embed_tokens / lm_head peft writes beyond their LoRA A/B.

    peft ``get_peft_model_state_dict(save_embedding_layers="auto")`` saves the whole embedding
    layers when they are LoRA targets, and also when the vocabulary differs from the base
    model's ``config.json`` (a hub-loaded base after ``resize_token_embeddings``):

    * ``targets``: only the LoRA-targeted embedding layers (peft's "auto" on a model built from
      a config, which has no base to compare with);
    * ``auto``: what peft does for a hub-loaded base: ``full`` when tokens were added, else
      ``targets``;
    * ``full``: both layers (``save_embedding_layers=True``);
    * ``rows``: only the rows of the added tokens of both layers (the seed's layout; peft's
      ``trainable_token_indices``);
    * ``none``: nothing beyond A/B and modules_to_save (``save_embedding_layers=False``).
    """
    mode = spec.save_embedding_layers
    if mode == "auto":
        mode = "full" if spec.added_tokens > 0 else "targets"
    if mode == "none":
        return ()
    if mode == "targets":
        return tuple(m for m in ("embed_tokens", "lm_head") if m in spec.lora_targets)
    return ("embed_tokens", "lm_head")


def adapter_bytes(arch: Architecture, spec: TrainingSpec) -> AdapterBytes:
    base_w = save_dtype_bytes(spec)
    added = spec.added_tokens
    lora = prm.lora_params(arch, spec.lora_targets, spec.lora_rank, added) * adapter_bytes_per_elem(spec)
    mts = prm.modules_to_save_params(arch, spec.modules_to_save, added) * base_w
    layers = embedding_layers_saved(spec)
    if arch.tie_word_embeddings and len(layers) == 2:
        layers = layers[:1]  # one shared tensor
    rows = spec.added_tokens if spec.save_embedding_layers == "rows" else prm.vocab(arch, added)
    # NB: for a layer in modules_to_save, peft 0.21 matches the wrapper's keys and writes its
    # ``original_module`` and a second copy of ``modules_to_save`` (tests/golden, hub case).
    copies = sum(2 if m in spec.modules_to_save else 1 for m in layers)
    emb = copies * rows * arch.hidden_size * base_w
    return AdapterBytes(lora_bytes=lora, modules_to_save_bytes=mts, embedding_layers_bytes=emb)


def model_weights_bytes(arch: Architecture, spec: TrainingSpec) -> int:
    """The fine-tuned model (full) or the base model it adapts (LoRA, QLoRA), as saved."""
    added = spec.added_tokens if spec.method == "full" else 0
    return prm.total_params(arch, added) * save_dtype_bytes(spec)


def merged_model_bytes(arch: Architecture, spec: TrainingSpec) -> int:
    """After ``merge_and_unload``: the base with the vocabulary grown by the added tokens."""
    return prm.total_params(arch, spec.added_tokens) * save_dtype_bytes(spec)


def training_state_bytes(spec: TrainingSpec, trainable: int, lora: int = 0) -> int:
    """Trainable weights as held (LoRA A/B in the adapter dtype, the rest as saved) + fp32
    master (mixed precision) + optimizer moments."""
    dt = PRECISIONS[spec.precision]
    weights = lora * adapter_bytes_per_elem(spec) + (trainable - lora) * save_dtype_bytes(spec)
    return weights + trainable * dt.master + optimizer_state_bytes(spec.optimizer, dt, trainable)


def copies_that_fit(budget_bytes: int, each_bytes: int, shared_bytes: int = 0) -> int:
    """How many checkpoints of ``each_bytes`` fit beside one shared base (the seed's storage
    arithmetic: 20 full 7B models in ~280 GB; ~700 LoRA 70B adapters plus the base)."""
    if each_bytes <= 0 or budget_bytes < shared_bytes:
        return 0
    return (budget_bytes - shared_bytes) // each_bytes
