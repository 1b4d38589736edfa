"""Named coefficients of the model, as ``data/calibration/*.json`` holds them (loaded by
``planner.catalog.load_calibration``).

Each coefficient says where its value comes from and whether it was fitted to our own
measurements (``calibrated``) or is a cited default. Plans report which is which.
"""

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Coefficient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    unit: str
    source: str
    calibrated: bool = False


class Residual(BaseModel):
    """How far the planner, with these coefficients, is from the measurements of one quantity:
    relative errors (predicted - measured) / measured, their count, median, 90th percentile and
    worst absolute value, and the signed median (a bias)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(ge=0)
    median_rel: float = Field(ge=0)
    p90_rel: float = Field(ge=0)
    max_rel: float = Field(ge=0)
    bias_rel: float = 0.0
    source: str = Field(default="", description="Which records: e.g. 'data/measurements/run/cpu.jsonl (48 runs)'.")

    @property
    def band_rel(self) -> float:
        """The error band a plan shows: the 90th percentile, or the worst case below 10 records."""
        return self.p90_rel if self.n >= 10 else self.max_rel


class Provenance(BaseModel):
    """Where a fitted calibration comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date: str
    command: str
    records: dict[str, int] = Field(description="Record file -> how many of its records the fit used.")
    versions: dict[str, str] = Field(default_factory=dict, description="Package versions of the measured runs.")
    hosts: list[str] = Field(default_factory=list)

    @property
    def n_records(self) -> int:
        return sum(self.records.values())


#: Residual keys a plan turns into error bands.
PEAK_RESIDUAL = "memory.peak_bytes"
THROUGHPUT_RESIDUAL = "throughput.tokens_per_s"


#: The calibration file format. Files written before the field existed are version 1 (their
#: bare-number residuals are read as residuals of unknown count, see ``_old_residuals``).
CALIBRATION_SCHEMA_VERSION = 1


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = CALIBRATION_SCHEMA_VERSION
    id: str
    fitted: bool
    description: str = ""
    device: str | None = Field(default=None, description="The GPU (catalog name) or 'cpu' these coefficients were fitted on.")
    coefficients: dict[str, Coefficient]
    residuals: dict[str, Residual] | None = None
    provenance: Provenance | None = None

    @field_validator("residuals", mode="before")
    @classmethod
    def _old_residuals(cls, value: object) -> object:
        """Before 2026-11-28 residuals were bare numbers (relative errors); read one as a
        residual of unknown count (which carries no error band)."""
        if isinstance(value, dict):
            return {
                k: {"n": 0, "median_rel": abs(v), "p90_rel": abs(v), "max_rel": abs(v)} if isinstance(v, int | float) else v
                for k, v in value.items()
            }
        return value

    @property
    def n_records(self) -> int:
        return self.provenance.n_records if self.provenance else 0

    def band(self, key: str) -> float | None:
        r = (self.residuals or {}).get(key)
        return r.band_rel if r is not None and r.n else None

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
    "optimizer_scratch_states",
    "optimizer_per_tensor_step",
    "dropout_mask_full_width",
    *TIME_COEFFICIENTS,
)
