"""Trace FSDP2 (``fully_shard``) training of one rank on fake tensors: memory per category and phase, and FLOPs.

The sharded twin of ``harness/trace.py`` (read that first; this module imports its model
builder, batch, patches and FLOP counting). One process plays rank 0 of an N-rank job:

* a *fake* process group (``torch.testing._internal.distributed.fake_pg``: collectives return
  at once, outputs keep their shapes) of ``spec.world_size`` ranks and a 1-D CPU device mesh;
* ``FakeTensorMode`` (shapes and dtypes, no storage), so Llama 2 70B on 8 ranks steps through
  in a few hundred MB of host memory;
* the model from ``harness.trace.build_model`` (transformers + peft LoRA, gradient
  checkpointing as the HF Trainer enables it), each decoder layer (the model's
  ``_no_split_modules``) wrapped with ``fully_shard`` and then the root, as the FSDP2 examples
  and accelerate's auto-wrap do; ``reshard_after_forward=True`` (ZeRO-3);
* ``FSDPMemTracker`` (``torch.distributed._tools.fsdp2_mem_tracker``) labels every live storage
  as sharded / unsharded parameter, sharded / unsharded gradient, buffer, activation, temporary,
  all-gather buffer, reduce-scatter buffer, optimizer state or input. We keep the peak of each
  phase (forward incl. loss, backward, optimizer step incl. ``zero_grad``) and the split at that
  moment, per step; the last step is the steady state reported at top level.

The planner's five categories: parameters = sharded + unsharded params + buffers; gradients =
sharded + unsharded grads; optimizer_states = AdamW states; activations = activations + inputs;
temporaries = temporaries + all-gather + reduce-scatter buffers. ``debug=True`` adds the FSDP
split under ``debug_fsdp_split_bytes`` (not part of the ``TraceResult`` schema).

What FSDP2 holds on one rank (what the numbers show):

* sharded parameters (1/N of each, padded to a multiple of N along dim 0) all the time; the
  root group (embeddings, final norm, lm_head) is all-gathered at the root's pre-forward and
  stays unsharded through forward *and* backward (FSDP2 never reshards the root after forward,
  backward would gather it again at once);
* forward: the root plus the current layer unsharded, the current layer's all-gather output and
  the previous layer's (FSDP2 keeps the last all-gather result alive until the next unshard has
  waited on it), i.e. two layers of all-gather buffer; no explicit prefetch;
* backward: the root plus one layer unsharded, one all-gather buffer, one reduce-scatter input
  (one layer's flat gradients, in ``reduce_dtype``), that layer's unsharded gradients and the
  root's (lm_head's gradient lives until the root's post-backward at the very end), and the
  sharded gradients accumulated so far;
* optimizer step: sharded parameters, sharded gradients, AdamW's two moments (and the step
  counters), plus foreach AdamW's ``exp_avg_sq.sqrt()`` scratch, one state-sized temporary.

Precision (``spec.precision``):

* ``bf16``: pure bf16: parameters, gradients and AdamW states bf16, no ``MixedPrecisionPolicy``;
* ``bf16-mixed``: FSDP2's mixed precision: fp32 sharded trainable parameters (and so fp32
  gradients and AdamW states), ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``:
  all-gather and compute in bf16, reduce-scatter in fp32. LoRA's frozen base weights stay bf16
  in both; adapters keep the dtype ``build_model`` gives them (``planner.formulas.dtypes.adapter_dtype``).

The optimizer is ``torch.optim.AdamW(foreach=True)`` over the trainable parameters.

Workarounds (torch 2.13, transformers 5.x, peft 0.21; private API, versions go in the record):

* all of ``harness/trace.py``'s: fake CPU tensors and the CPU flash-attention kernel with its
  FLOP formulas, model built on meta and materialised straight into the fake mode, CUDA-style
  dropout (bool mask), "not packed" answer to transformers' packed-sequence detection;
* DTensor sharding propagation runs each op once more on global-shape fake tensors under
  ``detect_fake_mode() or FakeTensorMode()``. Under our fake mode that finds *our* mode, the
  very one the tracker takes as "real" (``_fake_mode_on_entry``), so global-shape scratch
  (e.g. unsharded fp32-sized tensors inside ``optimizer.step()``) would be counted. Propagation
  gets a private fake mode instead, which the tracker's identity check skips;
* ModTracker puts ``mode="all"`` multi-grad hooks on module inputs; the hook's closure holds
  the inputs' autograd nodes and is stored on those nodes, a C++/Python cycle gc cannot break.
  With gradient checkpointing the embedding output is a leaf requiring grad
  (``enable_input_require_grads``), so it and its ``.grad`` leaked one [B, S, H] activation and
  temporary per step. ModTracker only uses the hook to pop the module off ``parents`` in
  backward, which ``mode="any"`` does as well, without the cycle;
* FSDPMemTracker relabels unsharded parameters only *after* ``FSDPState._pre_forward`` /
  ``FSDPParamGroup.pre_backward`` return, so during the all-gather copy-out (where the forward
  peak is) the new unsharded-parameter storages counted as activations / temporaries. Anything
  allocated while unsharding is labelled an unsharded parameter (the all-gather buffer itself
  is relabelled right after; a bf16-mixed cast of a shard before copy-in lands here too);
* FSDPMemTracker labels unsharded gradients only at the layer's post-backward: between
  accumulation and reduce-scatter they counted as temporaries. A post-accumulate-grad hook on
  each trainable unsharded parameter labels them unsharded gradients at once;
* inside ``optimizer.step()`` every new tensor is labelled an optimizer state; new tensors are
  temporaries instead and the step post-hook relabels what the optimizer keeps (as
  ``harness.trace.PhaseTracker`` does): the sqrt scratch counts as a temporary. In the first
  step the states are being created and so count as temporaries at that step's peak;
* MemTracker updates every module's peak on every op (O(ops x modules)); only the global
  per-phase peak is kept (O(1) per op);
* FSDPMemTracker refuses a second root forward: ``reset_mod_stats`` before each step;
* FLOPs are counted in a separate pass with ``FlopCounterMode`` (outside the tracker). FSDP2
  computes on plain unsharded tensors, so the count is one rank's: the full model on its micro
  batch, the same as the single-process trace (collectives and the optimizer add no FLOPs).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType, _FSDPState

from harness.trace import (
    CATEGORIES,
    PHASES,
    TOOL,
    PhasePeak,
    StepResult,
    _batch,
    _count_flops,
    _cuda_dropout,
    _quiet,
    _register_cpu_flash_flops,
    _unpacked_batches,
    build_model,
    max_rss_bytes,
    versions,
)
from planner.errors import PlannerError
from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec

__all__ = ["CATEGORY_OF_FSDP", "FSDP_TOOL", "PHASES", "trace_fsdp", "versions"]

FSDP_TOOL = TOOL.replace("+ MemTracker", "+ FSDPMemTracker") + ", fully_shard over a fake process group"
#: FSDPMemTracker's reference types mapped onto the planner's categories.
CATEGORY_OF_FSDP: dict[_FSDPRefType, str] = {
    _FSDPRefType.SHARDED_PARAM: "parameters",
    _FSDPRefType.UNSHARDED_PARAM: "parameters",
    _FSDPRefType.BUFFER: "parameters",
    _FSDPRefType.SHARDED_GRAD: "gradients",
    _FSDPRefType.UNSHARDED_GRAD: "gradients",
    _FSDPRefType.OPT: "optimizer_states",
    _FSDPRefType.ACT: "activations",
    _FSDPRefType.INP: "activations",
    _FSDPRefType.TEMP: "temporaries",
    _FSDPRefType.ALL_GATHER: "temporaries",
    _FSDPRefType.REDUCE_SCATTER: "temporaries",
}
PRECISIONS = ("bf16", "bf16-mixed")


class PhaseFSDPMemTracker(FSDPMemTracker):
    """FSDPMemTracker that keeps the peak (and the FSDP split at it) of the phase the driver names."""

    def __init__(self, mod: nn.Module, optm: torch.optim.Optimizer | None = None) -> None:
        super().__init__(mod, optm)
        self.phase = "forward"
        #: phase -> (peak bytes, {FSDP reference type: bytes} at that moment)
        self.peaks: dict[str, tuple[int, dict[_FSDPRefType, int]]] = {}
        self._grad_hooks: dict[int, Any] = {}
        #: > 0 while a checkpointed layer re-runs its forward inside backward
        self.recomputing = 0

    # --- peaks
    def _total(self) -> int:
        return sum(int(snap.get("Total", 0)) for snap in self._curr_mem_snap.values())

    def fsdp_split(self) -> dict[_FSDPRefType, int]:
        split = dict.fromkeys(CATEGORY_OF_FSDP, 0)
        for snap in self._curr_mem_snap.values():
            for ref in CATEGORY_OF_FSDP:
                split[ref] += int(snap.get(ref, 0))
        return split

    def record(self) -> None:
        total = self._total()
        best = self.peaks.get(self.phase)
        if best is None or total > best[0]:
            self.peaks[self.phase] = (total, self.fsdp_split())

    def start_phase(self, phase: str) -> None:
        self.phase = phase
        self.record()

    def _update_peak_stats(self, peak_state: Any) -> None:
        self.record()

    # --- labels
    def _track(self, reftype: Any, t: torch.Tensor) -> None:
        if self._fsdp_state in (_FSDPState.PRE_FW, _FSDPState.PRE_BW) and reftype in (_FSDPRefType.ACT, _FSDPRefType.TEMP):
            reftype = _FSDPRefType.UNSHARDED_PARAM
        elif reftype == _FSDPRefType.TEMP and self.recomputing:
            reftype = _FSDPRefType.ACT  # MemTracker's convention: recomputed tensors are activations
        elif reftype == _FSDPRefType.OPT:
            reftype = _FSDPRefType.TEMP  # new inside optimizer.step(); the step post-hook relabels the states
        super()._track(reftype, t)

    def _fsdp_param_group_pre_backward(self, fsdp_mod: Any, orig: Any) -> Any:
        inner = super()._fsdp_param_group_pre_backward(fsdp_mod, orig)

        def with_grad_hooks(*args: Any, **kwargs: Any) -> None:
            inner(*args, **kwargs)
            group = fsdp_mod._get_fsdp_state()._fsdp_param_group
            for fsdp_param in group.fsdp_params if group is not None else ():
                param = fsdp_param._unsharded_param
                if param.requires_grad and id(param) not in self._grad_hooks:
                    self._grad_hooks[id(param)] = param.register_post_accumulate_grad_hook(self._label_unsharded_grad)

        return with_grad_hooks

    def _label_unsharded_grad(self, param: torch.Tensor) -> None:
        if param.grad is not None:
            self._update_and_maybe_create_winfos(param.grad, _FSDPRefType.UNSHARDED_GRAD)

    def remove_grad_hooks(self) -> None:
        for handle in self._grad_hooks.values():
            handle.remove()
        self._grad_hooks.clear()


def _step_result(peaks: dict[str, tuple[int, dict[_FSDPRefType, int]]]) -> tuple[StepResult, dict[str, dict[str, int]]]:
    """The five-category step result, and the FSDP split of each phase peak (for debugging)."""
    out: dict[str, PhasePeak] = {}
    detail: dict[str, dict[str, int]] = {}
    for phase in PHASES:
        if phase not in peaks:
            continue
        total, fsdp = peaks[phase]
        split = dict.fromkeys(CATEGORIES, 0)
        for ref, nbytes in fsdp.items():
            split[CATEGORY_OF_FSDP[ref]] += nbytes
        if sum(split.values()) != total:
            raise RuntimeError(f"{phase}: FSDP categories sum to {sum(split.values())}, total is {total}")
        out[phase] = PhasePeak(total=total, split=split)
        detail[phase] = {ref.value: nbytes for ref, nbytes in fsdp.items() if nbytes}
    return StepResult(out), detail


@contextlib.contextmanager
def _fsdp_patches() -> Iterator[None]:
    """DTensor propagation in a private fake mode; ModTracker's multi-grad hooks in ``any`` mode (see module docstring)."""
    import torch.distributed._tools.mod_tracker as mt
    import torch.distributed.tensor._sharding_prop as sp
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.autograd.graph import register_multi_grad_hook

    saved: list[tuple[Any, str, Any]] = [
        (sp, "detect_fake_mode", sp.detect_fake_mode),
        (mt, "register_multi_grad_hook", mt.register_multi_grad_hook),
    ]
    prop_mode = FakeTensorMode(allow_non_fake_inputs=True)

    def any_mode_hook(tensors: Any, fn: Any, mode: str = "all") -> Any:
        return register_multi_grad_hook(tensors, fn, mode="any")

    try:
        sp.detect_fake_mode = lambda *args, **kwargs: prop_mode
        mt.register_multi_grad_hook = any_mode_hook
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


@contextlib.contextmanager
def _fake_process_group(world_size: int) -> Iterator[Any]:
    """A fake process group of ``world_size`` ranks (we are rank 0) and its CPU device mesh, destroyed on exit."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    if dist.is_initialized():
        raise PlannerError("a process group is already initialised in this process; the FSDP trace needs its own (fake) one")
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


def _check(spec: TrainingSpec) -> None:
    if spec.world_size < 2 or spec.zero_stage != 3 or spec.offload != "none":
        raise PlannerError(
            "the FSDP trace shards over --world-size > 1 with --zero 3 and --offload none "
            f"(got world size {spec.world_size}, ZeRO {spec.zero_stage}, offload {spec.offload})"
        )
    if spec.precision not in PRECISIONS:
        raise PlannerError(f"the FSDP trace supports --precision {' or '.join(PRECISIONS)} (got {spec.precision})")
    if spec.optimizer != "adamw":
        raise PlannerError(f"the FSDP trace supports --optimizer adamw only (got {spec.optimizer})")


def _mark_recomputation(model: nn.Module, tracker: PhaseFSDPMemTracker) -> None:
    """Count the re-run of each checkpointed layer in backward as activations, not temporaries.

    FSDPMemTracker only notices recomputation through FSDP's pre-forward hook, which FSDP2 skips
    inside backward, so it labels recomputed tensors as temporaries; MemTracker (and the
    single-process trace) label them activations. transformers runs every checkpointed layer
    through ``layer._gradient_checkpointing_func(fn, ...)``; wrapping ``fn`` marks the re-run.
    """
    for layer in model.modules():
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if func is None or getattr(func, "_marks_recompute", False):
            continue

        def marked(fn: Any, *args: Any, _func: Any = func, **kwargs: Any) -> Any:
            def run(*a: Any, **k: Any) -> Any:
                recompute = torch._C._current_graph_task_id() != -1  # called from inside backward
                tracker.recomputing += recompute
                try:
                    return fn(*a, **k)
                finally:
                    tracker.recomputing -= recompute

            return _func(run, *args, **kwargs)

        marked._marks_recompute = True  # type: ignore[attr-defined]
        layer._gradient_checkpointing_func = marked


def trace_fsdp(
    arch: Architecture,
    spec: TrainingSpec,
    steps: int = 2,
    flops: bool = True,
    debug: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``steps`` FSDP2 training steps of ``spec`` as rank 0 of ``spec.world_size`` on fake tensors; see module docstring.

    Returns what ``planner.schema.records.TraceResult`` validates (per rank), plus
    ``debug_fsdp_split_bytes`` with ``debug=True``.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _check(spec)
    _register_cpu_flash_flops()
    t0 = time.perf_counter()
    with _quiet(), _unpacked_batches(), _cuda_dropout(), _fsdp_patches(), _fake_process_group(spec.world_size) as mesh:
        say = progress or (lambda _msg: None)
        t_start = time.perf_counter()
        say(f"building {arch.name} ({spec.method}) on fake tensors, FSDP2 rank 0 of {spec.world_size}")
        model = build_model(arch, spec)
        if spec.precision == "bf16-mixed" and spec.method == "full":
            model.to(torch.float32)  # fp32 sharded parameters; LoRA keeps bf16 base weights, adapters as built
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if spec.precision == "bf16-mixed" else None
        get_base = getattr(model, "get_base_model", None)
        base: Any = get_base() if callable(get_base) else model
        wrap = set(getattr(base, "_no_split_modules", None) or ())
        layers = [m for m in model.modules() if type(m).__name__ in wrap]
        if not layers:
            raise PlannerError(f"{arch.name}: no decoder layers to shard (the model names no _no_split_modules)")
        counts = {
            "total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        fake = FakeTensorMode(allow_non_fake_inputs=False)
        results: list[StepResult] = []
        details: list[dict[str, dict[str, int]]] = []
        with fake:
            model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))
            base.tie_weights()
            kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": True}
            if mp is not None:
                kwargs["mp_policy"] = mp
            for layer in layers:
                fully_shard(layer, **kwargs)
            fully_shard(model, **kwargs)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
            ids, labels = _batch(arch, spec)
            tracker = PhaseFSDPMemTracker(model, opt)
            tracker.track_inputs((ids, labels))
            _mark_recomputation(model, tracker)
            try:
                with tracker:
                    for i in range(steps):
                        say(f"step {i + 1}/{steps}: forward, backward, optimizer step ({time.perf_counter() - t_start:.0f} s)")
                        tracker.reset_mod_stats()
                        tracker.peaks = {}
                        tracker.start_phase("forward")
                        loss = model(input_ids=ids, labels=labels).loss
                        tracker.start_phase("backward")
                        loss.backward()
                        del loss
                        tracker.start_phase("optimizer_step")
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                        gc.collect()
                        result, detail = _step_result(tracker.peaks)
                        results.append(result)
                        details.append(detail)
            finally:
                tracker.remove_grad_hooks()
            if flops:
                say(f"counting FLOPs: one more forward and backward ({time.perf_counter() - t_start:.0f} s)")
            flop_counts = _count_flops(model, arch, spec) if flops else None
        del model, opt, tracker
        gc.collect()
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "parameters": counts,
        **results[-1].as_dict(),
        "steps": [r.as_dict() for r in results],
        "flops": flop_counts,
        "wall_s": round(wall, 2),
        "max_rss_bytes": max_rss_bytes(),
    }
    if debug:
        out["debug_fsdp_split_bytes"] = details
    return out
