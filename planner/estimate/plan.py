"""The plan: one pydantic model that the tables and ``--json`` both render.

``build_plan`` is the only composition point: catalog records + a TrainingSpec in, Plan out.
Byte counts are ints; GiB appear only in ``planner.render.tables``. The JSON keys documented in the
README are a public contract: add keys freely, never rename or drop them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from planner.catalog import load_calibration
from planner.estimate.memory import GpuMemory, HostMemory, gpu_memory, host_memory, param_counts
from planner.estimate.timing import SEED_DATASET_SAMPLES, step_timing, time_cost
from planner.formulas import checkpoint as ckpt
from planner.formulas.dtypes import adapter_dtype
from planner.schema.calibration import PEAK_RESIDUAL, THROUGHPUT_RESIDUAL, TIME_COEFFICIENTS, Calibration
from planner.schema.catalog import Architecture, Gpu, Instance
from planner.schema.plan import (
    MAX_SEARCH_BATCH,
    ActivationItem,
    CalibrationInfo,
    CategorySplit,
    Checkpoint,
    CoefficientUse,
    Hardware,
    HostPhasePeaks,
    Inputs,
    Memory,
    Parameters,
    PerGpu,
    PerNodeCpu,
    PerNodeGpu,
    PhasePeaks,
    PhaseSplits,
    Plan,
    ResidualOut,
    StepParts,
    Throughput,
    TimeCost,
)
from planner.schema.spec import TrainingSpec
from planner.units import ceil_div


def _warnings(arch: Architecture, spec: TrainingSpec, gpu: Gpu, instance: Instance | None) -> list[str]:
    out = []
    if spec.precision in ("bf16-mixed", "amp-bf16", "bf16") and "bf16" not in gpu.peak_flops_per_s:
        out.append(f"{gpu.name} has no bf16 support: bf16 training fails or is emulated there; use --precision fp16-mixed")
    if spec.attention == "flash" and "bf16" not in gpu.peak_flops_per_s:
        out.append(f"flash-attention 2 needs an Ampere or newer GPU; {gpu.name} is older")
    if arch.max_position_embeddings and spec.seq_len > arch.max_position_embeddings:
        out.append(f"--seq-len {spec.seq_len} exceeds the model's max_position_embeddings ({arch.max_position_embeddings})")
    if instance is None and spec.nodes > 1:
        out.append("--nodes above 1 with --gpu: the network between nodes is unknown and not counted; give --instance for it")
    if instance is None:
        out.append("host RAM not checked: give --instance to check offloading, loading and checkpoint spikes against a real node")
    return out


def max_micro_batch(arch: Architecture, spec: TrainingSpec, gpu: Gpu, cal: Calibration) -> int:
    """Largest micro batch whose GPU peak fits. Host RAM does not depend on the micro batch, so
    it is checked once by the caller, not here.

    Every term of a phase is affine in the micro batch (activations grow with b*s, attention
    scores with b*a*s^2, the rest is constant), so the peak is a maximum of lines in b: convex
    and non-decreasing. A convex function lies above the line through any two neighbouring
    points, which bounds the answer from above; stepping down along those lines (secant steps)
    lands on it in a few evaluations where bisection needs about 16. The allocator's rounding
    bends the lines slightly, so the result is always confirmed (b fits, b+1 does not) and
    falls back to bisection if not.
    """
    cap = gpu.usable_memory_bytes
    cache: dict[int, int] = {}

    def peak(b: int) -> int:
        if b not in cache:
            cache[b] = gpu_memory(arch, spec.model_copy(update={"micro_batch_size": b}), cal).peak_bytes
        return cache[b]

    if peak(1) > cap:
        return 0
    slope = peak(2) - peak(1)
    if slope <= 0:
        return MAX_SEARCH_BATCH if peak(MAX_SEARCH_BATCH) <= cap else _bisect(peak, cap, 1, MAX_SEARCH_BATCH)
    hi = min(MAX_SEARCH_BATCH, 1 + (cap - peak(1)) // slope)  # nothing above this line's crossing fits
    for _ in range(8):
        if peak(hi) <= cap:
            break
        step = peak(hi) - peak(hi - 1)
        if step <= 0:
            break
        hi = max(1, min(hi - 1, hi - ceil_div(peak(hi) - cap, step)))
    if peak(hi) <= cap and (hi == MAX_SEARCH_BATCH or peak(hi + 1) > cap):
        return hi
    return _bisect(peak, cap, 1, MAX_SEARCH_BATCH)


def _bisect(peak: Callable[[int], int], cap: int, lo: int, hi: int) -> int:
    """Largest b in [lo, hi] with peak(b) <= cap, given peak(lo) <= cap and peak non-decreasing."""
    if peak(hi) <= cap:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(mid) <= cap else (lo, mid)
    return lo


def build_plan(
    arch: Architecture,
    spec: TrainingSpec,
    gpu: Gpu,
    instance: Instance | None = None,
    calibration: Calibration | None = None,
    storage_bytes: int | None = None,
    dataset_tokens: int | None = None,
    epochs: float = 1.0,
) -> Plan:
    """Everything ``plan`` reports for one spec. ``dataset_tokens`` defaults to the seed's GSM8K
    train split (7,473 samples) padded to the sequence length."""
    cal = calibration or load_calibration()
    pc = param_counts(arch, spec)
    host_capacity = instance.host_memory_bytes if instance else None

    adapter = ckpt.adapter_bytes(arch, spec) if spec.method != "full" else None
    weights_bytes = ckpt.model_weights_bytes(arch, spec)
    save_bytes = adapter.total if adapter else ckpt.merged_model_bytes(arch, spec)

    g: GpuMemory = gpu_memory(arch, spec, cal)
    h: HostMemory = host_memory(arch, spec, cal, save_bytes)
    per_gpu = PerGpu(
        **g.split.json_fields(),
        overhead_bytes=g.peak_bytes - g.peak_allocated_bytes,
        peak_allocated_bytes=g.peak_allocated_bytes,
        peak_reserved_bytes=g.peak_reserved_bytes,
        peak_bytes=g.peak_bytes,
        peak_phase=g.peak_phase,
        phase_peaks_bytes=PhasePeaks(**{p: s.total for p, s in g.phases.items()}),
        phase_splits_bytes=PhaseSplits(
            **{p: CategorySplit(**s.json_fields()) for p, s in g.phases.items()}
        ),
        cuda_context_bytes=g.cuda_context_bytes,
        allocator_reserve_bytes=g.peak_reserved_bytes - g.peak_allocated_bytes,
        activation_inventory=[ActivationItem(name=x.name, bytes=x.bytes) for x in g.activation_items],
        peak_error_rel=cal.band(PEAK_RESIDUAL),
    )
    host_phases = h.phases
    per_node_cpu = PerNodeCpu(
        peak_bytes=h.peak_bytes,
        peak_phase=max(host_phases, key=host_phases.__getitem__),
        process_bytes=h.process_bytes,
        offloaded_optimizer_bytes=h.offloaded_optimizer_bytes,
        offloaded_parameters_bytes=h.offloaded_parameters_bytes,
        model_load_bytes=h.model_load_bytes,
        checkpoint_save_bytes=h.checkpoint_save_bytes,
        phase_peaks_bytes=HostPhasePeaks(**host_phases),
    )
    fits_gpu = g.peak_bytes <= gpu.usable_memory_bytes
    fits_host = None if host_capacity is None else h.peak_bytes <= host_capacity
    max_gpu_batch = max_micro_batch(arch, spec, gpu, cal)
    limiting: list[Literal["gpu", "host"]] = []
    if not fits_gpu:
        limiting.append("gpu")
    if fits_host is False:
        limiting.append("host")
    memory = Memory(
        per_gpu=per_gpu,
        per_node_gpu=PerNodeGpu(peak_bytes=g.peak_bytes * spec.gpus_per_node, capacity_bytes=gpu.usable_memory_bytes * spec.gpus_per_node),
        per_node_cpu=per_node_cpu,
        gpu_capacity_bytes=gpu.usable_memory_bytes,
        host_capacity_bytes=host_capacity,
        gpu_headroom_bytes=gpu.usable_memory_bytes - g.peak_bytes,
        host_headroom_bytes=None if host_capacity is None else host_capacity - h.peak_bytes,
        fits=not limiting,
        fits_gpu=fits_gpu,
        fits_host=fits_host,
        limiting=limiting,
    )
    checkpoint = Checkpoint(
        model_weights_bytes=weights_bytes,
        adapter_bytes=adapter.total if adapter else None,
        adapter_lora_bytes=adapter.lora_bytes if adapter else None,
        adapter_modules_to_save_bytes=adapter.modules_to_save_bytes if adapter else None,
        adapter_embedding_layers_bytes=adapter.embedding_layers_bytes if adapter else None,
        adapter_dtype=adapter_dtype(spec) if adapter else None,
        training_state_bytes=ckpt.training_state_bytes(spec, pc.trainable, pc.lora),
        merged_model_bytes=ckpt.merged_model_bytes(arch, spec),
        storage_bytes=storage_bytes,
        models_in_storage=None
        if storage_bytes is None
        else (
            ckpt.copies_that_fit(storage_bytes, weights_bytes)
            if adapter is None
            else ckpt.copies_that_fit(storage_bytes, adapter.total, weights_bytes)
        ),
    )
    hardware = Hardware(
        gpu=gpu.id,
        gpu_name=gpu.name,
        gpus_per_node=spec.gpus_per_node,
        nodes=spec.nodes,
        instance=instance.id if instance else None,
        usd_per_hour=instance.usd_per_hour if instance else None,
    )
    t = step_timing(arch, spec, pc, gpu, instance, cal)
    tokens = dataset_tokens if dataset_tokens is not None else SEED_DATASET_SAMPLES * spec.seq_len
    tc = time_cost(t, tokens, epochs, instance.usd_per_hour if instance else None, spec.nodes)
    throughput = Throughput(
        tokens_per_s=t.tokens_per_s,
        tokens_per_s_per_gpu=t.tokens_per_s / t.world,
        step_time_s=t.step_time_s,
        tokens_per_step=t.tokens_per_step,
        mfu=t.mfu,
        step_time_parts=StepParts(
            compute_s=t.compute_s,
            communication_s=t.communication_s,
            offload_s=t.offload_s,
            optimizer_s=t.optimizer_s,
            framework_s=t.framework_s,
        ),
        bottleneck=t.bottleneck,  # type: ignore[arg-type]
        calibrated=all(cal.coefficients[k].calibrated for k in TIME_COEFFICIENTS),
        tokens_per_s_error_rel=cal.band(THROUGHPUT_RESIDUAL),
    )
    time_and_cost = TimeCost(**tc._asdict())
    return Plan(
        inputs=Inputs(model=arch.name, hf_id=arch.hf_id, spec=spec, hardware=hardware),
        throughput=throughput,
        time_cost=time_and_cost,
        cost=time_and_cost,
        parameters=Parameters(
            total=pc.total, trainable=pc.trainable, frozen=pc.frozen, base=pc.base, lora=pc.lora, modules_to_save=pc.modules_to_save
        ),
        memory=memory,
        max_micro_batch_size=max_gpu_batch if fits_host is not False else 0,
        max_micro_batch_size_gpu=max_gpu_batch,
        checkpoint=checkpoint,
        warnings=_warnings(arch, spec, gpu, instance),
        calibration=CalibrationInfo(
            id=cal.id,
            fitted=cal.fitted,
            device=cal.device,
            n_records=cal.n_records,
            coefficients={k: CoefficientUse(value=c.value, calibrated=c.calibrated) for k, c in cal.coefficients.items()},
            residuals=None if cal.residuals is None else {k: ResidualOut(**r.model_dump()) for k, r in cal.residuals.items()},
        ),
    )
