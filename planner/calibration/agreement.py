"""Hold the planner to measured records: per phase and category, planner vs measurement.

A trace (``harness trace``) sees one GPU's live tensors without ZeRO or offload (or, sharded,
one FSDP rank), so the planner is evaluated for exactly the record's spec and its
``memory.gpu_memory`` phases are compared with the trace's phase peaks, category by category.

Tolerances (issue 3): each category within 3 % of the measured bytes, phase totals and the
overall peak within 2 % (5 % for sharded FSDP2 records), FLOPs within 1 %. A category that is
small next to its phase (under ``NEGLIGIBLE_FRACTION`` of the phase's measured total) is held
to that absolute allowance instead: a 3 % test on a few MiB of scratch says nothing about the
peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.catalog import find_gpu, find_model, load_calibration
from planner.errors import PlannerError
from planner.estimate.memory import gpu_memory
from planner.formulas.flops import step_flops
from planner.schema.calibration import Calibration
from planner.schema.catalog import Gpu
from planner.schema.records import CATEGORIES, Measurement, RunResult, TraceResult

CATEGORY_TOLERANCE = 0.03
PEAK_TOLERANCE = 0.02
SHARDED_PEAK_TOLERANCE = 0.05
FLOPS_TOLERANCE = 0.01
NEGLIGIBLE_FRACTION = 0.005


@dataclass(frozen=True)
class Row:
    """One compared quantity."""

    what: str  # e.g. "backward.activations", "peak", "flops.forward"
    predicted: int
    measured: int
    allowed_abs: int  # the absolute error this row may have

    @property
    def error_rel(self) -> float:
        return (self.predicted - self.measured) / self.measured if self.measured else (0.0 if self.predicted == 0 else float("inf"))

    @property
    def ok(self) -> bool:
        return abs(self.predicted - self.measured) <= self.allowed_abs


def label(m: Measurement) -> str:
    s = m.spec
    parts = [m.model, s.method, f"b{s.micro_batch_size}", f"s{s.seq_len}", s.attention, "ckpt" if s.grad_ckpt else "no-ckpt", s.precision]
    if m.sharding == "deepspeed":
        parts.append(f"zero{s.zero_stage}x{s.world_size}" + (f" offload-{s.offload}" if s.offload != "none" else ""))
    elif m.sharding != "none":
        parts.append(f"{m.sharding}x{s.world_size}")
    return " ".join(parts)


def compare(m: Measurement, cal: Calibration | None = None) -> list[Row]:
    """Planner vs measurement for one trace record (raises if the record has no result)."""
    if m.result is None:
        raise ValueError(f"{label(m)}: the record holds an error, not a measurement: {m.error}")
    if not isinstance(m.result, TraceResult):
        raise ValueError(f"{label(m)}: not a trace record ({m.kind})")
    if len(m.result.steps) < 2:
        raise ValueError(f"{label(m)}: one traced step has no optimizer states yet; the planner predicts the steady state (trace 2 steps)")
    cal = cal or load_calibration("default")
    arch = find_model(m.model)
    pred = gpu_memory(arch, m.spec, cal)
    res = m.result
    rows: list[Row] = []
    for phase in ("forward", "backward", "optimizer_step"):
        meas = res.phase_split_bytes.get(phase)
        if meas is None:
            continue
        p = pred.phases[phase]
        sharded = m.sharding != "none"
        floor = int(NEGLIGIBLE_FRACTION * meas.total)
        for c in CATEGORIES:
            mv, pv = getattr(meas, c), getattr(p, c)
            rows.append(Row(f"{phase}.{c}", pv, mv, max(int(CATEGORY_TOLERANCE * mv), floor)))
        rows.append(Row(f"{phase}.total", p.total, meas.total, int((SHARDED_PEAK_TOLERANCE if sharded else PEAK_TOLERANCE) * meas.total)))
    tol = SHARDED_PEAK_TOLERANCE if m.sharding != "none" else PEAK_TOLERANCE
    rows.append(Row("peak", pred.peak_allocated_bytes, res.peak_bytes, int(tol * res.peak_bytes)))
    if res.flops is not None:
        fl = step_flops(arch, m.spec)
        rows.append(Row("flops.forward", fl.forward, res.flops.forward, int(FLOPS_TOLERANCE * res.flops.forward)))
        rows.append(Row("flops.backward", fl.backward, res.flops.backward, int(FLOPS_TOLERANCE * res.flops.backward)))
    return rows


#: What a real DeepSpeed run (``harness run``) is held to, with the calibration fitted to the
#: run's device (``data/calibration/cpu.json`` for CPU runs): the counted terms exactly
#: (parameters, and optimizer states when not offloaded, up to ``STEP_COUNTERS_BYTES`` for
#: Adam's step counters, one small tensor per parameter group or per parameter), and each
#: phase's live peak within ``RUN_PHASE_TOLERANCE``. One known gap: ZeRO-3 with LoRA and
#: checkpointing over several ranks still holds some gathered weights at the optimizer step
#: (0.3-1 MiB on the tiny shapes: whole projections the last re-run or a prefetch brought in,
#: released only by the next step), which the planner leaves out; that phase is held to
#: ``ZERO3_STEP_GATHERED_TOLERANCE`` (it is a quarter of the backward peak there).
RUN_PHASE_TOLERANCE = 0.10
ZERO3_STEP_GATHERED_TOLERANCE = 0.15


STEP_COUNTERS_BYTES = 4096


def on_gpu(r: RunResult) -> bool:
    """A run measured on a CUDA device: it has the CUDA counters (the device name alone can be
    "Tesla T4" as well as "NVIDIA H200")."""
    return any(ph.cuda_max_allocated_bytes is not None for ph in r.phases.values())


def gpu_of_device(device: str) -> Gpu | None:
    """The catalog GPU a CUDA device name (``torch.cuda.get_device_name()``) stands for."""
    name = device.lower().removeprefix("nvidia").strip()
    for guess in (name, name.replace(" ", "-"), name.split()[0] if name else ""):
        if not guess:
            continue
        try:
            return find_gpu(guess)
        except PlannerError:
            continue
    return None


def device_calibration(m: Measurement) -> Calibration:
    """The calibration fitted to the device a run record was measured on (``auto`` for GPUs,
    ``cpu`` for CPU runs), else the defaults."""
    from planner.catalog import calibration_for, data_dir
    from planner.schema.records import RunResult

    r = m.result
    gpu = gpu_of_device(r.device) if isinstance(r, RunResult) and on_gpu(r) else None
    if gpu is not None:
        return calibration_for("auto", gpu.id)
    return load_calibration("cpu" if (data_dir() / "calibration" / "cpu.json").exists() else "default")


def compare_run(m: Measurement, cal: Calibration | None = None) -> list[Row]:
    """Planner vs a ``harness run`` record (rank 0): per phase the parameters, optimizer states
    and live peak."""
    from planner.schema.records import RunResult

    if not isinstance(m.result, RunResult):
        raise ValueError(f"{label(m)}: not a run record with a result")
    pred = gpu_memory(find_model(m.model), m.spec, cal or device_calibration(m))
    rows: list[Row] = []
    s = m.spec
    gathered_at_step = s.zero_stage == 3 and s.world_size > 1 and s.grad_ckpt and s.method != "full"
    for phase, meas in m.result.phases.items():
        p = pred.phases[phase]
        rows.append(Row(f"{phase}.parameters", p.parameters, meas.at_peak_bytes.parameters, 0))
        if s.offload == "none":
            rows.append(Row(f"{phase}.optimizer_states", p.optimizer_states, meas.at_peak_bytes.optimizer_states, STEP_COUNTERS_BYTES))
        tol = ZERO3_STEP_GATHERED_TOLERANCE if (gathered_at_step and phase == "optimizer_step") else RUN_PHASE_TOLERANCE
        rows.append(Row(f"{phase}.total", p.total, meas.peak_bytes, int(tol * meas.peak_bytes)))
    return rows
