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

from planner.schema.memory import CATEGORIES


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


@dataclass
class _RawAllocation:
    """One allocation (``nbytes`` > 0) or free (< 0) as the profiler's event tree has it.

    ``recompute_op_end``: for an allocation made while non-reentrant checkpointing re-runs a
    layer's forward inside backward, when the outermost op that made it ended. The profiler
    files everything made in backward as temporaries, but a re-run's outputs are the layer's
    activations, made a second time (what the planner counts them as): a tensor that outlives
    the op that made it is taken as one, as the profiler takes a forward's."""

    t: int
    ptr: int
    nbytes: int
    tensor_key: Any
    recompute_op_end: int | None = None
    freed: bool = False
    outlives_op: bool = False


def _raw_allocations(mp: Any, device: torch.device) -> list[_RawAllocation]:
    from torch._C._profiler import _EventType
    from torch.profiler._memory_profiler import TensorKey

    out: list[_RawAllocation] = []
    for e in mp._op_tree.dfs():
        if e.typed[0] != _EventType.Allocation:
            continue
        a = e.typed[1]
        if a.device != device or a.alloc_size == 0:
            continue
        ev = _RawAllocation(e.start_time_ns, int(a.ptr), int(a.alloc_size), TensorKey.from_allocation(a))
        if ev.nbytes > 0:
            op, node, in_recompute, outer = None, e.parent, False, False
            while node is not None:
                name = node.name
                if name.startswith("aten::"):
                    if not outer:
                        op = node
                elif "torch/utils/checkpoint.py" in name:
                    in_recompute = True
                    break
                else:
                    outer = outer or op is not None
                node = node.parent
            if in_recompute and op is not None:
                ev.recompute_op_end = int(op.end_time_ns)
        out.append(ev)
    out.sort(key=lambda x: x.t)
    # pair each allocation with its free (by address, in time order)
    open_at: dict[int, _RawAllocation] = {}
    for ev in out:
        if ev.nbytes > 0:
            open_at[ev.ptr] = ev
        else:
            made = open_at.pop(ev.ptr, None)
            if made is not None:
                made.freed = True
                made.outlives_op = made.recompute_op_end is not None and ev.t > made.recompute_op_end
    for made in open_at.values():
        made.outlives_op = made.recompute_op_end is not None
    return out


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
        raw = _raw_allocations(mp, self.device)
        live = {c: 0 for c in CATEGORIES}
        for category, nbytes in before.values():
            live[category] += nbytes
        tracked: dict[Any, tuple[str, int]] = {}  # key -> (category, bytes) of what the profile added
        ptrs: dict[Any, int] = {}
        baseline_gone: set[int] = set()
        # what the phase frees is not what the end-of-phase labels describe, even when the
        # allocator hands its address to a labelled tensor later (that reuse varies run to run)
        freed_at: dict[Any, int] = {}
        for t, action, (key, _v), _n in mp.timeline:
            if action == Action.DESTROY and isinstance(key, TensorKey):
                freed_at[key] = t
        # Allocations the profile cannot tie to a tensor all share one key in its timeline
        # (``Key(device)``), so they are matched here by address: each free takes back what its
        # address was given, a free of an address never given in the phase is of something
        # alive before it (the baseline's, else an unlabelled temporary).
        unknown: dict[int, tuple[str, int]] = {}
        for ev in raw:
            if ev.tensor_key is not None:
                continue
            if ev.nbytes > 0:
                unknown[ev.ptr] = ("", ev.nbytes)
            elif unknown.pop(ev.ptr, None) is None and ev.ptr not in before:
                live["temporaries"] -= ev.nbytes  # alive from the start of the phase
        unknown.clear()
        # this phase's device only (the profiler records the host's allocations on a GPU run too)
        events: list[tuple[int, int, Any]] = [
            (t, a.value, (a, k, n)) for t, a, k, n in mp.timeline if isinstance(k[0], TensorKey) and k[0].device == self.device
        ]
        events += [(ev.t, Action.CREATE.value if ev.nbytes > 0 else Action.DESTROY.value, ev) for ev in raw if ev.tensor_key is None]
        events.sort(key=lambda e: (e[0], e[1]))
        recomputed = {ev.tensor_key: ev for ev in raw if ev.tensor_key is not None and ev.recompute_op_end is not None}
        best_total, best = sum(live.values()), dict(live)
        for _t, _order, item in events:
            if isinstance(item, _RawAllocation):
                ev = item
                if ev.nbytes > 0:
                    category = "activations" if ev.outlives_op else "temporaries"
                    if not ev.freed and ev.ptr in after:
                        category = after[ev.ptr][0]
                    unknown[ev.ptr] = (category, ev.nbytes)
                    live[category] += ev.nbytes
                else:
                    hit = unknown.pop(ev.ptr, None)
                    if hit is not None:
                        live[hit[0]] -= hit[1]
                    elif ev.ptr in before and ev.ptr not in baseline_gone:
                        category, size = before[ev.ptr]
                        live[category] -= size
                        baseline_gone.add(ev.ptr)
                    else:
                        live["temporaries"] += ev.nbytes  # counted from the start (above)
            else:
                action, (key, version), nbytes = item
                ptr = key.storage.ptr
                in_baseline = ptr in before and ptr not in baseline_gone
                if action == Action.PREEXISTING:
                    if in_baseline or nbytes <= 0:
                        continue
                    category = self._category(mp, key, version, None if key in freed_at else ptr, after)
                    tracked[(key, version)] = (category, nbytes)
                    live[category] += nbytes
                elif action == Action.CREATE:
                    category = self._category(mp, key, version, None if key in freed_at else ptr, after)
                    rec = recomputed.get(key)
                    outlives = rec is not None and (key not in freed_at or freed_at[key] > (rec.recompute_op_end or 0))
                    if outlives and category == "temporaries":
                        category = "activations"  # a checkpointed layer's re-run (see _RawAllocation)
                    tracked[(key, version)] = (category, nbytes)
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
                    elif in_baseline:
                        category, size = before[ptr]
                        live[category] -= size
                        baseline_gone.add(ptr)
                    else:
                        continue
            total = sum(live.values())
            if total > best_total:
                best_total, best = total, dict(live)
        alive = {ptrs[k]: v for k, v in tracked.items() if k in ptrs}
        alive.update(unknown)
        return PhaseMemory(peak_bytes=best_total, at_peak=best, alive_at_end=alive)

    @staticmethod
    def _category(mp: Any, key: Any, version: int, ptr: int | None, after: dict[int, tuple[str, int]]) -> str:
        if ptr is not None and ptr in after:
            return after[ptr][0]
        guess = mp._categories.get(key, version) if hasattr(mp, "_categories") else None
        name = getattr(guess, "name", None)
        return _PROFILER_CATEGORY.get(name or "", "temporaries")
