"""``harness calibrate GRID``: run a grid (here, or on a Ray cluster), then fit and write the
calibration the planner loads.

1. The grid's specs that the records file lacks are run one after another (``harness.grid``),
   each record appended as soon as its run ends: a failure is a record with its error, an
   interrupted grid resumes where it stopped.
2. The grid's records (and, with ``published``, the published throughput points) are fitted
   by ``planner.calibrate.fit_calibration`` (pure Python), and the calibration is written with
   its provenance and residuals, atomically, to ``data/calibration/<device>.json`` by default.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.grid import Grid, grid_records, run_grid
from planner.calibrate import fit_calibration, gpu_of_device, published_throughput_points
from planner.calibration import Calibration, load_calibration
from planner.catalog import data_dir
from planner.errors import PlannerError
from planner.measurement import Measurement, RunResult, read_measurements


def device_of(records: list[Measurement]) -> str:
    """``cpu``, or the catalog name of the GPU the runs were measured on."""
    devices = {m.result.device for m in records if isinstance(m.result, RunResult)}
    gpus = {g.id for g in (gpu_of_device(d) for d in devices if d.lower().startswith("nvidia")) if g is not None}
    if len(gpus) > 1:
        raise PlannerError(f"the records come from several GPUs ({', '.join(sorted(gpus))}): calibrate one device at a time")
    return gpus.pop() if gpus else "cpu"


def write_calibration(cal: Calibration, path: Path) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cal.model_dump(mode="json", exclude_none=False), indent=2) + "\n")
    os.replace(tmp, path)


def launcher_for(ray_address: str | None) -> Callable[..., Any] | None:
    if ray_address is None:
        return None
    try:
        from harness.ray_run import launch_ray
    except ImportError as exc:
        raise PlannerError(f"--ray-address needs Ray Train: pip install 'ray[train]' ({exc})") from None
    return functools.partial(launch_ray, address=ray_address)


def calibrate(
    grid: Grid,
    out: Path,
    command: str,
    calibration_out: Path | None = None,
    ray_address: str | None = None,
    published: bool = False,
    limit: int | None = None,
    fit_only: bool = False,
    progress: Callable[[str], None] = print,
) -> tuple[Calibration, Path, list[Measurement]]:
    """Run what is missing, fit, write; returns the calibration, where it went and its records."""
    if not fit_only:
        made = run_grid(grid, out, command, launcher=launcher_for(ray_address), limit=limit, progress=progress)
        progress(f"{made} run(s) made; records in {out}")
    records = grid_records(grid, out)
    why = f"no measured runs of grid {grid.name!r} in {out} (run it first, or see the recorded errors)"
    cal, path = _fit_and_write(records, why, out, command, calibration_out, published)
    return cal, path, records


def fit_records(
    path: Path, command: str, calibration_out: Path | None = None, published: bool = False
) -> tuple[Calibration, Path, list[Measurement]]:
    """Fit every run record of one records file (the GPU script's output, say)."""
    if not path.is_file():
        raise PlannerError(f"no records file {path}")
    records = [m for m in read_measurements(path) if m.kind == "run"]
    why = f"no measured runs in {path} (every run record holds an error, or there are none)"
    cal, out = _fit_and_write(records, why, path, command, calibration_out, published)
    return cal, out, records


def _fit_and_write(
    records: list[Measurement], why_none: str, out: Path, command: str, calibration_out: Path | None, published: bool
) -> tuple[Calibration, Path]:
    measured = [m for m in records if m.result is not None]
    if not measured:
        raise PlannerError(why_none)
    device = device_of(measured)
    cal = fit_calibration(
        measured,
        load_calibration("default"),
        device=device,
        command=command,
        record_files={str(out): len(measured)},
        throughput_points=published_throughput_points() if published else (),
    )
    path = calibration_out or data_dir() / "calibration" / f"{device}.json"
    write_calibration(cal, path)
    return cal, path
