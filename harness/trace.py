"""Trace one full-size training step on fake tensors: memory per category and phase, and FLOPs.

``FakeTensorMode`` runs every op of the real model code (transformers + peft + torch autograd
and optimizer) with shapes and dtypes but no storage, so Llama 2 70B steps through on a laptop.
Around it:

* a ``MemTracker`` (``torch.distributed._tools.mem_tracker``) attributes every live tensor
  storage to parameters, buffers, gradients, activations (made in forward or recomputed under
  checkpointing), temporaries (made in backward: activation gradients) and optimizer states;
  we record the peak of each phase (forward incl. the loss, backward, optimizer step) and the
  split at that moment, per step;
* ``FlopCounterMode`` (``torch.utils.flop_counter``) counts matmul and attention FLOPs, in a
  separate pass (nested inside the tracker it would keep recomputed activations alive).

What a trace cannot see: the CUDA context, the caching allocator's reserve and fragmentation,
NCCL and DeepSpeed buffers, CPU-side copies. Those come from real runs (``harness run``).

Precision layouts (the planner's meaning of ``--precision``):

* ``bf16-mixed`` / ``fp16-mixed``: 16-bit weights and gradients; the optimizer keeps fp32
  master copies and fp32 Adam moments and steps on an fp32 copy of the gradients, as
  DeepSpeed's ZeRO optimizers do (``Bf16MasterAdamW`` below);
* ``amp-bf16``: fp32 weights, forward under ``torch.autocast(bfloat16)``, torch AdamW;
* ``bf16`` / ``fp32``: everything in that dtype, torch AdamW.

Workarounds for running real model code on fake tensors (torch 2.13, transformers 5.x, peft
0.21; ``torch.distributed._tools`` is private API, so these versions are pinned in the record):

* fake *CPU* tensors (fake CUDA aborts a CPU-only build in autograd); SDPA then takes the CPU
  flash kernel, which saves what the CUDA flash kernel saves (output and logsumexp);
* the model and its adapters are built on the meta device and moved with ``to_empty`` into the
  fake mode (no random init, no weakref swap problems in ``Module.to``);
* MemTracker's per-parameter gradient hooks raise on frozen parameters: only trainable ones
  get hooks;
* MemTracker updates every module's peak on every op (O(ops x modules)); we only need the
  global per-phase peak;
* FlopCounterMode has no formula for the CPU flash-attention ops: registered here;
* CPU dropout keeps its noise in the input dtype; CUDA's fused kernel keeps a bool mask: the
  trace calls ``native_dropout`` (whose CPU kernel matches CUDA's) for training-mode dropout;
* transformers cannot tell on fake tensors that a batch is unpacked and would build a full
  B x S x S mask (and repeat GQA k/v): ``find_packed_sequence_indices`` answers "not packed".
"""

from __future__ import annotations

import contextlib
import copy
import gc
import platform
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch._guards import active_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from harness.golden import quiet as _quiet
from planner.errors import PlannerError
from planner.formulas.dtypes import adapter_dtype
from planner.schema.catalog import Architecture
from planner.schema.memory import CATEGORIES, MEASURED_PHASES
from planner.schema.spec import TrainingSpec

aten = torch.ops.aten
TOOL = "harness trace: FakeTensorMode + MemTracker + FlopCounterMode (torch.distributed._tools)"
PHASES = MEASURED_PHASES
#: MemTracker's reference types mapped onto the planner's categories (buffers count as parameters).
CATEGORY_OF = {
    _MemRefType.PARAM: "parameters",
    _MemRefType.BUFFER: "parameters",
    _MemRefType.GRAD: "gradients",
    _MemRefType.OPT: "optimizer_states",
    _MemRefType.ACT: "activations",
    _MemRefType.TEMP: "temporaries",
    _MemRefType.OTH: "temporaries",
}
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_FLOP_FORMULAS_REGISTERED = False


def _register_cpu_flash_flops() -> None:
    """Count the CPU flash-attention kernels like their CUDA twins (full, non-causal score matrix)."""
    global _FLOP_FORMULAS_REGISTERED
    if _FLOP_FORMULAS_REGISTERED:
        return

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _fwd(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return int(sdpa_flop_count(query_shape, key_shape, value_shape))

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _bwd(
        grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return int(sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape))

    _FLOP_FORMULAS_REGISTERED = True


# --------------------------------------------------------------------------- optimizer


class MasterAdamW(torch.optim.Optimizer):
    """AdamW over fp32 master copies of 16-bit parameters, as DeepSpeed's ZeRO optimizers keep them.

    State per parameter: ``master`` (fp32 copy), ``exp_avg`` and ``exp_avg_sq`` (fp32). A step
    converts the 16-bit gradients to one fp32 gradient per parameter (DeepSpeed:
    ``self.flatten(grads).to(fp32)``, the 16-bit flat copy freed at once), runs torch's foreach
    AdamW on the masters (its ``exp_avg_sq.sqrt()`` is one state-sized temporary) and copies the
    masters back into the 16-bit parameters.
    """

    def __init__(
        self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        from torch.optim.adamw import adamw

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            masters, grads, avgs, sqs, steps = [], [], [], [], []
            for p in params:
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["master"] = p.detach().to(torch.float32, copy=True)
                    st["exp_avg"] = torch.zeros_like(st["master"])
                    st["exp_avg_sq"] = torch.zeros_like(st["master"])
                masters.append(st["master"])
                avgs.append(st["exp_avg"])
                sqs.append(st["exp_avg_sq"])
                steps.append(st["step"])
                grads.append(p.grad.to(torch.float32))
            if not params:
                continue
            beta1, beta2 = group["betas"]
            adamw(
                masters,
                grads,
                avgs,
                sqs,
                [],
                steps,
                foreach=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
            )
            del grads
            for p, m in zip(params, masters, strict=True):
                p.copy_(m)


def make_optimizer(spec: TrainingSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if spec.optimizer != "adamw":
        raise PlannerError(f"the trace supports --optimizer adamw only (got {spec.optimizer})")
    if spec.precision in ("bf16-mixed", "fp16-mixed"):
        return MasterAdamW(params)
    return torch.optim.AdamW(params, lr=1e-4, foreach=True)


# --------------------------------------------------------------------------- model


def hf_config(arch: Architecture, spec: TrainingSpec) -> Any:
    from transformers import AutoConfig

    fields = arch.model_dump(exclude_none=True, exclude={"name", "hf_id", "aliases", "source"})
    model_type = fields.pop("model_type")
    fields["vocab_size"] = arch.vocab_size + spec.added_tokens
    cfg = AutoConfig.for_model(model_type, **fields)
    cfg._attn_implementation = spec.attention if spec.attention != "flash" else "sdpa"
    cfg.use_cache = False
    return cfg


def _weight_dtype(spec: TrainingSpec) -> torch.dtype:
    if spec.precision in ("amp-bf16", "fp32"):
        return torch.float32
    return torch.float16 if spec.precision == "fp16-mixed" else torch.bfloat16


def apply_lora(model: nn.Module, spec: TrainingSpec) -> nn.Module:
    """peft's ``get_peft_model`` with the spec's LoRA, adapters in the planner's adapter dtype."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(spec.lora_targets),
        modules_to_save=list(spec.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model: nn.Module = get_peft_model(model, lcfg)
    want = TORCH_DTYPE[adapter_dtype(spec)]
    for name, p in peft_model.named_parameters():
        if "lora_" in name and p.dtype != want:
            p.data = p.data.to(want)
    return peft_model


def build_model(arch: Architecture, spec: TrainingSpec) -> nn.Module:
    """The model as a user builds it (transformers from config, peft's ``get_peft_model``), on meta."""
    from transformers import AutoModelForCausalLM

    if spec.method == "qlora":
        raise PlannerError("the trace does not support QLoRA (bitsandbytes kernels have no fake-tensor implementation)")
    cfg = hf_config(arch, spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), dtype=_weight_dtype(spec))
        if spec.method == "lora":
            model = apply_lora(model, spec)
    if spec.grad_ckpt:
        # transformers 5 defaults to use_reentrant=False and makes the embedding output require
        # grad (enable_input_require_grads), as the HF Trainer does.
        model.gradient_checkpointing_enable()
    model.train()
    return model


# --------------------------------------------------------------------------- tracking


@dataclass
class PhasePeak:
    total: int = 0
    split: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    live: list[tuple[str, int]] = field(default_factory=list)  # with debug: the largest live non-parameter storages


class PhaseTracker(MemTracker):
    """MemTracker that keeps the peak (and the split at it) of the phase the driver names."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.peaks: dict[str, PhasePeak] = {}
        self.debug = False

    def _update_peak_stats(self, peak_state: Any) -> None:
        for snap in self._curr_mem_snap.values():
            total = snap["Total"]
            peak = self.peaks.setdefault(self.phase, PhasePeak())
            if total > peak.total:
                split = dict.fromkeys(CATEGORIES, 0)
                for ref, cat in CATEGORY_OF.items():
                    split[cat] += snap.get(ref, 0)
                peak.total, peak.split = total, split
                if self.debug:
                    peak.live = self.live()[:40]

    def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True) -> tuple[int, int]:
        def _grad_hook(grad: torch.Tensor) -> None:
            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

        param_memory = 0
        for param in module.parameters():
            winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
            param_memory += sum(w.mem_consumed for w in winfos)
            if param.grad is not None:
                self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
            if install_grad_hooks and param.requires_grad and self._param_to_grad_hook_handles.get(param, None) is None:
                self._param_to_grad_hook_handles[param] = (
                    param.register_hook(_grad_hook),
                    param.register_post_accumulate_grad_hook(lambda p: _grad_hook(p.grad)),
                )
        buffer_memory = 0
        for buffer in module.buffers():
            winfos = self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
            buffer_memory += sum(w.mem_consumed for w in winfos)
        return param_memory, buffer_memory

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # MemTracker.__torch_dispatch__ with one change: inside ``optimizer.step()`` it labels
        # every new tensor an optimizer state, but the step's scratch (fp32 gradient copies,
        # Adam's sqrt buffer) is a temporary. States made in the first step are relabelled as
        # optimizer states by MemTracker's step post-hook.
        if any(t == DTensor for t in types):
            return NotImplemented
        if func is torch.ops._c10d_functional.wait_tensor.default and active_fake_mode():
            res = args[0]
        else:
            res = func(*args, **kwargs or {})
        if active_fake_mode() is self._fake_mode_on_entry:
            if self._in_opt or (self._mod_tracker.is_bw and not self._in_ac):
                reftype = _MemRefType.TEMP
            else:
                reftype = _MemRefType.ACT
            tree_map_only(torch.Tensor, partial(self._track, reftype), res)
            self._update_peak_stats(None)
        return res

    def live(self) -> list[tuple[str, int]]:
        """Every tracked storage that is alive: (category, bytes), largest first (for debugging)."""
        out = [
            (CATEGORY_OF[w.reftype], w.mem_consumed)
            for w, _ in self._WINFO.values()
            if w.reftype not in (_MemRefType.PARAM, _MemRefType.GRAD)
        ]
        return sorted(out, key=lambda x: -x[1])

    def start_phase(self, phase: str) -> None:
        self.phase = phase
        self._update_peak_stats(None)

    def current(self) -> dict[str, int]:
        split = dict.fromkeys(CATEGORIES, 0)
        for snap in self._curr_mem_snap.values():
            for ref, cat in CATEGORY_OF.items():
                split[cat] += snap.get(ref, 0)
        return split


class _InputLeaves:
    """The embedding output that ``enable_input_require_grads`` turns into a leaf requiring grad.

    ModTracker's multi-grad hooks keep such a leaf (and its ``.grad``) alive after backward
    through a reference cycle outside Python's gc: in a real run it is freed with the graph.
    We release it by hand after each step so the next step's peak does not carry it.
    """

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self.tensors.append(output)

    def release(self) -> None:
        for t in self.tensors:
            if t.is_leaf and t.requires_grad:
                t.grad = None
                t.untyped_storage().resize_(0)
        self.tensors.clear()


def _capture_input_leaves(model: nn.Module) -> _InputLeaves:
    leaves = _InputLeaves()
    model.get_input_embeddings().register_forward_hook(leaves.hook)
    return leaves


@contextlib.contextmanager
def _unpacked_batches() -> Iterator[None]:
    import transformers.masking_utils as mu

    original = mu.find_packed_sequence_indices
    mu.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        mu.find_packed_sequence_indices = original


@contextlib.contextmanager
def _cuda_dropout() -> Iterator[None]:
    """Dropout as CUDA runs it: the fused ``native_dropout`` keeps a bool mask for backward.

    On CPU ``F.dropout`` takes the unfused path (``input * bernoulli_noise``), which keeps the
    noise in the input's dtype: 2x the mask bytes of a GPU run in bf16. ``native_dropout`` has a
    CPU kernel that matches CUDA's, so the trace routes training-mode dropout there.
    """
    import torch.nn.functional as F

    original = F.dropout

    def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if training and 0.0 < p < 1.0 and not inplace:
            return torch.native_dropout(input, p, True)[0]
        return original(input, p, training, inplace)

    F.dropout = dropout
    try:
        yield
    finally:
        F.dropout = original


def _autocast(spec: TrainingSpec) -> contextlib.AbstractContextManager[Any]:
    if spec.precision == "amp-bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch(arch: Architecture, spec: TrainingSpec) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (spec.micro_batch_size, spec.seq_len)
    ids = torch.zeros(shape, dtype=torch.long)
    return ids, ids.clone()


@dataclass
class StepResult:
    peaks: dict[str, PhasePeak]

    @property
    def peak_phase(self) -> str:
        return max(self.peaks, key=lambda p: self.peaks[p].total)

    def as_dict(self) -> dict[str, Any]:
        top = self.peaks[self.peak_phase]
        return {
            "peak_bytes": top.total,
            "peak_phase": self.peak_phase,
            "at_peak_bytes": dict(top.split),
            "phase_peaks_bytes": {p: self.peaks[p].total for p in PHASES if p in self.peaks},
            "phase_split_bytes": {p: dict(self.peaks[p].split) for p in PHASES if p in self.peaks},
            **(
                {"debug_live_at_peak": {p: self.peaks[p].live for p in PHASES if p in self.peaks}}
                if self.peaks[self.peak_phase].live
                else {}
            ),
        }


def trace(
    arch: Architecture,
    spec: TrainingSpec,
    steps: int = 2,
    flops: bool = True,
    debug: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``steps`` training steps of ``spec`` on fake tensors and measure them; see module docstring.

    ``progress`` is called with a short line at each stage (building, each step, FLOPs)."""
    say = progress or (lambda _msg: None)
    if spec.world_size != 1 or spec.zero_stage != 0 or spec.offload != "none":
        raise PlannerError("a single-process trace sees one GPU without ZeRO or offload (use --world-size for FSDP)")
    _register_cpu_flash_flops()
    t0 = time.perf_counter()
    with _quiet(), _unpacked_batches(), _cuda_dropout():
        say(f"building {arch.name} ({spec.method}) on fake tensors")
        model = build_model(arch, spec)
        fake = FakeTensorMode(allow_non_fake_inputs=False)
        with fake:
            # like ``to_empty(device="cpu")``, but from meta straight into fake storage
            model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))
            model.get_base_model().tie_weights() if hasattr(model, "get_base_model") else model.tie_weights()
        counts = {
            "total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        trainable = [p for p in model.parameters() if p.requires_grad]
        results: list[StepResult] = []
        with fake:
            opt = make_optimizer(spec, trainable)
            tracker = PhaseTracker()
            tracker.debug = debug
            tracker.track_external(model)
            leaves = _capture_input_leaves(model)
            with tracker:
                for i in range(steps):
                    say(f"step {i + 1}/{steps}: forward, backward, optimizer step ({time.perf_counter() - t0:.0f} s)")
                    tracker.peaks = {}
                    tracker.start_phase("forward")
                    ids, labels = _batch(arch, spec)
                    with _autocast(spec):
                        loss = model(input_ids=ids, labels=labels).loss
                    tracker.start_phase("backward")
                    loss.backward()
                    del loss
                    leaves.release()
                    tracker.start_phase("optimizer_step")
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    gc.collect()
                    tracker.reset_mod_stats()
                    results.append(StepResult(dict(tracker.peaks)))
            if flops:
                say(f"counting FLOPs: one more forward and backward ({time.perf_counter() - t0:.0f} s)")
            flop_counts = _count_flops(model, arch, spec) if flops else None
    wall = time.perf_counter() - t0
    steady = results[-1]
    out = {
        "parameters": counts,
        **steady.as_dict(),
        "steps": [r.as_dict() for r in results],
        "flops": flop_counts,
        "wall_s": round(wall, 2),
        "max_rss_bytes": max_rss_bytes(),
    }
    del model, opt
    gc.collect()
    return out


def _count_flops(model: nn.Module, arch: Architecture, spec: TrainingSpec) -> dict[str, int]:
    """FLOPs of one forward (incl. loss) and one backward (incl. recomputation)."""
    ids, labels = _batch(arch, spec)
    counter = FlopCounterMode(display=False)
    with counter:
        with _autocast(spec):
            loss = model(input_ids=ids, labels=labels).loss
        fwd = counter.get_total_flops()
        loss.backward()
    total = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    return {"forward": int(fwd), "backward": int(total - fwd)}


#: The versions the trace is tested with (pyproject's harness extra pins them).
TESTED_VERSIONS = {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2"}


def max_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def untested_versions() -> list[str]:
    """``name installed (tested: x)`` for each library that differs from ``TESTED_VERSIONS``."""
    have = versions()
    return [f"{k} {have[k]} (tested: {v})" for k, v in TESTED_VERSIONS.items() if have[k].split("+")[0] != v]


def versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }
