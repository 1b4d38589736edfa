"""Live tensor bytes per category in one phase of a real training step (CPU or CUDA).

torch's profiler with ``profile_memory=True`` records every allocation and free of the phase;
its memory profile (``torch.profiler._memory_profiler``) keys them by storage and guesses a
category from how autograd and the optimizer use each tensor. It only sees tensors the phase
touches, and it cannot tell DeepSpeed's own buffers apart. So before a phase we walk what is
alive and known (the module's parameters and gradients, the optimizer's parameters and state,
every tensor the DeepSpeed engine and optimizer hold) and label those storages ourselves; the
phase's live bytes at each instant are that baseline plus what the profile saw allocated (and
minus what it saw freed), and the phase peak is the largest such instant. Unlabelled storages
take the profiler's category: activations; gradients; everything else (inputs, autograd
details, temporaries, unknown) is a temporary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations", "temporaries")


def _ptr(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def _nbytes(t: torch.Tensor) -> int:
    return int(t.untyped_storage().nbytes())


def _tensors(obj: Any, depth: int, seen: set[int], name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(attribute name, tensor) reachable from ``obj`` through attributes, lists, tuples and
    dicts; the name is the attribute of ``obj`` the tensor hangs from."""
    if depth < 0 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield name, obj
        return
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, depth - 1, seen, name)
        return
    if isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _tensors(v, depth - 1, seen, name)
        return
    if isinstance(obj, torch.nn.Module):
        return  # modules are walked through their parameters
    if hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in ("deepspeed", "torch"):
        for k, v in vars(obj).items():
            yield from _tensors(v, depth - 1, seen, name or k)


def _deepspeed_category(attribute: str, t: torch.Tensor) -> str:
    """What a tensor DeepSpeed holds is, from the attribute it hangs from: the fp32 master
    partitions (``single_partition_of_fp32_groups`` in stages 1-2, ``fp32_partitioned_groups_flat``
    in stage 3, ``fp32_groups_flat_partition`` in the bf16 optimizer) are optimizer states;
    gradient partitions, reduce buckets and other float buffers are gradients."""
    name = attribute.lower()
    if "fp32" in name and "grad" not in name:
        return "optimizer_states"
    return "gradients" if t.dtype.is_floating_point else "temporaries"


def storage_labels(module: torch.nn.Module, engine: Any, device: torch.device) -> dict[int, tuple[str, int]]:
    """Storage pointer -> (category, bytes) of everything known to be alive on ``device``."""
    labels: dict[int, tuple[str, int]] = {}

    def put(t: torch.Tensor | None, category: str) -> None:
        if t is None or t.device != device or t.untyped_storage().nbytes() == 0:
            return
        labels.setdefault(_ptr(t), (category, _nbytes(t)))

    for p in module.parameters():
        if hasattr(p, "ds_tensor"):  # ZeRO-3: the local partition is the parameter's memory
            put(p.ds_tensor, "parameters")
            # a persisted (small) parameter stays whole; any other is gathered for a while
            put(p.data, "parameters" if getattr(p, "ds_persist", False) else "temporaries")
        else:
            put(p.data, "parameters")
        put(p.grad, "gradients")
    opt = getattr(engine, "optimizer", None)
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed wraps the torch optimizer
    if isinstance(inner, torch.optim.Optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                put(p, "optimizer_states")  # fp32 master partitions
                put(p.grad, "gradients")
        for state in inner.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    put(v, "optimizer_states")
    # whatever else DeepSpeed holds: gradient partitions, reduce buckets, flat buffers
    for obj in (opt, engine):
        if obj is not None:
            for attribute, t in _tensors(obj, 4, set()):
                put(t, _deepspeed_category(attribute, t))
    return labels


@dataclass
class PhaseMemory:
    peak_bytes: int
    at_peak: dict[str, int]
    #: storages the phase made that are still alive at its end: pointer -> (category, bytes);
    #: the next phase takes them as known (a forward's saved activations in backward)
    alive_at_end: dict[int, tuple[str, int]]


@contextlib.contextmanager
def _tolerant_data_flow() -> Iterator[None]:
    """torch's memory profiler checks, per op, that the versions it bumped for mutated inputs
    match its own lookup, and raises otherwise; gloo collectives that write into their inputs
    (DeepSpeed's all-gathers and reductions on a CPU) trip it, and its graph validation (one
    output per op) trips on autograd nodes under ZeRO-3. The allocations and frees are right
    either way; only the category guess of such a tensor may suffer. Same constructor and
    graph, without the raises."""
    from torch.profiler import _memory_profiler as mp

    original = mp.DataFlowNode.__init__

    def init(self: Any, event: Any, graph: Any) -> None:
        self._event = event
        self._graph = graph
        self._edges = self._determine_edges()
        for key, edge in self._edges.items():
            if edge.mutated and not edge.is_allocation:
                self._graph.bump(key)

    original_validate = mp.DataFlowGraph.validate
    mp.DataFlowNode.__init__ = init  # type: ignore[method-assign]
    mp.DataFlowGraph.validate = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        mp.DataFlowNode.__init__ = original  # type: ignore[method-assign]
        mp.DataFlowGraph.validate = original_validate  # type: ignore[method-assign]


#: What a tensor allocated inside the phase is, from the profiler's guess. Parameters and
#: optimizer states are not allocated in a steady-state step (ZeRO-3's gathers are labelled
#: before the phase), so those guesses (flat copies DeepSpeed makes for a collective, say) are
#: temporaries.
_PROFILER_CATEGORY = {
    "ACTIVATION": "activations",
    "GRADIENT": "gradients",
}


class PhaseProfiler:
    """``with pp.phase("forward", before=labels, after=lambda: labels_after): ...`` per phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.phases: dict[str, PhaseMemory] = {}

    @contextlib.contextmanager
    def phase(self, name: str, before: dict[int, tuple[str, int]], after: Any) -> Iterator[None]:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=acts, profile_memory=True, record_shapes=True, with_stack=True) as prof:
            yield
        self.phases[name] = self._peak(prof, before, after())

    def _peak(self, prof: Any, before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> PhaseMemory:
        from torch.profiler._memory_profiler import Action, TensorKey

        with _tolerant_data_flow():
            mp = prof._memory_profile()
        live = {c: 0 for c in CATEGORIES}
        for category, nbytes in before.values():
            live[category] += nbytes
        tracked: dict[Any, tuple[str, int]] = {}  # key -> (category, bytes) of what the profile added
        ptrs: dict[Any, int] = {}
        baseline_gone: set[int] = set()
        best_total, best = sum(live.values()), dict(live)
        # what the phase frees is not what the end-of-phase labels describe, even when the
        # allocator hands its address to a labelled tensor later (that reuse varies run to run)
        freed = {key for _t, action, (key, _v), _n in mp.timeline if action == Action.DESTROY}
        for _t, action, (key, version), nbytes in mp.timeline:
            if key.device != self.device:
                continue
            ptr = key.storage.ptr if isinstance(key, TensorKey) else None
            in_baseline = ptr is not None and ptr in before and ptr not in baseline_gone
            if action == Action.PREEXISTING:
                if in_baseline or nbytes <= 0:
                    continue
                category = self._category(mp, key, version, None if key in freed else ptr, after)
                tracked[(key, version)] = (category, nbytes)
                live[category] += nbytes
            elif action == Action.CREATE:
                category = self._category(mp, key, version, None if key in freed else ptr, after)
                tracked[(key, version)] = (category, nbytes)
                if ptr is not None:
                    ptrs[(key, version)] = ptr
                live[category] += nbytes
            elif action == Action.INCREMENT_VERSION:
                if (key, version) in tracked:
                    tracked[(key, version + 1)] = tracked.pop((key, version))
                    if (key, version) in ptrs:
                        ptrs[(key, version + 1)] = ptrs.pop((key, version))
                continue
            elif action == Action.DESTROY:
                hit = tracked.pop((key, version), None)
                if hit is not None:
                    live[hit[0]] -= hit[1]
                elif in_baseline and ptr is not None:
                    category, size = before[ptr]
                    live[category] -= size
                    baseline_gone.add(ptr)
                else:
                    continue
            total = sum(live.values())
            if total > best_total:
                best_total, best = total, dict(live)
        alive = {ptrs[k]: v for k, v in tracked.items() if k in ptrs}
        return PhaseMemory(peak_bytes=best_total, at_peak=best, alive_at_end=alive)

    @staticmethod
    def _category(mp: Any, key: Any, version: int, ptr: int | None, after: dict[int, tuple[str, int]]) -> str:
        if ptr is not None and ptr in after:
            return after[ptr][0]
        guess = mp._categories.get(key, version) if hasattr(mp, "_categories") else None
        name = getattr(guess, "name", None)
        return _PROFILER_CATEGORY.get(name or "", "temporaries")
