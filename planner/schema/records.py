"""Measured records (``data/measurements/**.jsonl``): what the harness saw, readable without torch.

One JSON object per line. A record names the model and the full ``TrainingSpec`` it measured,
the tool and library versions, the exact command, and what was measured; a failed measurement
keeps its error instead of numbers (nothing is dropped). ``schema_version`` is checked on load.

Three kinds, one result type each: ``trace`` (``TraceResult``, ``harness trace``), ``run``
(``RunResult``, ``harness run``) and ``published`` (``PublishedResult``: a figure someone else
measured and published, mapped to a spec by hand and citing its source; written by
``python -m planner.calibration published --write``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner.errors import PlannerError
from planner.schema.memory import MeasuredPhase
from planner.schema.spec import TrainingSpec

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoryBytes(_Strict):
    """Live tensor bytes split as PyTorch's MemTracker splits them (buffers with parameters)."""

    parameters: int = Field(ge=0)
    gradients: int = Field(ge=0)
    optimizer_states: int = Field(ge=0)
    activations: int = Field(ge=0)
    temporaries: int = Field(ge=0)

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations + self.temporaries


class StepTrace(_Strict):
    """One training step: the peak of each phase and the split at that moment (per rank)."""

    peak_bytes: int = Field(ge=0)
    peak_phase: MeasuredPhase
    at_peak_bytes: CategoryBytes
    phase_peaks_bytes: dict[MeasuredPhase, int]
    phase_split_bytes: dict[MeasuredPhase, CategoryBytes]


class Flops(_Strict):
    forward: int = Field(ge=0)
    backward: int = Field(ge=0)


class ParameterCount(_Strict):
    total: int = Field(ge=0)
    trainable: int = Field(ge=0)


class TraceResult(StepTrace):
    """What ``harness trace`` measured. The peak fields (from ``StepTrace``) are the steady-state
    (last) step's; ``steps`` holds every step."""

    steps: list[StepTrace]
    flops: Flops | None = None
    parameters: ParameterCount
    wall_s: float = Field(ge=0)
    max_rss_bytes: int = Field(ge=0)


PhaseName = MeasuredPhase


class RunPhase(_Strict):
    """One phase of a profiled real step: the live tensor peak and its split (per rank)."""

    peak_bytes: int = Field(ge=0)
    at_peak_bytes: CategoryBytes
    cuda_max_allocated_bytes: int | None = Field(default=None, ge=0)
    cuda_max_reserved_bytes: int | None = Field(default=None, ge=0)
    cuda_max_active_bytes: int | None = Field(default=None, ge=0, description="torch.cuda.memory_stats()['active_bytes.all.peak'].")
    cuda_device_used_bytes: int | None = Field(
        default=None, ge=0, description="total - free of torch.cuda.mem_get_info() at the phase's end: what nvidia-smi shows."
    )
    cuda_reserved_at_end_bytes: int | None = Field(
        default=None, ge=0, description="torch.cuda.memory_reserved() at the same moment (device_used - this = context and libraries)."
    )


class CheckpointFiles(_Strict):
    """What saving wrote: ``save_pretrained`` under ``pretrained/`` and DeepSpeed's
    ``save_checkpoint`` under ``deepspeed/`` (file -> bytes), and the host memory rise."""

    files_bytes: dict[str, int]
    #: safetensors payload of the adapter (or model) file(s): file size minus the JSON header
    pretrained_tensor_bytes: int = Field(ge=0)
    save_rss_rise_bytes: int = Field(ge=0)


class RunResult(_Strict):
    """What ``harness run`` measured: real training steps with DeepSpeed (+ peft)."""

    device: str
    world_size: int = Field(ge=1)
    peak_bytes: int = Field(ge=0)
    peak_phase: PhaseName
    phases: dict[PhaseName, RunPhase]
    rank_peaks_bytes: list[int]
    tokens_per_s: float = Field(ge=0, description="All ranks, median step.")
    median_step_s: float = Field(ge=0)
    step_times_s: list[float]
    load_s: float = Field(ge=0)
    max_rss_bytes: int = Field(ge=0)
    rank_max_rss_bytes: list[int]
    parameters: ParameterCount
    checkpoint: CheckpointFiles | None = None


MemoryCounter = Literal["allocated", "active", "reserved", "device"]


class PublishedResult(_Strict):
    """What a publication reports for one training run, per GPU, with its citation.

    The run's setup is the record's ``spec`` (mapped by hand: ``basis`` says how). A figure the
    source does not give, or gives too loosely to hold the planner to, is ``None``.
    ``memory_counter`` says which number the peak memory is: ``allocated``
    (``torch.cuda.max_memory_allocated``), ``active`` (the allocator's ``active_bytes.all.peak``,
    allocated plus blocks awaiting reuse on another stream), ``reserved``
    (``torch.cuda.max_memory_reserved``) or ``device`` (``nvidia-smi``: reserved plus the CUDA
    context and library workspaces)."""

    source: str = Field(description="Citation: repository file @ commit, URL or paper section.")
    source_id: str = Field(
        description="The point's id in data/published/*.json (and in the reference list, data/published/reference.json)."
    )
    source_model: str = Field(description="The model as the source names it (what actually ran).")
    gpu: str = Field(description="A Gpu.id in data/gpus.json.")
    instance: str | None = Field(default=None, description="An Instance.id in data/instances.json, when the source names one.")
    tokens_per_s_per_gpu: float | None = Field(
        default=None, gt=0, description="Counted as the planner counts: padding included (``basis`` says where the source differs)."
    )
    peak_memory_bytes_per_gpu: int | None = Field(default=None, gt=0)
    memory_counter: MemoryCounter | None = None
    basis: str = Field(description="How the published figure and setup were mapped to this record.")
    confidence: Literal["high", "medium", "low"]
    known_gap: str | None = Field(default=None, description="What of this run the planner knowingly does not model.")

    @model_validator(mode="after")
    def _complete(self) -> PublishedResult:
        if self.tokens_per_s_per_gpu is None and self.peak_memory_bytes_per_gpu is None:
            raise ValueError("a published result needs tokens_per_s_per_gpu or peak_memory_bytes_per_gpu")
        if (self.peak_memory_bytes_per_gpu is None) != (self.memory_counter is None):
            raise ValueError("peak_memory_bytes_per_gpu and memory_counter go together")
        return self


#: The result type each kind of record holds (a kind names its member in load errors).
RESULT_TYPES: dict[str, type[BaseModel]] = {"trace": TraceResult, "run": RunResult, "published": PublishedResult}


class Measurement(_Strict):
    schema_version: Literal[1] = 1
    kind: Literal["trace", "run", "published"]
    model: str = Field(description="Catalog name of the architecture.")
    spec: TrainingSpec
    sharding: Literal["none", "fsdp2", "fsdp1", "deepspeed"] = "none"
    tool: str = Field(description="What measured it, e.g. 'harness trace (FakeTensorMode + MemTracker)'.")
    versions: dict[str, str]
    command: str
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}")
    host: str
    result: TraceResult | RunResult | PublishedResult | None = None
    error: str | None = None

    @model_validator(mode="after")
    def _result_matches_kind(self) -> Measurement:
        if self.result is not None and not isinstance(self.result, RESULT_TYPES[self.kind]):
            raise ValueError(f"a {self.kind!r} record holds a {RESULT_TYPES[self.kind].__name__}, not a {type(self.result).__name__}")
        return self


def _member(loc: str | int) -> str | None:
    """The result type a union error's path element names: the bare class name, or pydantic's
    wrapper around a member with a validator (``function-after[_complete(), PublishedResult]``)."""
    for t in RESULT_TYPES.values():
        if loc == t.__name__ or (isinstance(loc, str) and loc.endswith(f"{t.__name__}]")):
            return t.__name__
    return None


def read_measurements(path: Path) -> list[Measurement]:
    """Every record of one ``.jsonl`` file (or of all ``.jsonl`` files under a folder)."""
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    out: list[Measurement] = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PlannerError(f"{f}:{n}: not valid JSON ({exc.msg})") from None
            version = raw.get("schema_version") if isinstance(raw, dict) else None
            if version != SCHEMA_VERSION:
                raise PlannerError(f"{f}:{n}: measurement schema_version {version!r}, this planner reads {SCHEMA_VERSION}")
            try:
                out.append(Measurement.model_validate(raw))
            except ValidationError as exc:
                errors = exc.errors()
                # a result is a union: report the member the record's kind names, and leave its
                # name out of the path
                member = RESULT_TYPES.get(str(raw.get("kind")), TraceResult).__name__
                err = next((e for e in errors if member in map(_member, e["loc"])), errors[0])
                where = ".".join(str(x) for x in err["loc"] if _member(x) is None)
                msg = err["msg"].removeprefix("Value error, ")
                raise PlannerError(f"{f}:{n}: field {where}: {msg}" if where else f"{f}:{n}: {msg}") from None
    return out


def append_measurement(path: Path, record: Measurement) -> None:
    """Append one record as one line, written whole (a crash never leaves half a line)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    line = (record.model_dump_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        view = memoryview(line)
        while view:  # O_APPEND: each write lands at the end; loop on short writes
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
