"""Many plans at once: ``compare`` (methods x hardware at the given micro batch and at its
largest), ``sweep`` (models x methods x hardware x micro batches) and ``cheapest`` (every priced
instance at 1..N nodes), as rows ranked by dollars per epoch. Nothing here prints; the
command line renders the rows (``planner/render``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from planner import catalog
from planner.catalog import calibration_for
from planner.errors import PlannerError
from planner.estimate.plan import build_plan, max_micro_batch
from planner.estimate.resolve import make_spec
from planner.schema.catalog import Architecture, Gpu, Instance
from planner.schema.plan import Plan
from planner.schema.spec import Method, TrainingSpec

METHODS: tuple[str, ...] = get_args(Method)


@dataclass(frozen=True)
class Job:
    """What every plan of a sweep shares: the spec fields, the micro batch(es), the dataset."""

    fields: dict[str, Any]
    batch: str
    dataset_tokens: int | None  # one epoch; None: the plan's default dataset
    epochs: float
    calibration: str


@dataclass(frozen=True)
class Row:
    model: str
    method: str
    hardware: str
    nodes: int
    micro_batch: int | None  # None: not even micro batch 1 fits
    plan: Plan | None

    @property
    def usd_per_epoch(self) -> float | None:
        return None if self.plan is None or not self.plan.memory.fits else self.plan.time_cost.usd_per_epoch

    @property
    def reason(self) -> str:
        if self.plan is None:
            return "micro batch 1 does not fit on the GPU"
        if not self.plan.memory.fits:
            return "runs out of " + " and ".join("GPU memory" if x == "gpu" else "host RAM" for x in self.plan.memory.limiting)
        return ""

    def as_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "model": self.model,
            "method": self.method,
            "hardware": self.hardware,
            "nodes": self.nodes,
            "micro_batch_size": self.micro_batch,
            "fits": bool(p and p.memory.fits),
            "reason": self.reason or None,
            "peak_bytes_per_gpu": p.memory.per_gpu.peak_bytes if p else None,
            "tokens_per_s": p.throughput.tokens_per_s if p else None,
            "seconds_per_epoch": p.time_cost.seconds_per_epoch if p else None,
            "usd_per_epoch": p.time_cost.usd_per_epoch if p else None,
            "usd_per_hour": p.time_cost.usd_per_hour if p else None,
            "max_micro_batch_size": p.max_micro_batch_size if p else 0,
        }


def _split(text: str | None, default: str, everything: tuple[str, ...], what: str) -> list[str]:
    words = [w.strip() for w in (text or default).split(",") if w.strip()]
    if words == ["all"]:
        return list(everything)
    if not words:
        raise PlannerError(f"empty list of {what}")
    return words


def batches(text: str) -> list[str]:
    """``8``, ``1,8,max``; each a positive whole number or ``max``."""
    out = [w.strip().lower() for w in text.split(",") if w.strip()]
    for w in out:
        if w != "max" and not (w.isdigit() and int(w) >= 1):
            raise PlannerError(f"--batch-size: {w!r} is neither a whole number >= 1 nor 'max'")
    if not out:
        raise PlannerError("--batch-size: empty list")
    return out


def plan_rows(job: Job, model: str, method: str, gpu: Gpu, inst: Instance | None, per_node: int, nodes: int) -> list[Row]:
    if method not in METHODS:
        raise PlannerError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    arch = catalog.find_model(model)
    cal = calibration_for(job.calibration, gpu.id)
    hardware = inst.id if inst else f"{per_node}x {gpu.id}"
    fields = {**job.fields, "nodes": nodes}
    rows = []
    for b in batches(job.batch):
        spec = make_spec(arch, fields, method, per_node, 1 if b == "max" else int(b))
        if b == "max":
            best = max_micro_batch(arch, spec, gpu, cal)
            if best == 0:
                rows.append(Row(arch.name, method, hardware, nodes, None, None))
                continue
            spec = spec.model_copy(update={"micro_batch_size": best})
        p = build_plan(arch, spec, gpu, inst, cal, dataset_tokens=job.dataset_tokens, epochs=job.epochs)
        rows.append(Row(arch.name, method, hardware, nodes, spec.micro_batch_size, p))
    return rows


def _rank(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r.usd_per_epoch is None, r.usd_per_epoch or 0.0, r.plan is None))


@dataclass(frozen=True)
class CompareRow:
    """One (hardware, method) of ``plan compare``: the plan at the given micro batch and at the
    largest that fits (None when not even 1 fits)."""

    plan: Plan
    plan_at_max_batch: Plan | None

    def as_dict(self) -> dict[str, Any]:
        """What ``plan compare --json`` prints for this row."""
        at_max = self.plan_at_max_batch
        return {"plan": self.plan.model_dump(mode="json"), "plan_at_max_batch": None if at_max is None else at_max.model_dump(mode="json")}


def compare_rows(
    arch: Architecture,
    spec: TrainingSpec,
    fields: dict[str, Any],
    gpu: str | None,
    gpus: int | None,
    instances: str | None,
    methods: str | None,
    calibration: str,
    tokens: int | None,
    epochs: float,
    storage: int | None,
    info: dict[str, Any] | None = None,
) -> list[CompareRow]:
    """``plan compare``: each (hardware, method) at the given micro batch and at its largest:
    ``instances`` (a comma list), else ``gpu`` x ``gpus``; ``methods`` a comma list."""
    wanted = [m.strip().lower() for m in (methods or "full,lora").split(",") if m.strip()]
    bad = [m for m in wanted if m not in METHODS]
    if bad or not wanted:
        raise PlannerError(f"--methods: unknown method {bad[0] if bad else ''!r} (choose from full, lora, qlora)")
    hardware: list[tuple[Instance | None, Gpu, int]]
    if instances:
        found = [catalog.find_instance(i.strip()) for i in instances.split(",") if i.strip()]
        hardware = [(inst, catalog.find_gpu(inst.gpu), inst.gpu_count) for inst in found]
    else:
        assert gpu is not None, "a compare names --instance(s) or --gpu (api refuses neither)"
        hardware = [(None, catalog.find_gpu(gpu), gpus or 1)]
    rows = []
    for inst, the_gpu, per_node in hardware:
        cal = calibration_for(calibration, the_gpu.id)
        for m in wanted:
            s = make_spec(arch, fields, m, per_node, spec.micro_batch_size)
            at_b = build_plan(arch, s, the_gpu, inst, cal, storage_bytes=storage, dataset_tokens=tokens, epochs=epochs)
            best = at_b.max_micro_batch_size
            at_max = (
                build_plan(arch, s.model_copy(update={"micro_batch_size": best}), the_gpu, inst, cal, dataset_tokens=tokens, epochs=epochs)
                if best >= 1
                else None
            )
            if info:
                at_b = at_b.model_copy(update=info)
                at_max = at_max.model_copy(update=info) if at_max is not None else None
            rows.append(CompareRow(at_b, at_max))
    return rows


def sweep_rows(
    job: Job,
    models: str | None,
    methods: str | None,
    instances: str | None,
    gpu: str | None,
    gpus: int | None,
) -> list[Row]:
    """``plan sweep``'s rows, ranked by dollars per epoch (what does not fit last)."""
    if not models:
        raise PlannerError("missing --model (a comma list, or all)")
    names = _split(models, "", tuple(a.name for a in catalog.architectures()), "models")
    wanted = _split(methods, "full,lora", METHODS, "methods")
    hardware: list[tuple[Gpu, Instance | None, int]]
    if instances:
        priced = tuple(i.id for i in catalog.instances() if i.usd_per_hour is not None)
        found = [catalog.find_instance(i) for i in _split(instances, "", priced, "instances")]
        hardware = [(catalog.find_gpu(i.gpu), i, i.gpu_count) for i in found]
    elif gpu:
        hardware = [(catalog.find_gpu(gpu), None, gpus or 1)]
    else:
        raise PlannerError("missing hardware: give --instance A,B (or all) or --gpu NAME [--gpus N]")
    nodes = int(job.fields["nodes"])
    rows = [r for m in names for meth in wanted for g, inst, n in hardware for r in plan_rows(job, m, meth, g, inst, n, nodes)]
    return _rank(rows)


def cheapest_rows(job: Job, model: str | None, method: str, max_nodes: int, gpu: str | None = None) -> list[Row]:
    """Every priced catalog instance (with ``gpu``: of that GPU) at 1..max_nodes nodes, ranked;
    the first row is the cheapest that fits (none fits: ``PlannerError``)."""
    if not model:
        raise PlannerError("missing --model (e.g. --model 70b)")
    only = catalog.find_gpu(gpu).id if gpu else None
    rows = []
    for inst in catalog.instances():
        if inst.usd_per_hour is None or (only is not None and inst.gpu != only):
            continue
        g = catalog.find_gpu(inst.gpu)
        if str(job.fields["precision"]) in ("bf16-mixed", "amp-bf16", "bf16") and "bf16" not in g.peak_flops_per_s:
            continue  # no bf16 on this GPU (V100, T4): not a candidate for a bf16 job
        for n in range(1, max_nodes + 1):
            rows.extend(plan_rows(job, model, method, g, inst, inst.gpu_count, n))
    ranked = _rank(rows)
    if not ranked or ranked[0].usd_per_epoch is None:
        raise PlannerError(f"no catalog instance (up to {max_nodes} node(s)) fits this job; try --max-nodes, --offload or QLoRA")
    return ranked
