"""Measured records (``data/measurements/**.jsonl``): what the harness saw, readable without torch.

One JSON object per line. A record names the model and the full ``TrainingSpec`` it measured,
the tool and library versions, the exact command, and what was measured; a failed measurement
keeps its error instead of numbers (nothing is dropped). ``schema_version`` is checked on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.errors import PlannerError
from planner.spec import TrainingSpec

SCHEMA_VERSION = 1
CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations", "temporaries")
PHASES = ("forward", "backward", "optimizer_step")


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
    peak_phase: Literal["forward", "backward", "optimizer_step"]
    at_peak_bytes: CategoryBytes
    phase_peaks_bytes: dict[Literal["forward", "backward", "optimizer_step"], int]
    phase_split_bytes: dict[Literal["forward", "backward", "optimizer_step"], CategoryBytes]


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


PhaseName = Literal["forward", "backward", "optimizer_step"]


class RunPhase(_Strict):
    """One phase of a profiled real step: the live tensor peak and its split (per rank)."""

    peak_bytes: int = Field(ge=0)
    at_peak_bytes: CategoryBytes
    cuda_max_allocated_bytes: int | None = Field(default=None, ge=0)
    cuda_max_reserved_bytes: int | None = Field(default=None, ge=0)


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


class Measurement(_Strict):
    schema_version: Literal[1] = 1
    kind: Literal["trace", "run"]
    model: str = Field(description="Catalog name of the architecture.")
    spec: TrainingSpec
    sharding: Literal["none", "fsdp2", "deepspeed"] = "none"
    tool: str = Field(description="What measured it, e.g. 'harness trace (FakeTensorMode + MemTracker)'.")
    versions: dict[str, str]
    command: str
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}")
    host: str
    result: TraceResult | RunResult | None = None
    error: str | None = None


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
                member = "RunResult" if raw.get("kind") == "run" else "TraceResult"
                err = next((e for e in errors if member in e["loc"]), errors[0])
                where = ".".join(str(x) for x in err["loc"] if x not in ("TraceResult", "RunResult"))
                raise PlannerError(f"{f}:{n}: field {where}: {err['msg']}") from None
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
