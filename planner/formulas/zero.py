"""DeepSpeed ZeRO partitioning and the buffers DeepSpeed allocates (all in bytes per GPU).

Sources: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", §5 (stage 1 shards optimizer states, stage 2 also gradients, stage 3 also
parameters); deepspeed/runtime/zero/stage_1_and_2.py (``ipg_buffer``: two reduce buckets with
``overlap_comm``), deepspeed/runtime/zero/stage3.py (one ``__ipg_bucket_flat_buffer``;
``fp32_partitioned_groups_flat`` sub-groups of ``sub_group_size``), partition_parameters.py
(parameters at or under ``stage3_param_persistence_threshold`` elements stay whole on every rank).
"""

from __future__ import annotations

from planner.formulas.params import layer_linears, vocab
from planner.schemas import Architecture
from planner.spec import DeepSpeedConfig, TrainingSpec


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def shard(total_bytes: int, world: int, sharded: bool) -> int:
    """One rank's share: ``ceil(total / world)`` when sharded, else everything."""
    return ceil_div(total_bytes, world) if sharded else total_bytes


def reduce_bucket_elems(arch: Architecture, ds: DeepSpeedConfig) -> int:
    """``reduce_bucket_size``; Hugging Face's "auto" sets it to hidden_size**2."""
    return ds.reduce_bucket_size if ds.reduce_bucket_size is not None else arch.hidden_size**2


def prefetch_bucket_elems(arch: Architecture, ds: DeepSpeedConfig) -> int:
    """``stage3_prefetch_bucket_size``; Hugging Face's "auto" is 0.9 * hidden_size**2."""
    if ds.stage3_prefetch_bucket_size is not None:
        return ds.stage3_prefetch_bucket_size
    return int(0.9 * arch.hidden_size**2)


def persistence_threshold_elems(arch: Architecture, ds: DeepSpeedConfig) -> int:
    """``stage3_param_persistence_threshold``; Hugging Face's "auto" is 10 * hidden_size."""
    if ds.stage3_param_persistence_threshold is not None:
        return ds.stage3_param_persistence_threshold
    return 10 * arch.hidden_size


def reduce_buckets_bytes(zero_stage: int, bucket_elems: int, grad_bytes: int, ds: DeepSpeedConfig) -> int:
    """Gradient reduction buckets, each allocated whole (``reduce_bucket_size`` elements).

    Stages 0-2 keep two buckets when ``overlap_comm`` is on (one filling, one reducing), live
    during backward; stage 3 one flat bucket per gradient dtype, allocated at init.
    """
    count = 1 if zero_stage == 3 or not ds.overlap_comm else 2
    return count * bucket_elems * grad_bytes


def zero3_live_params_bytes(largest_module_bytes: int, prefetch_bytes: int, max_live_bytes: int, not_local_bytes: int) -> int:
    """Gathered full parameters under ZeRO-3: the module running now plus the prefetch bucket,
    capped by ``stage3_max_live_parameters`` and by what this rank does not hold itself
    (with one rank nothing needs gathering)."""
    return max(0, min(largest_module_bytes + prefetch_bytes, max_live_bytes, not_local_bytes))


def zero3_module_calls(arch: Architecture, spec: TrainingSpec) -> tuple[int, int]:
    """(fetching, other) module calls one ZeRO-3 micro-step makes through DeepSpeed's hooks.

    DeepSpeed ZeRO-3 hooks every submodule (``DeepSpeedZeRoOffload._register_hooks_recursively``,
    deepspeed/runtime/zero/parameter_offload.py): before a module runs forward or backward it
    gathers the partitioned parameters the module holds itself and releases them after; a
    module holding none (or only persisted ones, at most ``stage3_param_persistence_threshold``
    elements) still runs the hook bookkeeping. Both are host (Python) time that does not shrink
    with the micro batch. Counted per call, as transformers' Llama and peft's LoRA call them
    (checked with forward pre-hooks on transformers 5.24 / peft 0.21): per decoder layer the
    layer, attention, MLP, activation and two RMSNorms (hooks only) and seven projections
    (fetching); per LoRA-adapted projection peft adds the wrapper and its dropout (hooks only)
    and ``base_layer``, ``lora_A`` and ``lora_B`` (fetching when above the threshold); outside
    the layers the model, its body, rotary embedding and final norm (hooks), the embedding and
    the LM head (fetching), peft's root module, the wrapper of a LoRA embedding, and the wrapper
    of each ``modules_to_save`` copy. Every module runs once in forward and once in backward; decoder-layer modules run a
    third time in the checkpointed re-run.
    """
    threshold = persistence_threshold_elems(arch, spec.deepspeed)
    lin = layer_linears(arch)
    peft = spec.method != "full"
    targets = set(spec.lora_targets) if peft else set()
    r = spec.lora_rank
    fetch_layer, hook_layer = len(lin), 6
    for name, s in lin.items():
        if name in targets:
            hook_layer += 2  # peft wrapper (holds no parameter itself) and lora_dropout
            fetch_a, fetch_b = r * s.in_features > threshold, s.out_features * r > threshold
            fetch_layer += fetch_a + fetch_b
            hook_layer += (not fetch_a) + (not fetch_b)
    fetch_out, hook_out = 2, 4
    if peft:
        hook_out += 1  # PeftModel
        v = vocab(arch, spec.added_tokens)
        if "lm_head" in targets:  # wrapper + dropout; base, A (r x h), B (vocab x r)
            a, b = r * arch.hidden_size > threshold, v * r > threshold
            hook_out += 2 + (not a) + (not b)
            fetch_out += a + b
        if "embed_tokens" in targets:  # the wrapper (lora_embedding_A/B sit in ParameterDicts, never called)
            hook_out += 1
        hook_out += sum(1 for m in spec.modules_to_save if m in ("embed_tokens", "lm_head"))
    layer_passes = 3 if spec.grad_ckpt else 2
    layers = arch.num_hidden_layers
    return layer_passes * layers * fetch_layer + 2 * fetch_out, layer_passes * layers * hook_layer + 2 * hook_out
