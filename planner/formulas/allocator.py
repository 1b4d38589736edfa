"""PyTorch's CUDA caching allocator: what it reserves on top of the live tensors."""

from __future__ import annotations

from planner.units import MIB, ceil_div

#: CUDACachingAllocator rounds large segments to 2 MiB.
ALLOCATOR_ROUND_BYTES = 2 * MIB


def reserved_bytes(allocated_bytes: int, reserve_fraction: float) -> int:
    """``torch.cuda.max_memory_reserved`` for a peak of ``allocated_bytes`` live tensors: the
    peak plus the allocator's reserve (``reserve_fraction`` of it, the calibration's
    ``allocator_reserve_fraction``, truncated to whole bytes), rounded up to 2 MiB."""
    reserved = allocated_bytes + int(allocated_bytes * reserve_fraction)
    return ceil_div(reserved, ALLOCATOR_ROUND_BYTES) * ALLOCATOR_ROUND_BYTES
