"""DeepSpeed ZeRO partitioning and the buffers DeepSpeed allocates (all in bytes per GPU).

Sources: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", §5 (stage 1 shards optimizer states, stage 2 also gradients, stage 3 also
parameters); deepspeed/runtime/zero/stage_1_and_2.py (``ipg_buffer``: two reduce buckets with
``overlap_comm``), deepspeed/runtime/zero/stage3.py (one ``__ipg_bucket_flat_buffer``;
``fp32_partitioned_groups_flat`` sub-groups of ``sub_group_size``), partition_parameters.py
(parameters at or under ``stage3_param_persistence_threshold`` elements stay whole on every rank).
"""

from __future__ import annotations

from planner.schemas import Architecture
from planner.spec import DeepSpeedConfig


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
