"""The plan as ``--json`` prints it: the public contract of the planner's output.

Add keys freely, never rename or drop them (``docs/json.md``). Shapes only: the numbers are
composed in ``planner.estimate.plan.build_plan``.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from planner.schema.memory import GpuPhase, HostPhase
from planner.schema.spec import TrainingSpec

SCHEMA_VERSION = 1
#: The largest micro batch the search tries (``max_micro_batch_size`` never exceeds it).
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
    peak_phase: GpuPhase
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
    peak_phase: HostPhase
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


class StackBehaviourOut(_Out):
    value: bool | int | str = Field(description="The behaviour's value in the plan's spec.")
    source: str = Field(
        description="Why: the library source the profile cites, the option or file key that set it, or what `--stack auto` read."
    )


class StackInfo(_Out):
    name: str = Field(description="The stack profile planned for (data/stacks/<name>.json).")
    title: str
    auto: bool = Field(description="Chosen by `--stack auto` from the installed versions.")
    behaviours: dict[str, StackBehaviourOut] = Field(
        description="Every behaviour of the profile (docs/stacks.md) with its value and source."
    )
    versions: dict[str, str] = Field(description="Library versions: installed ones (auto), else those the profile was read at.")


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
    stack: StackInfo | None = Field(default=None, description="The training stack the plan assumed (--stack; docs/stacks.md).")
