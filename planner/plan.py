"""The plan: one pydantic model that the tables and ``--json`` both render.

``build_plan`` is the only composition point: catalog records + a TrainingSpec in, Plan out.
Byte counts are ints; GiB appear only in ``planner.render``. The JSON keys documented in the
README are a public contract: add keys freely, never rename or drop them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from planner.calibration import PEAK_RESIDUAL, THROUGHPUT_RESIDUAL, TIME_COEFFICIENTS, Calibration, load_calibration
from planner.formulas import checkpoint as ckpt
from planner.formulas.dtypes import adapter_dtype
from planner.memory import CATEGORIES, GpuMemory, HostMemory, gpu_memory, host_memory, param_counts
from planner.schemas import Architecture, Gpu, Instance
from planner.spec import TrainingSpec
from planner.timing import SEED_DATASET_SAMPLES, step_timing, time_cost

SCHEMA_VERSION = 1
MAX_SEARCH_BATCH = 1 << 16


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hardware(_Out):
    gpu: str
    gpu_name: str
    gpus_per_node: int
    nodes: int
    instance: str | None
    usd_per_hour: float | None = Field(description="On-demand price of one node, if known.")


class Inputs(_Out):
    model: str
    hf_id: str | None
    spec: TrainingSpec
    hardware: Hardware


class Parameters(_Out):
    total: int = Field(description="All parameters the process holds: base (+ added tokens) + adapters + saved copies.")
    trainable: int
    frozen: int
    base: int = Field(description="The model without adapters, after added tokens.")
    lora: int
    modules_to_save: int


class PhasePeaks(_Out):
    forward: int
    backward: int
    optimizer_step: int
    checkpoint_save: int


class CategorySplit(_Out):
    parameters_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    activations_bytes: int
    temporaries_bytes: int


class PhaseSplits(_Out):
    forward: CategorySplit
    backward: CategorySplit
    optimizer_step: CategorySplit
    checkpoint_save: CategorySplit


class ActivationItem(_Out):
    name: str
    bytes: int


class PerGpu(_Out):
    parameters_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    activations_bytes: int
    temporaries_bytes: int
    overhead_bytes: int = Field(description="peak_bytes - peak_allocated_bytes: allocator reserve + CUDA context.")
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    peak_bytes: int
    peak_phase: Literal["forward", "backward", "optimizer_step", "checkpoint_save"]
    phase_peaks_bytes: PhasePeaks
    phase_splits_bytes: PhaseSplits
    cuda_context_bytes: int
    allocator_reserve_bytes: int
    activation_inventory: list[ActivationItem] = Field(
        description="Saved tensors of one decoder layer (layer.*, before checkpointing) and outside the layers."
    )
    peak_error_rel: float | None = Field(
        default=None,
        description="Error band of peak_allocated_bytes (the live tensors; the allocator reserve and CUDA context on top are "
        "not yet measured on GPUs): the calibration's relative error on measured live-tensor peaks (90th percentile, or worst "
        "below 10 records; calibration.residuals['memory.peak_bytes']). None when the calibration has no such residual.",
    )


class HostPhasePeaks(_Out):
    model_load: int
    train: int
    checkpoint_save: int


class PerNodeCpu(_Out):
    peak_bytes: int
    peak_phase: Literal["model_load", "train", "checkpoint_save"]
    process_bytes: int
    offloaded_optimizer_bytes: int
    offloaded_parameters_bytes: int
    model_load_bytes: int
    checkpoint_save_bytes: int
    phase_peaks_bytes: HostPhasePeaks


class PerNodeGpu(_Out):
    peak_bytes: int
    capacity_bytes: int


class Memory(_Out):
    per_gpu: PerGpu
    per_node_gpu: PerNodeGpu
    per_node_cpu: PerNodeCpu
    gpu_capacity_bytes: int
    host_capacity_bytes: int | None = Field(description="None when the hardware was given as --gpu (host unknown).")
    gpu_headroom_bytes: int
    host_headroom_bytes: int | None
    fits: bool
    fits_gpu: bool
    fits_host: bool | None
    limiting: list[Literal["gpu", "host"]] = Field(description="Resources that run out (empty when it fits).")


class Checkpoint(_Out):
    model_weights_bytes: int
    adapter_bytes: int | None = Field(description="None for full fine-tuning.")
    adapter_lora_bytes: int | None
    adapter_modules_to_save_bytes: int | None
    adapter_embedding_layers_bytes: int | None
    adapter_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(description="The A/B dtype after resolving 'auto'.")
    training_state_bytes: int
    merged_model_bytes: int
    storage_bytes: int | None = Field(default=None, description="Disk budget given with --storage-gb.")
    models_in_storage: int | None = Field(
        default=None, description="Fine-tuned models that fit in storage_bytes: full checkpoints, or adapters beside one base model."
    )


class CoefficientUse(_Out):
    value: float
    calibrated: bool


class ResidualOut(_Out):
    n: int
    median_rel: float
    p90_rel: float
    max_rel: float
    bias_rel: float
    source: str


class CalibrationInfo(_Out):
    id: str
    fitted: bool
    device: str | None = Field(default=None, description="What the coefficients were fitted on (a GPU name or 'cpu').")
    n_records: int = Field(default=0, description="Measurements the fit used (0 for cited defaults).")
    coefficients: dict[str, CoefficientUse]
    residuals: dict[str, ResidualOut] | None = Field(
        description="Per quantity: the planner's relative error against the measurements behind this calibration."
    )


class StepParts(_Out):
    compute_s: float = Field(description="Matmuls at the calibrated fraction of peak (all micro-steps).")
    communication_s: float = Field(description="ZeRO / data-parallel collectives not hidden behind compute.")
    offload_s: float = Field(description="PCIe traffic of offloaded parameters and optimizer partitions.")
    optimizer_s: float = Field(description="AdamW on the GPU, or DeepSpeed's CPU Adam when offloaded.")
    framework_s: float = Field(description="Host time in DeepSpeed ZeRO-3's per-module gather/release hooks (0 otherwise).")


class Throughput(_Out):
    tokens_per_s: float = Field(description="All GPUs, padding included.")
    tokens_per_s_per_gpu: float
    step_time_s: float = Field(description="One optimizer step (grad_accum micro-steps).")
    tokens_per_step: int
    mfu: float = Field(description="Model FLOPs (no recomputation) / (step time x dense peak), per GPU.")
    step_time_parts: StepParts
    bottleneck: Literal["compute", "communication", "offload", "optimizer", "framework"]
    calibrated: bool = Field(description="False while the time coefficients are cited defaults.")
    tokens_per_s_error_rel: float | None = Field(
        default=None,
        description="Error band of tokens_per_s: the calibration's relative error on measured throughput "
        "(calibration.residuals['throughput.tokens_per_s']). None when the calibration has no such residual.",
    )


class TimeCost(_Out):
    dataset_tokens: int = Field(description="Tokens of one epoch (samples x sequence length when padded).")
    epochs: float
    seconds_per_epoch: float
    seconds_total: float = Field(description="All epochs.")
    usd_per_hour: float | None = Field(description="All nodes, on-demand; None without an instance or price.")
    usd_per_epoch: float | None
    usd_total: float | None = Field(description="All epochs.")
    usd_per_million_tokens: float | None


class Plan(_Out):
    schema_version: int = SCHEMA_VERSION
    inputs: Inputs
    parameters: Parameters
    memory: Memory
    max_micro_batch_size: int = Field(description="Largest micro batch per GPU that fits GPU and host; 0 if none.")
    max_micro_batch_size_gpu: int = Field(description="Largest micro batch per GPU that fits GPU memory alone.")
    checkpoint: Checkpoint
    warnings: list[str] = Field(default_factory=list, description="Things the plan cannot vouch for.")
    calibration: CalibrationInfo
    throughput: Throughput
    time_cost: TimeCost
    cost: TimeCost = Field(description="Same as time_cost (the name reserved in schema version 1).")
    settings_sources: dict[str, str] = Field(
        default_factory=dict,
        description="Where each setting came from: an option ('--zero'), a file and key ('ds.json: zero_optimization.stage') or 'default'.",
    )
    settings_ignored: list[str] = Field(default_factory=list, description="Keys of the configuration files read but not modelled.")


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
        hi = max(1, min(hi - 1, hi - -(-(peak(hi) - cap) // step)))
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
    split = g.split
    cats = {c: getattr(split, c) for c in CATEGORIES}
    per_gpu = PerGpu(
        **{f"{c}_bytes": v for c, v in cats.items()},
        overhead_bytes=g.peak_bytes - g.peak_allocated_bytes,
        peak_allocated_bytes=g.peak_allocated_bytes,
        peak_reserved_bytes=g.peak_reserved_bytes,
        peak_bytes=g.peak_bytes,
        peak_phase=g.peak_phase,  # type: ignore[arg-type]
        phase_peaks_bytes=PhasePeaks(**{p: s.total for p, s in g.phases.items()}),
        phase_splits_bytes=PhaseSplits(
            **{p: CategorySplit(**{f"{c}_bytes": getattr(s, c) for c in CATEGORIES}) for p, s in g.phases.items()}
        ),
        cuda_context_bytes=g.cuda_context_bytes,
        allocator_reserve_bytes=g.peak_reserved_bytes - g.peak_allocated_bytes,
        activation_inventory=[ActivationItem(name=x.name, bytes=x.bytes) for x in g.activation_items],
        peak_error_rel=cal.band(PEAK_RESIDUAL),
    )
    host_phases = h.phases
    per_node_cpu = PerNodeCpu(
        peak_bytes=h.peak_bytes,
        peak_phase=max(host_phases, key=host_phases.__getitem__),  # type: ignore[arg-type]
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
    time_and_cost = TimeCost(**vars(tc))
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
