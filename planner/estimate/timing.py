"""The one place that composes step time, throughput, and time and dollars per epoch.

An optimizer step is ``grad_accum`` micro-steps plus the optimizer:

* compute: the micro-step's matmul FLOPs (``formulas.flops``, recomputation included) at the
  GPU's dense peak times an efficiency that grows with the tokens per micro-step; QLoRA adds
  the memory-bound dequantization of every frozen weight for each use;
* communication: the ZeRO / data-parallel collectives (``formulas.throughput``) over the
  slowest link (NVLink/NVSwitch inside a node, the instance's network across nodes), partly
  hidden behind compute (``comm_overlap``);
* offload: with ``--offload all`` the parameter partition comes over PCIe for forward and
  again for backward; with the optimizer offloaded, each step sends the gradient partition
  down and the updated 16-bit partition up, and DeepSpeed's CPU Adam updates it on the host;
* optimizer on the GPU: memory-bound AdamW over the local partition;
* framework: DeepSpeed ZeRO-3's host time in its per-module gather/release hooks
  (``formulas.zero.zero3_module_calls``), a fixed cost per micro-step that small micro batches
  cannot amortise; measured on the CPU by ``harness/hook_overhead.py``. Counted as exposed,
  not hidden behind the GPU: each gather is waited on before its module runs, so the host
  cannot run far ahead (TensorAuto/OpenTau#177 measured DeepSpeed's per-parameter host path
  adding seconds to an 8x A100 step, "host-side, not bandwidth-limited").

Every coefficient is named in the calibration file and reported with the plan.
"""

from __future__ import annotations

from typing import NamedTuple

from planner.estimate.memo import per_setup
from planner.formulas import params as prm
from planner.formulas import throughput as tp
from planner.formulas.counts import ParamCounts
from planner.formulas.dtypes import adapter_bytes_per_elem, spec_dtypes
from planner.formulas.flops import step_flops
from planner.formulas.zero import zero3_module_calls
from planner.schema.calibration import Calibration
from planner.schema.catalog import Architecture, Gpu, Instance
from planner.schema.spec import TrainingSpec
from planner.units import MEGA, ceil_div

#: GSM8K's train split (Cobbe et al. 2021): 7,473 problems, the seed's dataset, padded to 512.
SEED_DATASET_SAMPLES = 7473


class Timing(NamedTuple):
    compute_s: float  # per optimizer step, all micro-steps
    communication_s: float  # exposed (not hidden behind compute)
    offload_s: float
    optimizer_s: float
    framework_s: float  # host time in DeepSpeed's ZeRO-3 hooks, all micro-steps
    tokens_per_step: int  # all GPUs, one optimizer step
    model_flops_per_step: int  # one GPU, without recomputation (what MFU counts)
    peak_flops_per_s: float
    world: int

    @property
    def step_time_s(self) -> float:
        return self.compute_s + self.communication_s + self.offload_s + self.optimizer_s + self.framework_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_time_s

    @property
    def mfu(self) -> float:
        return self.model_flops_per_step / (self.step_time_s * self.peak_flops_per_s)

    @property
    def bottleneck(self) -> str:
        parts = {
            "compute": self.compute_s,
            "communication": self.communication_s,
            "offload": self.offload_s,
            "optimizer": self.optimizer_s,
            "framework": self.framework_s,
        }
        return max(parts, key=parts.__getitem__)


def peak_flops(gpu: Gpu, spec: TrainingSpec) -> float:
    """The dense tensor peak for the precision's matmul dtype."""
    want = {"fp16-mixed": "fp16", "fp32": "tf32"}.get(spec.precision, "bf16")
    table = gpu.peak_flops_per_s
    for key in (want, "bf16", "fp16", "tf32", "fp32"):
        if key in table:
            return float(table[key])
    raise ValueError(f"{gpu.id} lists no peak FLOPs")  # pragma: no cover - the schema requires bf16 or fp16


def plateau_efficiency(gpu: Gpu, cal: Calibration) -> float:
    """Fraction of the dense peak a training step's matmuls reach with large micro batches: the
    framework's share (``compute_efficiency_max``) of what the GPU's best-shape GEMM reaches
    (``Gpu.matmul_efficiency``, measured; else ``matmul_efficiency_default``)."""
    ceiling = gpu.matmul_efficiency if gpu.matmul_efficiency is not None else cal.value("matmul_efficiency_default")
    return cal.value("compute_efficiency_max") * ceiling


def link_bytes_per_s(spec: TrainingSpec, gpu: Gpu, instance: Instance | None, cal: Calibration) -> float:
    """Bus bandwidth a ring collective gets per GPU: the intra-node link (NVLink/NVSwitch, else
    PCIe), and across nodes the node's whole network, whichever is slower. NCCL runs one ring
    per NIC and each ring crosses a node boundary once, so the bus bandwidth across nodes is
    about the node's network bandwidth (nccl-tests on 2 p4d nodes: 57 GB/s bus bandwidth on a
    50 GB/s node network; shared/reference/efficiency.json nccl:inter:p4d-efa400)."""
    intra = (instance.intra_node_bandwidth_bytes_per_s if instance else None) or gpu.nvlink_bandwidth_bytes_per_s
    bw = (intra or gpu.pcie_bandwidth_bytes_per_s) * cal.value("nccl_bus_efficiency")
    if spec.nodes > 1 and instance is not None:
        bw = min(bw, instance.network_bytes_per_s * cal.value("network_efficiency"))
    return bw


def step_timing(arch: Architecture, spec: TrainingSpec, pc: ParamCounts, gpu: Gpu, instance: Instance | None, cal: Calibration) -> Timing:
    dt = spec_dtypes(spec)
    n, zero = spec.world_size, spec.zero_stage
    tokens = spec.tokens_per_micro_batch
    peak = peak_flops(gpu, spec)
    # Every FLOP term is proportional to the micro batch (tokens b*s, scores b*a*s^2): count
    # once per setup at micro batch 1 and scale.
    b = spec.micro_batch_size
    f1 = per_setup(arch, spec, f"flops@{spec.seq_len}", lambda: step_flops(arch, spec.model_copy(update={"micro_batch_size": 1})))
    eff = tp.compute_efficiency(tokens, plateau_efficiency(gpu, cal), cal.value("compute_tokens_half"))
    compute = f1.total * b / (peak * eff)
    hbm = gpu.hbm_bandwidth_bytes_per_s * cal.value("hbm_efficiency")
    if spec.method != "full":
        lin = prm.layer_linears(arch)
        shapes = [(lin[t].in_features, lin[t].out_features) for t in spec.lora_targets if t in lin]  # one layer
        per_layer = tp.lora_elementwise_bytes(tokens, shapes, dt.act, adapter_bytes_per_elem(spec), spec.lora_dropout > 0, spec.grad_ckpt)
        lora_bytes = per_layer * arch.num_hidden_layers
        compute += lora_bytes / hbm
    if spec.method == "qlora":
        # bitsandbytes dequantizes each NF4 weight to 16 bit for every matmul that uses it:
        # forward, backward (input gradient) and the checkpointed re-run; read 0.5 B, write 2 B.
        uses = 2 + (1 if spec.grad_ckpt else 0)
        compute += uses * prm.linear_weight_params(arch) * 2.5 / hbm
    link = link_bytes_per_s(spec, gpu, instance, cal)
    per_micro, per_step = tp.zero_comm_bytes_per_gpu(zero, n, pc.weights_bytes, pc.trainable * dt.weight, pc.grad_bytes_total)
    comm_micro = tp.exposed_seconds(per_micro / link, compute, cal.value("comm_overlap"))
    pcie = gpu.pcie_bandwidth_bytes_per_s * cal.value("pcie_efficiency")
    offload_micro = 2 * (pc.weights_bytes // n) / pcie if spec.offload == "all" else 0.0
    if spec.offload in ("optimizer", "all"):
        moved = (pc.grad_bytes_total + pc.trainable * dt.weight) // n  # gradients down, 16-bit params up
        host_elems = pc.trainable * spec.gpus_per_node // n  # one node's CPU Adam updates its ranks' partitions
        offload_step, optimizer = moved / pcie, host_elems / cal.value("cpu_adam_elements_per_s")
    else:
        local = ceil_div(pc.trainable, n) if zero >= 1 else pc.trainable
        touched = local * tp.optimizer_bytes_per_element(spec.optimizer, dt.weight, dt.grad, dt.master, dt.state)
        offload_step, optimizer = 0.0, touched / hbm
    framework = 0.0
    if zero == 3 and spec.sharding == "deepspeed":
        fetching, hooked = per_setup(arch, spec, "zero3_calls", lambda: zero3_module_calls(arch, spec))
        framework = fetching * cal.value("zero3_fetch_s_per_module") + hooked * cal.value("zero3_hook_s_per_module")
    accum = spec.grad_accum
    # MFU counts the model's FLOPs, without the checkpointed re-run
    no_ckpt = {"micro_batch_size": 1, "grad_ckpt": False}
    model_flops1 = per_setup(arch, spec, f"model_flops@{spec.seq_len}", lambda: step_flops(arch, spec.model_copy(update=no_ckpt)).total)
    model_flops = model_flops1 * b * accum
    return Timing(
        compute_s=accum * compute,
        communication_s=accum * comm_micro + per_step / link,
        offload_s=accum * offload_micro + offload_step,
        optimizer_s=optimizer,
        framework_s=accum * framework,
        tokens_per_step=tokens * accum * n,
        model_flops_per_step=model_flops,
        peak_flops_per_s=peak,
        world=n,
    )


class TimeCost(NamedTuple):
    dataset_tokens: int  # one epoch
    epochs: float
    seconds_per_epoch: float
    seconds_total: float
    usd_per_hour: float | None
    usd_per_epoch: float | None
    usd_total: float | None
    usd_per_million_tokens: float | None


def time_cost(t: Timing, dataset_tokens: int, epochs: float, usd_per_node_hour: float | None, nodes: int) -> TimeCost:
    """Time and on-demand dollars of ``epochs`` passes over ``dataset_tokens`` at ``t``'s rate."""
    seconds = dataset_tokens / t.tokens_per_s
    per_hour = None if usd_per_node_hour is None else usd_per_node_hour * nodes
    return TimeCost(
        dataset_tokens=dataset_tokens,
        epochs=epochs,
        seconds_per_epoch=seconds,
        seconds_total=seconds * epochs,
        usd_per_hour=per_hour,
        usd_per_epoch=None if per_hour is None else per_hour * seconds / 3600,
        usd_total=None if per_hour is None else per_hour * seconds * epochs / 3600,
        usd_per_million_tokens=None if per_hour is None else per_hour / (t.tokens_per_s * 3600) * MEGA,
    )
