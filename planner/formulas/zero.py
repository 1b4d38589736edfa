"""DeepSpeed ZeRO partitioning and the buffers DeepSpeed allocates (all in bytes per GPU).

Sources: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", §5 (stage 1 shards optimizer states, stage 2 also gradients, stage 3 also
parameters); deepspeed/runtime/zero/stage_1_and_2.py (``ipg_buffer``: two reduce buckets with
``overlap_comm``), deepspeed/runtime/zero/stage3.py (one ``__ipg_bucket_flat_buffer``;
``fp32_partitioned_groups_flat`` sub-groups of ``sub_group_size``), partition_parameters.py
(parameters at or under ``stage3_param_persistence_threshold`` elements stay whole on every rank).
"""

from __future__ import annotations

from planner.formulas.activations import first_layer_input_needs_grad
from planner.formulas.params import embedding_params, layer_linears, vocab
from planner.schema.catalog import Architecture
from planner.schema.spec import DeepSpeedConfig, TrainingSpec
from planner.units import ceil_div

#: DeepSpeed's all-reduce bucket without ZeRO (deepspeed/runtime/engine.py MEMORY_OPT_ALLREDUCE_SIZE).
DS_ALLREDUCE_BUCKET_ELEMS = 500_000_000


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


def allreduce_copy_bytes(grad_bytes: int, grad_elem_bytes: int) -> int:
    """Without ZeRO, DeepSpeed all-reduces the 16-bit gradients at the accumulation boundary
    through one flat copy of at most ``MEMORY_OPT_ALLREDUCE_SIZE`` (5e8) elements beside them
    (engine.py ``_backward_epilogue`` -> ``allreduce_gradients`` -> ``allreduce_bucket``): the
    gradients' bytes, capped at 5e8 elements of ``grad_elem_bytes``."""
    return min(grad_bytes, DS_ALLREDUCE_BUCKET_ELEMS * grad_elem_bytes)


def zero3_live_params_bytes(largest_module_bytes: int, prefetch_bytes: int, max_live_bytes: int, not_local_bytes: int) -> int:
    """Gathered full parameters under ZeRO-3: the module running now plus the prefetch bucket,
    capped by ``stage3_max_live_parameters`` and by what this rank does not hold itself
    (with one rank nothing needs gathering)."""
    return max(0, min(largest_module_bytes + prefetch_bytes, max_live_bytes, not_local_bytes))


def zero3_retained_params_bytes(reuse_distance_elems: int, grad_ckpt: bool, weight_bytes: int, not_local_bytes: int) -> int:
    """Gathered parameters ZeRO-3 keeps around the turn from forward to backward.

    DeepSpeed does not release a module's parameters when the step's trace uses them again
    within ``stage3_max_reuse_distance`` elements of fetches (deepspeed/runtime/zero/
    partitioned_param_coordinator.py ``__params_to_release``; the trace ends with the step).
    A module x elements below the top of the forward is used again after the x above it and,
    in backward, the same x again (twice with checkpointing: re-run, then backward), so it is
    kept when 2x (3x) is within the distance: around the turn, distance / 2 (/ 3) elements stay
    gathered, all of the model when it is smaller. Seen on the CPU: a 4 M-parameter model stays
    whole through forward and backward (data/measurements/run/cpu.jsonl)."""
    elems = reuse_distance_elems // (3 if grad_ckpt else 2)
    return max(0, min(elems * weight_bytes, not_local_bytes))


def zero3_released_bytes(arch: Architecture, spec: TrainingSpec, weight_bytes: int) -> tuple[int, int]:
    """Gathered weights ZeRO-3 releases early in a step: (after forward, after lm_head's backward).

    DeepSpeed releases a module's gathered parameters once the step's trace has no further use
    for them (partitioned_param_coordinator.py ``__params_to_release``), whatever the reuse
    distance. A module whose output needs no gradient gets no backward hook, so its last use is
    its forward: the frozen input embedding, and the first layer's frozen q/k/v (their input needs
    no gradient, see ``first_layer_input_needs_grad``) when nothing asks for the embedding
    output's gradient. lm_head's last use is its backward, which comes before the layers'. Small
    (persisted) weights are never released; a tied head is the embedding. Harness runs over two
    ranks: 7b-tiny's gathered weights at the turn are the whole model less the embedding and the
    first q/k/v without checkpointing, and less lm_head inside the top layer's backward."""
    threshold = persistence_threshold_elems(arch, spec.deepspeed)
    emb = embedding_params(arch, spec.added_tokens)
    after_fwd = 0
    if not first_layer_input_needs_grad(spec):
        if not arch.tie_word_embeddings and emb > threshold:
            after_fwd += emb * weight_bytes
        linears = layer_linears(arch)
        qkv = (linears[q].weight_numel for q in ("q_proj", "k_proj", "v_proj"))
        after_fwd += sum(numel * weight_bytes for numel in qkv if numel > threshold)
    head = 0 if arch.tie_word_embeddings or emb <= threshold else emb * weight_bytes
    return after_fwd, head


def offloaded_optimizer_bytes_per_elem(zero_stage: int, grad_bytes: int) -> int:
    """Host bytes per trainable element with the optimizer offloaded (DeepSpeed ZeRO-Offload,
    Ren et al. 2021, §4; DeepSpeedCPUAdam): the fp32 master (4), two fp32 Adam moments (8) and
    the fp32 gradient (4); ZeRO-3 also pins its 16-bit gradient partition buffer on the host
    (stage3.py ``grad_partitions_flat_buffer``, ``grad_bytes`` per element)."""
    return 4 + 8 + 4 + (grad_bytes if zero_stage == 3 else 0)


def zero3_module_calls(arch: Architecture, spec: TrainingSpec) -> tuple[int, int]:
    """(fetching, other) module calls one ZeRO-3 micro-step makes through DeepSpeed's hooks.

    DeepSpeed ZeRO-3 hooks every submodule (``DeepSpeedZeRoOffload._register_hooks_recursively``,
    deepspeed/runtime/zero/parameter_offload.py): before a module runs forward or backward it
    gathers the partitioned parameters the module holds itself and releases them after; a
    module holding none (or only persisted ones, at most ``stage3_param_persistence_threshold``
    elements) still runs the hook bookkeeping. Both are host (Python) time that does not shrink
    with the micro batch.

    Counted as transformers' Llama and peft's LoRA call them (checked against DeepSpeed's own
    hook calls in tests/harness/test_harness_live.py). Per decoder layer: the layer, attention, MLP,
    activation and two RMSNorms (hooks only) and seven projections (fetching); per
    LoRA-adapted projection peft adds the wrapper and its dropout (hooks only) and
    ``base_layer``, ``lora_A`` and ``lora_B`` (fetching when above the threshold). Outside the
    layers: the model, its body, the rotary embedding and the final norm (hooks), the embedding
    and the LM head (fetching), peft's root module, the wrapper of a LoRA embedding, and the
    wrapper of each ``modules_to_save`` copy.

    Every module runs forward once; the checkpointed re-run calls a layer's submodules again
    (inside the layer's own hooks, so not the layer itself). Backward reaches a module when its
    output requires grad: never the rotary embedding; with LoRA and no checkpointing, not the
    frozen modules of the first layer that only see the (frozen) embedding's output, nor the
    frozen embedding (with checkpointing, peft makes the embedding's output require grad), nor
    the frozen modules above the last adapted one.
    """
    threshold = persistence_threshold_elems(arch, spec.deepspeed)
    lin = layer_linears(arch)
    peft = spec.method != "full"
    targets = set(spec.lora_targets) if peft else set()
    r = spec.lora_rank

    def proj(name: str, input_grad: bool) -> tuple[list[bool], list[bool]]:
        """(fetching flags, gets-backward flags) of the modules one projection calls."""
        s = lin[name]
        if name not in targets:
            return [True], [input_grad]
        a, b = r * s.in_features > threshold, s.out_features * r > threshold
        # wrapper, base_layer, dropout, lora_A, lora_B
        return [False, True, False, a, b], [True, input_grad, input_grad, True, True]

    def layer(x_grad: bool) -> tuple[list[bool], list[bool], bool]:
        """One decoder layer's submodules (fetching, backward) and whether its output requires grad."""
        fetch: list[bool] = []
        bwd: list[bool] = []

        def add(f: list[bool], g: list[bool]) -> None:
            fetch.extend(f)
            bwd.extend(g)

        add([False], [x_grad])  # input_layernorm (persisted weight)
        for name in ("q_proj", "k_proj", "v_proj"):
            add(*proj(name, x_grad))
        attn_grad = x_grad or any(n in targets for n in ("q_proj", "k_proj", "v_proj"))
        add(*proj("o_proj", attn_grad))
        o_grad = attn_grad or "o_proj" in targets
        add([False], [o_grad])  # self_attn
        h_grad = x_grad or o_grad
        add([False], [h_grad])  # post_attention_layernorm
        add(*proj("gate_proj", h_grad))
        add(*proj("up_proj", h_grad))
        gate_grad, up_grad = h_grad or "gate_proj" in targets, h_grad or "up_proj" in targets
        add([False], [gate_grad])  # act_fn
        add(*proj("down_proj", gate_grad or up_grad))
        out_grad = h_grad or gate_grad or up_grad or "down_proj" in targets
        add([False], [out_grad])  # mlp
        return fetch, bwd, out_grad

    lora_embed, lora_head = "embed_tokens" in targets, "lm_head" in targets
    saved_embed, saved_head = "embed_tokens" in spec.modules_to_save, "lm_head" in spec.modules_to_save
    # the embedding's output requires grad when it trains (full, a LoRA embedding, a trainable
    # copy) or, under checkpointing, because peft makes it (enable_input_require_grads)
    x_grad = not peft or lora_embed or saved_embed or spec.grad_ckpt
    fetching = hooked = 0

    def count(f: bool, times: int) -> None:
        nonlocal fetching, hooked
        if f:
            fetching += times
        else:
            hooked += times

    recompute = 1 if spec.grad_ckpt else 0
    for _ in range(arch.num_hidden_layers):
        fetch, bwd, out_grad = layer(x_grad)
        for f, g in zip(fetch, bwd, strict=True):
            count(f, 1 + recompute + (1 if g else 0))
        count(False, 1 + (1 if out_grad else 0))  # the decoder layer itself
        x_grad = out_grad
    # outside the layers: (fetching, gets backward)
    outside = [(False, True), (False, x_grad), (False, False), (False, x_grad)]  # model, body, rotary, final norm
    if peft:
        outside.append((False, True))  # PeftModel
    if lora_head:  # wrapper, base, dropout, A (r x h), B (vocab x r)
        v = vocab(arch, spec.added_tokens)
        outside += [(False, True), (True, x_grad), (False, x_grad), (r * arch.hidden_size > threshold, True), (v * r > threshold, True)]
    elif saved_head:  # wrapper, trainable copy
        outside += [(False, True), (True, True)]
    else:
        outside.append((True, x_grad))
    if lora_embed:  # wrapper (lora_embedding_A/B sit in ParameterDicts, never called), frozen base
        outside += [(False, True), (True, spec.grad_ckpt)]
    elif saved_embed:
        outside += [(False, True), (True, True)]
    else:
        outside.append((True, not peft or spec.grad_ckpt))
    for f, g in outside:
        count(f, 1 + (1 if g else 0))
    return fetching, hooked
