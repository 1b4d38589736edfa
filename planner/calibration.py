"""Named coefficients of the model, loaded from ``data/calibration/*.json``.

Each coefficient says where its value comes from and whether it was fitted to our own
measurements (``calibrated``) or is a cited default. Plans report which is which.
"""

from __future__ import annotations

import json
from functools import cache

from pydantic import BaseModel, ConfigDict

from planner.catalog import data_dir
from planner.errors import PlannerError


class Coefficient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    unit: str
    source: str
    calibrated: bool = False


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    fitted: bool
    description: str = ""
    coefficients: dict[str, Coefficient]
    residuals: dict[str, float] | None = None

    def value(self, name: str) -> float:
        return self.coefficients[name].value

    def bytes(self, name: str) -> int:
        return int(self.coefficients[name].value)


#: Coefficients of the step-time model (planner/timing.py).
TIME_COEFFICIENTS = (
    "compute_efficiency_max",
    "matmul_efficiency_default",
    "compute_tokens_half",
    "nccl_bus_efficiency",
    "network_efficiency",
    "comm_overlap",
    "pcie_efficiency",
    "hbm_efficiency",
    "cpu_adam_elements_per_s",
    "zero3_fetch_s_per_module",
    "zero3_hook_s_per_module",
)
REQUIRED = (
    "cuda_context_bytes",
    "allocator_reserve_fraction",
    "host_process_bytes",
    "load_shard_bytes",
    "save_shard_bytes",
    *TIME_COEFFICIENTS,
)


@cache
def load_calibration(name: str = "default") -> Calibration:
    path = data_dir() / "calibration" / f"{name}.json"
    try:
        cal = Calibration(**json.loads(path.read_text()))
    except OSError:
        raise PlannerError(f"no calibration {name!r} in {path.parent}") from None
    except ValueError as exc:  # JSON syntax or schema
        raise PlannerError(f"calibration {path} is invalid: {str(exc).splitlines()[0]}") from None
    missing = [k for k in REQUIRED if k not in cal.coefficients]
    if missing and name != "default":
        # a calibration written before a coefficient existed: that coefficient's cited default
        base = load_calibration("default")
        cal = cal.model_copy(update={"coefficients": {**cal.coefficients, **{k: base.coefficients[k] for k in missing}}})
        missing = [k for k in REQUIRED if k not in cal.coefficients]
    if missing:
        raise PlannerError(f"calibration {name!r} lacks {', '.join(missing)}")
    return cal
