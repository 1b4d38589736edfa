"""Hold the planner to measured records: per phase and category, planner vs measurement.

A trace (``harness trace``) sees one GPU's live tensors without ZeRO or offload (or, sharded,
one FSDP rank), so the planner is evaluated for exactly the record's spec and its
``memory.gpu_memory`` phases are compared with the trace's phase peaks, category by category.

Tolerances (issue 3): each category within 3 % of the measured bytes, phase totals and the
overall peak within 2 % (5 % for sharded FSDP2 records), FLOPs within 1 %. A category that is
small next to its phase (under ``NEGLIGIBLE_FRACTION`` of the phase's measured total) is held
to that absolute allowance instead: a 3 % test on a few MiB of scratch says nothing about the
peak.

Every tolerance the agreement tests (tests/agreement, tests/harness, tests/golden/test_seed_claims.py)
hold the planner to, against a measurement or a published figure (or one measurement against
another), is named in this module once, with the measurement that justifies it: traces, then
real runs (committed and live), then published points and the seed's figures. The tests import
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.catalog import find_gpu, find_model, load_calibration
from planner.errors import PlannerError
from planner.estimate.memory import gpu_memory
from planner.formulas.flops import step_flops
from planner.schema.calibration import Calibration
from planner.schema.catalog import Gpu
from planner.schema.memory import CATEGORIES, MEASURED_PHASES
from planner.schema.records import Measurement, RunResult, TraceResult

# -- traces (``compare``; tests/agreement/test_trace_agreement.py, tests/harness/test_trace_live.py)
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
    for phase in MEASURED_PHASES:
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

#: A fresh ``harness calibrate ci`` (tests/harness/test_calibrate.py: the CI grid run on the CI
#: machine, the planner calibrated on those very runs) is held at each run's peak phase,
#: category by category, to ``RUN_CATEGORY_TOLERANCE`` of the measured bytes, for every category
#: of at least ``RUN_CATEGORY_FLOOR`` of the peak (smaller ones, a few KiB of scratch next to
#: megabytes of weights, say nothing about the peak; ``calibrate`` leaves them out of its
#: residuals for the same reason). Wider than the traces' ``CATEGORY_TOLERANCE``: the CPU runs
#: are real processes on a shared machine (gloo's worker thread frees buffers late under
#: load), not fake-tensor traces. Measured: over the 48 committed CPU runs
#: (data/measurements/run/cpu.jsonl, data/calibration/cpu.json) the worst such category is
#: 4.6 % (llama-3-8b-tiny full no-ckpt ZeRO-2 x2, backward activations); a fresh CI grid (12
#: runs, 2 cores, calibrated on itself) 2.7 % (LoRA ZeRO-3, backward activations).
RUN_CATEGORY_TOLERANCE = 0.10
RUN_CATEGORY_FLOOR = 0.05

#: One live ``harness run`` of the tiny Llama 2, LoRA, ZeRO-2, one process
#: (tests/harness/test_harness_run.py): each phase's live peak within 5 % of the CPU-calibrated
#: planner, half of ``RUN_PHASE_TOLERANCE``. One rank, no collectives, none of the ZeRO-3 or
#: multi-rank effects that set the grid-wide 10 %: the committed records of exactly this spec
#: are within 2.1 % (optimizer step) in every phase, checkpointing on or off.
LIVE_RUN_PHASE_TOLERANCE = 0.05

#: The same spec measured twice, through Ray Train and through local processes
#: (tests/harness/test_ray_run.py): every rank's phase peaks within 3 %. Measurement against
#: measurement: with two ranks the moment a collective's buffer is freed varies from run to run
#: (a fresh-clone CI run once saw the ZeRO-3 step's peak 1.5 % apart); what is held at each peak
#: (parameters, gradients, optimizer states) is compared exactly.
REPEAT_RUN_PEAK_TOLERANCE = 0.03

# -- published points (``planner.calibration.published``; tests/agreement/test_published_throughput.py)

#: Tokens/s per GPU with the cited default coefficients (not fitted to these points): the median
#: |planner / published - 1| over every throughput record is 9.4 % (46 records: the 45
#: throughput points and torchtune's tokens/s beside its memory point); 11 % guards against
#: getting worse. No coefficient was tuned to meet any of these bounds.
PUBLISHED_MEDIAN_ABS_ERROR_MAX = 0.11
#: Each throughput point whose run the planner models (no ``known_gap``): today's worst is
#: +25.7 % (``mfu:llm-foundry:a100-40gb:70b:seq2048:64gpu``, the least per-GPU work of any 70B
#: point, so FSDP's all-gathers are exposed) and -20.6 % (an A100-80GB llm-foundry run).
PUBLISHED_WORST_MODELLED_ABS_ERROR_MAX = 0.28
#: Each throughput point with a ``known_gap`` (the three Ray template runs on A10G clusters:
#: pageable offload buffers, PCIe-only links): the gap only ever slows the real run, so the
#: planner must over-predict them, by at most this. Today +55 %, +87 % and +409 %
#: (``ray-70b-full-epoch``).
PUBLISHED_WORST_ABS_ERROR_MAX = 4.3
#: Peak memory per GPU of a published point: the figure is rounded to 0.1 GiB and ``active``
#: differs from allocated bytes only by blocks awaiting reuse on another stream (none in a
#: one-stream step), so what remains is the run's framework: torchtune's own modules, not the
#: transformers ones whose saved tensors the planner matches within ``PEAK_TOLERANCE`` on the
#: traces. 5 % is 3 GiB at 60 GiB: less than one fp32 copy of the logits (2 x 4096 tokens x
#: 128256 x 4 bytes = 4.2 GB), so a missing or doubled logits-sized tensor fails it. Today
#: -0.5 % (``tt-l32-3b-packed``, the one point specified well enough).
PUBLISHED_MEMORY_TOLERANCE = 0.05

# -- the seed's and the Ray template's published figures (tests/golden/test_seed_claims.py)

#: Checkpoint sizes the Ray template's README prints. LoRA adapters (42 / 64 / 202 MB for
#: 7B / 13B / 70B): the planner counts tensor bytes, the file adds its safetensors header and
#: whatever rows of the embeddings the peft of Sept 2023 saved; measured -1.9 %, -0.2 %, +3.2 %.
ADAPTER_CHECKPOINT_TOLERANCE = 0.05
#: Full 16-bit model checkpoints (12.8 and 128 "G", GiB): the tensor bytes are nearly all of the
#: files; measured -1.9 % and +0.4 %.
MODEL_CHECKPOINT_TOLERANCE = 0.03
#: What the seed says "about" (twenty full 7B copies take about 280 GB; about 700 LoRA 70B
#: adapters fit beside the base): a round number in prose, not a measurement; measured -3.7 %
#: and -2.7 %.
SEED_ABOUT_TOLERANCE = 0.10
#: A ratio the seed prints to three digits (LoRA r=8 trains 0.297 % of Llama 2 7B's parameters):
#: measured -0.12 %.
SEED_PRINTED_RATIO_TOLERANCE = 0.01


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
