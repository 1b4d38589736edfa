"""Training stacks (``data/stacks/*.json``): what the software that runs the job does with memory.

The same model, method and batch take different gigabytes under DeepSpeed, the HF Trainer with
torch DDP, FSDP1 through accelerate, FSDP2, Lightning, torchtune or a hand-written loop. A stack
profile is a set of named behaviours, each the value of one ``TrainingSpec`` field with the
library source that shows it (file and function at a version). Every behaviour is also a ``plan``
option (``--loss-path``, ``--sharding``, ...) that overrides the profile; ``plan list stacks``
shows them. ``docs/stacks.md`` gives each behaviour's bytes.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The behaviours a profile sets: request field (= ``TrainingSpec`` field, except ``zero`` and
#: ``precision`` which the request names like their options) -> what it decides.
BEHAVIOURS: dict[str, str] = {
    "sharding": "the engine that holds the model: deepspeed, fsdp2, fsdp1 or ddp (none: one GPU or torch DDP)",
    "zero": "the sharding stage the engine runs (DeepSpeed ZeRO stage; 3 for FSDP FULL_SHARD, 0 without sharding)",
    "offload": "what leaves the GPU by default",
    "precision": "the dtypes of weights, gradients and optimizer states by default",
    "autocast": "the forward runs under torch.autocast(bf16) over bf16 weights too",
    "adapter_dtype": "the dtype LoRA adapters are held and saved in (auto: the engine's rule)",
    "loss_path": "how the logits become the loss (depends on the transformers version)",
    "keep_outputs": "the loop keeps the model output (the logits) alive through backward",
    "qlora_prep": "how a 4-bit model was prepared for training (peft / TRL casts)",
    "bnb_keeps_input": "bitsandbytes < 0.43.2: every frozen 4-bit linear keeps its input",
    "ddp_grad_copy": "torch DDP's buckets hold a second copy of the gradients (gradient_as_bucket_view=False)",
    "adamw_impl": "torch AdamW's implementation: foreach (a state-sized scratch) or fused (none)",
    "quantize_lm_head": "the 4-bit plugin quantizes lm_head too",
    "fsdp_no_sync": "FSDP1 gradient accumulation under no_sync(): unsharded gradients held until the sync micro batch",
    "fsdp_flat_grads": "an FSDP1 unit's gradient is its whole FlatParameter, frozen weights included (use_orig_params=True, mixed units)",
}

#: Packages whose installed versions ``--stack auto`` reads (package metadata, no import).
VERSION_PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "deepspeed")


class Behaviour(BaseModel):
    """One behaviour's value in a profile and the source that shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: Any
    source: str = Field(min_length=10, description="Library, file and function at a version (or tag/commit) that shows it.")


class StackProfile(BaseModel):
    """One ``data/stacks/<name>.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    title: str
    description: str
    versions: dict[str, str] = Field(description="The library versions the profile's behaviours were read at (package -> version range).")
    behaviours: dict[str, Behaviour]
    engines: list[str] = Field(
        default=[], description="Other sharding engines the stack also runs (given with --sharding), beside its behaviour 'sharding'."
    )
    as_of: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")

    @model_validator(mode="after")
    def _known(self) -> "StackProfile":
        unknown = sorted(set(self.behaviours) - set(BEHAVIOURS))
        if unknown:
            raise ValueError(f"unknown behaviour {unknown[0]!r} (known: {', '.join(BEHAVIOURS)})")
        if "sharding" not in self.behaviours:
            raise ValueError("a stack names its sharding engine (behaviour 'sharding')")
        return self

    def value(self, name: str, default: Any = None) -> Any:
        b = self.behaviours.get(name)
        return default if b is None else b.value
