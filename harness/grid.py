"""Grid files for ``harness calibrate``: specs x values, run one after another, resumably.

A grid file (YAML or JSON) is a list of blocks; each block's ``base`` options are combined
with every combination of its ``vary`` lists (a cartesian product), options named as
``plan``/``harness run`` name them::

    name: ci
    run: {steps: 2, warmup: 1, save: true, timeout_s: 900}
    blocks:
      - base: {model: 7b-tiny, seq_len: 128, batch_size: 4}
        vary: {method: [lora, full], zero: [0, 3], nproc: [1, 2]}

Options: model, method, batch_size, nproc, seq_len, grad_accum, zero, offload, grad_ckpt,
attention, precision, optimizer, lora_rank, lora_alpha, lora_dropout, lora_targets,
modules_to_save, adapter_dtype. A spec already in the records file (same model, spec and
process count; measured or failed) is not run again, so an interrupted grid resumes where it
stopped; each record is appended whole (``append_measurement``) as soon as its run ends.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.api import spec_fields
from planner.catalog import data_dir, find_model
from planner.errors import PlannerError
from planner.estimate.resolve import make_spec, positive_int
from planner.schema.records import Measurement, append_measurement, read_measurements
from planner.schema.request import PlanRequest
from planner.schema.spec import TrainingSpec

#: The options a grid block may set: ``plan``'s (``PlanRequest``) that describe one training
#: setup on one machine, and ``nproc`` (processes = GPUs of the node).
OPTIONS = (
    "model", "method", "batch_size", "nproc", "seq_len", "grad_accum", "zero", "offload", "grad_ckpt", "attention", "precision",
    "optimizer", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "modules_to_save", "adapter_dtype",
)  # fmt: skip
assert set(OPTIONS) - {"nproc"} <= set(PlanRequest.model_fields)


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(default=2, ge=1)
    warmup: int = Field(default=1, ge=0)
    save: bool = True
    timeout_s: float = Field(default=1800, gt=0)


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: dict[str, Any] = Field(default_factory=dict)
    vary: dict[str, list[Any]] = Field(default_factory=dict)
    run: RunSettings | None = Field(default=None, description="This block's run settings, instead of the grid's.")


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    run: RunSettings = RunSettings()
    blocks: list[Block] = Field(min_length=1)


def grid_path(name_or_path: str) -> Path:
    """A grid by path, or by name from ``data/grids/`` (``ci``, ``cpu``, ``gpu``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") or p.exists():
        return p
    return data_dir() / "grids" / f"{name_or_path}.yaml"


def load_grid(name_or_path: str) -> Grid:
    path = grid_path(name_or_path)
    try:
        text = path.read_text()
    except OSError as exc:
        known = ", ".join(sorted(p.stem for p in (data_dir() / "grids").glob("*.yaml")))
        raise PlannerError(f"grid {name_or_path!r}: {exc.strerror or exc} ({path}); known grids: {known}") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise PlannerError(f"grid {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {str(exc).splitlines()[0]}") from None
    try:
        grid = Grid.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PlannerError(f"grid {path}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    for i, block in enumerate(grid.blocks):
        unknown = [k for k in {*block.base, *block.vary} if k not in OPTIONS]
        if unknown:
            raise PlannerError(f"grid {path}: block {i}: unknown option {sorted(unknown)[0]!r} (known: {', '.join(OPTIONS)})")
        if "model" not in block.base and "model" not in block.vary:
            raise PlannerError(f"grid {path}: block {i} names no model")
        try:
            expand(Grid(name=grid.name, blocks=[block]))
        except PlannerError as exc:  # a bad value: say where, in the grid's own option names
            msg = str(exc).replace("--zero-stage", "zero").replace("--", "")
            raise PlannerError(f"grid {path}: block {i}: {msg}") from None
    return grid


Job = tuple[str, TrainingSpec, int]  # catalog model name, spec, process count


#: What a grid block leaves out takes ``harness run``'s defaults (``harness run --help`` says
#: why they differ from ``plan``'s); everything else takes ``plan``'s (``PlanRequest``).
RUN_DEFAULTS: dict[str, Any] = {"batch_size": 4, "seq_len": 128, "zero": 2, "offload": "none"}


def _job(options: dict[str, Any]) -> Job:
    """A block's options as a ``PlanRequest`` (the grid's option names are ``plan``'s), then the
    spec ``plan`` would resolve for ``nproc`` GPUs of one node."""
    arch = find_model(str(options["model"]))
    nproc = int(options.get("nproc", 1))
    try:
        req = PlanRequest.model_validate({**RUN_DEFAULTS, **{k: v for k, v in options.items() if k != "nproc"}})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PlannerError(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    spec = make_spec(arch, spec_fields(req), req.method, nproc, positive_int(req.batch_size, "batch_size"))
    return arch.name, spec, nproc


def expand_with_settings(grid: Grid) -> list[tuple[Job, RunSettings]]:
    """Every spec of the grid with its run settings, in file order, without repeats."""
    jobs: list[tuple[Job, RunSettings]] = []
    seen: set[str] = set()
    for block in grid.blocks:
        names = list(block.vary)
        for values in itertools.product(*(block.vary[n] for n in names)):
            job = _job({**block.base, **dict(zip(names, values, strict=False))})
            if key(*job) not in seen:
                seen.add(key(*job))
                jobs.append((job, block.run or grid.run))
    return jobs


def expand(grid: Grid) -> list[Job]:
    """Every spec of the grid, in file order, without repeats."""
    return [job for job, _ in expand_with_settings(grid)]


def key(model: str, spec: TrainingSpec, nproc: int) -> str:
    return f"{model}|{nproc}|{spec.model_dump_json()}"


def record_key(m: Measurement) -> str:
    return key(m.model, m.spec, m.spec.world_size)


def run_grid(
    grid: Grid,
    out: Path,
    command: str,
    launcher: Callable[..., Any] | None = None,
    limit: int | None = None,
    retry_failed: bool = False,
    progress: Callable[[str], None] = print,
) -> int:
    """Run the grid's specs that ``out`` lacks, appending each record; returns how many ran. A
    recorded failure counts as done unless ``retry_failed`` (the newest record of a spec wins)."""
    from harness.run import RunOptions, run_record

    done = {record_key(m) for m in read_measurements(out) if m.result is not None or not retry_failed} if out.exists() else set()
    jobs = expand_with_settings(grid)
    made = 0
    for i, ((model, spec, nproc), rs) in enumerate(jobs, start=1):
        opts = RunOptions(steps=rs.steps, warmup=rs.warmup, save=rs.save, timeout_s=rs.timeout_s)
        if key(model, spec, nproc) in done:
            continue
        if limit is not None and made >= limit:
            break
        progress(f"[{i}/{len(jobs)}] {model} {spec.method} ZeRO-{spec.zero_stage} x{nproc} b{spec.micro_batch_size} ckpt={spec.grad_ckpt}")
        record = run_record(find_model(model), spec, opts, command=command, launcher=launcher)
        append_measurement(out, record)
        made += 1
        if record.error:
            progress(f"  failed (recorded): {record.error[:200]}")
    return made


def grid_records(grid: Grid, out: Path) -> list[Measurement]:
    """The records of ``out`` that belong to ``grid`` (the last one of each spec)."""
    wanted = {key(*j) for j in expand(grid)}
    latest: dict[str, Measurement] = {}
    for m in read_measurements(out) if out.exists() else []:
        if record_key(m) in wanted:
            latest[record_key(m)] = m
    return list(latest.values())
