"""``harness calibrate GRID``: run a grid (here, or on a Ray cluster), then fit and write the
calibration the planner loads.

1. The grid's specs that the records file lacks are run one after another (``harness.grid``),
   each record appended as soon as its run ends: a failure is a record with its error, an
   interrupted grid resumes where it stopped.
2. The grid's records (and, with ``published``, the published throughput points) are fitted
   by ``planner.calibration.calibrate.fit_calibration`` (pure Python), and the calibration is written with
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
from planner.calibration.calibrate import fit_calibration, gpu_of_device, on_gpu, published_throughput_points
from planner.catalog import data_dir, load_calibration
from planner.errors import PlannerError
from planner.schema.calibration import Calibration
from planner.schema.records import Measurement, RunResult, read_measurements


def device_of(records: list[Measurement]) -> str:
    """``cpu``, or the catalog name of the GPU the runs were measured on."""
    runs = [m.result for m in records if isinstance(m.result, RunResult)]
    gpu_runs = [r for r in runs if on_gpu(r)]
    gpus = {g.id if g is not None else r.device for r in gpu_runs for g in [gpu_of_device(r.device)]}
    if len(gpus) > 1:
        raise PlannerError(f"the records come from several GPUs ({', '.join(sorted(gpus))}): calibrate one device at a time")
    if gpu_runs and len(gpu_runs) < len(runs):
        raise PlannerError("the records mix GPU and CPU runs: calibrate one device at a time")
    if gpus and gpu_of_device(gpu_runs[0].device) is None:
        raise PlannerError(f"GPU {gpu_runs[0].device!r} is not in the catalog (data/gpus.json): add it to calibrate for it")
    return gpus.pop() if gpus else "cpu"


def check_calibration_out(path: Path) -> None:
    """A calibration can be written there: a file (not a folder) in an existing, writable folder."""
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise PlannerError(f"--calibration-out {path}: give a file in an existing, writable folder")


def check_replace(path: Path, record_files: set[str], force: bool) -> None:
    """Refuse to replace a calibration fitted from other record files (unless ``force``)."""
    if force or not path.exists():
        return
    try:
        theirs = set((json.loads(path.read_text()).get("provenance") or {}).get("records") or {})
    except (OSError, ValueError, AttributeError):
        theirs = set()
    root = data_dir().parent  # a relative path in a committed calibration is the repository's

    def resolved(paths: set[str], base: Path) -> set[Path]:
        return {(Path(p) if Path(p).is_absolute() else base / p).resolve() for p in paths}

    if theirs and resolved(theirs, root) != resolved(record_files, root) and resolved(theirs, root) != resolved(record_files, Path.cwd()):
        raise PlannerError(
            f"{path} was fitted from {', '.join(sorted(theirs))}, not {', '.join(sorted(record_files))}: "
            "give --calibration-out for a new file, or --force to replace it"
        )


def write_calibration(cal: Calibration, path: Path, force: bool = False) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one. A
    calibration fitted from other record files is not replaced unless ``force``."""
    check_replace(path, set(cal.provenance.records) if cal.provenance else set(), force)
    check_calibration_out(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(json.dumps(cal.model_dump(mode="json", exclude_none=False), indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise PlannerError(f"cannot write the calibration to {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


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
    retry_failed: bool = False,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> tuple[Calibration, Path, list[Measurement]]:
    """Run what is missing, fit, write; returns the calibration, where it went and its records."""
    if not fit_only:  # where the calibration will go, checked before hours of runs, not after
        target = calibration_out or data_dir() / "calibration" / f"{device_hint()}.json"
        check_calibration_out(target)
        check_replace(target, {str(out)}, force)
        launcher = launcher_for(ray_address)
        made = run_grid(grid, out, command, launcher=launcher, limit=limit, retry_failed=retry_failed, progress=progress)
        progress(f"{made} run(s) made; records in {out}")
    records = grid_records(grid, out)
    why = f"no measured runs of grid {grid.name!r} in {out} (run it first, or see the recorded errors)"
    cal, path = _fit_and_write(records, why, out, command, calibration_out, published, force)
    return cal, path, records


def device_hint() -> str:
    """The device the runs made here will be measured on (to check where the calibration goes)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    gpu = gpu_of_device(torch.cuda.get_device_name())
    return gpu.id if gpu is not None else "cpu"


def fit_records(
    path: Path, command: str, calibration_out: Path | None = None, published: bool = False, force: bool = False
) -> tuple[Calibration, Path, list[Measurement]]:
    """Fit every run record of one records file (the GPU script's output, say)."""
    if not path.is_file():
        raise PlannerError(f"no records file {path}")
    records = [m for m in read_measurements(path) if m.kind == "run"]
    why = f"no measured runs in {path} (every run record holds an error, or there are none)"
    cal, out = _fit_and_write(records, why, path, command, calibration_out, published, force)
    return cal, out, records


def _fit_and_write(
    records: list[Measurement], why_none: str, out: Path, command: str, calibration_out: Path | None, published: bool, force: bool
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
    write_calibration(cal, path, force)
    return cal, path
