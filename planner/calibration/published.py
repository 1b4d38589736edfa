"""Published measurements (``data/published/``): the planner's second calibration source.

Two data files, each point mapped by hand from its source to the ``plan`` options of the run
(``basis`` says how, ``known_gap`` what of the run the planner knowingly does not model):

- ``throughput.json``: tokens/s per GPU, padding included. The llm-foundry rows are MPT runs
  counted as the Llama of the same size by the ratio of FLOPs per token (``source_model`` says
  what ran); the Ray rows are Llama 2 runs whose epoch time is converted to tokens/s.
- ``memory.json``: peak GPU memory per GPU in the counter the source names (``memory_counter``),
  and tokens/s where the same row gives it.

Each file's ``skipped`` list names the other rows of the reference list the points were taken
from (``reference.json``: every row's id, source and figure, and whether it is a point or
skipped) and why they are not points (not Llama-family, or not specified well enough to hold
the planner to). ``published_measurements()`` turns every point into a ``Measurement`` of kind ``published``
(model, ``TrainingSpec``, GPU, figures, citation); ``python -m planner.calibration published --write`` writes
them to ``data/measurements/published/points.jsonl`` and a test checks that file against this
module. ``compare_published`` evaluates the planner on one record.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from planner.api import resolve
from planner.catalog import calibration_for, data_dir, find_gpu, find_instance, find_model, load_calibration
from planner.estimate.memory import GpuMemory, gpu_memory, param_counts
from planner.estimate.timing import step_timing
from planner.schema.calibration import Calibration
from planner.schema.catalog import Architecture, Gpu, Instance
from planner.schema.records import Measurement, MemoryCounter, PublishedResult
from planner.schema.request import PlanRequest
from planner.schema.spec import TrainingSpec
from planner.units import GIB, GIGA, MEGA, MIB

Confidence = Literal["high", "medium", "low"]
#: Bytes per published memory unit: vendor and tool "GB" is decimal (``GIGA``), GiB binary.
MEMORY_UNIT_BYTES = {"GiB": GIB, "GB": GIGA, "MiB": MIB, "MB": MEGA}


def plan_request(options: Any) -> PlanRequest:
    """A point's ``plan_options`` as the ``PlanRequest`` the planner is asked: ``plan``'s own
    option names (``gpus_per_node`` is ``--gpus``), and ``offload`` ``none`` unless the point
    says otherwise (a published run names the offload it used; none is the stack's default
    outside DeepSpeed's ZeRO-Offload, whereas ``plan`` defaults to the seed's)."""
    if isinstance(options, PlanRequest):
        return options
    if not isinstance(options, dict):
        raise ValueError("plan_options must be an object of plan's options")
    renamed = {("gpus" if k == "gpus_per_node" else k): v for k, v in options.items()}
    missing = [k for k in ("model", "method", "batch_size", "seq_len", "zero") if k not in renamed]
    if missing:
        raise ValueError(f"plan_options lacks {', '.join(missing)}")
    return PlanRequest.parse({"offload": "none", **renamed})


PlanOptions = Annotated[PlanRequest, BeforeValidator(plan_request)]


class PublishedPoint(BaseModel):
    """One published throughput figure (``data/published/throughput.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str
    source_model: str | None = Field(default=None, description="The model as the source names it (what actually ran).")
    metric: str
    published_value: float
    published_unit: str
    tokens_per_s_per_gpu: float = Field(gt=0)
    basis: str
    confidence: Confidence
    plan_options: PlanOptions
    as_of: str
    known_gap: str | None = Field(default=None, description="What of this run the planner knowingly does not model.")


class MemoryPoint(BaseModel):
    """One published peak-memory figure (``data/published/memory.json``), with the run's tokens/s
    when the same row gives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str
    source_model: str
    source_date: str | None = None
    metric: str
    published_value: float = Field(gt=0)
    published_unit: Literal["GiB", "GB", "MiB", "MB"]
    memory_counter: MemoryCounter
    tokens_per_s_per_gpu: float | None = Field(default=None, gt=0)
    basis: str
    confidence: Confidence
    plan_options: PlanOptions
    as_of: str
    known_gap: str | None = None

    @property
    def peak_memory_bytes_per_gpu(self) -> int:
        return round(self.published_value * MEMORY_UNIT_BYTES[self.published_unit])


class Skipped(BaseModel):
    """A row of the reference list that is not a point, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    why: str


class ReferenceRow(BaseModel):
    """One row of the reference list the points were mapped from (``data/published/reference.json``):
    its source, the figure it gives, and whether it became a point or is skipped, in which file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str
    source_commit: str | None
    model: str
    metric: str
    value: float
    unit: str
    taken_as: Literal["point", "skipped"]
    in_file: Literal["throughput.json", "memory.json"] = Field(alias="in")


@cache
def _read(name: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((data_dir() / "published" / name).read_text())
    return raw


@cache
def published_throughput() -> tuple[PublishedPoint, ...]:
    return tuple(PublishedPoint.model_validate(p) for p in _read("throughput.json")["points"])


@cache
def published_memory() -> tuple[MemoryPoint, ...]:
    return tuple(MemoryPoint.model_validate(p) for p in _read("memory.json")["points"])


@cache
def reference_rows() -> tuple[ReferenceRow, ...]:
    """Every row of the reference list, each a point or skipped (``reference.json``)."""
    return tuple(ReferenceRow.model_validate(r) for r in _read("reference.json")["rows"])


@cache
def skipped_points() -> tuple[Skipped, ...]:
    """The reference rows not taken as points, from both data files."""
    return tuple(Skipped.model_validate(s) for name in ("throughput.json", "memory.json") for s in _read(name).get("skipped", []))


def planner_tokens_per_s_per_gpu(arch: Architecture, spec: TrainingSpec, gpu: Gpu, inst: Instance | None, cal: Calibration) -> float:
    t = step_timing(arch, spec, param_counts(arch, spec), gpu, inst, cal)
    return t.tokens_per_s / t.world


def predicted_tokens_per_s_per_gpu(point: PublishedPoint, cal: Calibration | None = None) -> float:
    """The planner's tokens/s per GPU for the point's options (whether or not it fits)."""
    arch, spec, gpu, inst = resolve(point.plan_options)
    return planner_tokens_per_s_per_gpu(arch, spec, gpu, inst, cal or load_calibration())


def _record(point: PublishedPoint | MemoryPoint, result: dict[str, Any]) -> Measurement:
    arch, spec, gpu, inst = resolve(point.plan_options)
    if point.source_model is None:
        raise ValueError(f"published point {point.id}: no source_model (what ran)")
    sharding: Literal["none", "fsdp2", "fsdp1", "deepspeed"] = "none"
    if spec.sharding == "fsdp2" or spec.sharding == "fsdp1":
        sharding = spec.sharding
    elif spec.sharding == "deepspeed" and spec.zero_stage > 0:
        sharding = "deepspeed"
    return Measurement(
        kind="published",
        model=arch.name,
        spec=spec,
        sharding=sharding,
        tool="published",
        versions={},
        command=point.source,
        date=point.as_of,
        host=gpu.name,
        result=PublishedResult(
            source=point.source,
            source_id=point.id,
            source_model=point.source_model,
            gpu=gpu.id,
            instance=inst.id if inst else None,
            basis=point.basis,
            confidence=point.confidence,
            known_gap=point.known_gap,
            **result,
        ),
    )


@cache
def published_measurements() -> tuple[Measurement, ...]:
    """Every published point as a ``published`` record: throughput points first, then memory."""
    out = [_record(p, {"tokens_per_s_per_gpu": p.tokens_per_s_per_gpu}) for p in published_throughput()]
    for m in published_memory():
        figures = {"peak_memory_bytes_per_gpu": m.peak_memory_bytes_per_gpu, "memory_counter": m.memory_counter}
        out.append(_record(m, {**figures, "tokens_per_s_per_gpu": m.tokens_per_s_per_gpu}))
    return tuple(out)


def points_file() -> Path:
    return data_dir() / "measurements" / "published" / "points.jsonl"


def published_jsonl() -> str:
    """The records as the committed ``points.jsonl`` holds them: one JSON object per line."""
    return "".join(m.model_dump_json() + "\n" for m in published_measurements())


def write_published(path: Path | None = None) -> Path:
    """(Re)write the records file whole; a crash leaves the old file, never half a new one."""
    path = path or points_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text(published_jsonl())
    tmp.replace(path)
    return path


class Comparison(NamedTuple):
    """Planner vs publication for one figure of one record."""

    what: str  # "tokens_per_s_per_gpu" or "peak_memory_bytes_per_gpu"
    predicted: float
    published: float

    @property
    def error_rel(self) -> float:
        return self.predicted / self.published - 1


def planner_peak_memory_bytes(mem: GpuMemory, counter: MemoryCounter) -> int:
    """The planner's number for what a memory counter reports: allocated and active bytes are
    the allocator's live tensors (``peak_allocated_bytes``), reserved adds its cache, and the
    device (``nvidia-smi``) adds the CUDA context (``peak_bytes``)."""
    if counter in ("allocated", "active"):
        return mem.peak_allocated_bytes
    if counter == "reserved":
        return mem.peak_reserved_bytes
    return mem.peak_bytes


def compare_published(m: Measurement, cal: Calibration | None = None) -> list[Comparison]:
    """The planner for the record's model, spec and hardware vs each figure the record gives."""
    r = m.result
    if not isinstance(r, PublishedResult):
        raise ValueError(f"{m.model}: not a published record ({m.kind})")
    cal = cal or load_calibration()
    arch = find_model(m.model)
    rows: list[Comparison] = []
    if r.tokens_per_s_per_gpu is not None:
        inst = find_instance(r.instance) if r.instance else None
        predicted = planner_tokens_per_s_per_gpu(arch, m.spec, find_gpu(r.gpu), inst, cal)
        rows.append(Comparison("tokens_per_s_per_gpu", predicted, r.tokens_per_s_per_gpu))
    if r.peak_memory_bytes_per_gpu is not None and r.memory_counter is not None:
        mem = planner_peak_memory_bytes(gpu_memory(arch, m.spec, cal), r.memory_counter)
        rows.append(Comparison("peak_memory_bytes_per_gpu", mem, r.peak_memory_bytes_per_gpu))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m planner.calibration published", description=__doc__.split("\n")[0] if __doc__ else None)
    act = ap.add_mutually_exclusive_group()
    act.add_argument("--write", action="store_true", help="write data/measurements/published/points.jsonl")
    act.add_argument("--check", action="store_true", help="exit 1 if points.jsonl is not what the data files give")
    args = ap.parse_args(argv)
    if args.write:
        path = write_published()
        print(f"wrote {len(published_measurements())} records to {path}", file=sys.stderr)
        return 0
    if args.check:
        path = points_file()
        if not path.is_file() or path.read_text() != published_jsonl():
            print(f"{path} is out of date: run python -m planner.calibration published --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(published_jsonl())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# -- published runs of other stacks (data/published/stacks.json; issue 14, being mapped) --------


class StackPoint(NamedTuple):
    """One mapped point of ``stacks.json``: the planner's figure for its memory counter."""

    id: str
    stack: str
    method: str
    counter: str
    published: int
    predicted: int

    @property
    def error_rel(self) -> float:
        return self.predicted / self.published - 1


@cache
def stack_memory_points() -> tuple[MemoryPoint, ...]:
    """The published peak-memory points of runs on other stacks than DeepSpeed (``stacks.json``,
    mapped from shared/reference/published_measurements_2.jsonl with the stack each ran on)."""
    return tuple(MemoryPoint.model_validate(p) for p in _read("stacks.json")["points"])


def stack_points() -> list[StackPoint]:
    """Planner vs published for every point of ``stacks.json`` (the cited default coefficients)."""
    out = []
    for p in stack_memory_points():
        arch, spec, gpu, _ = resolve(p.plan_options)
        mem = gpu_memory(arch, spec, calibration_for("auto", gpu.id))
        stack = p.plan_options.stack or "deepspeed"
        out.append(
            StackPoint(
                p.id, stack, spec.method, p.memory_counter, p.peak_memory_bytes_per_gpu, planner_peak_memory_bytes(mem, p.memory_counter)
            )
        )
    return out
