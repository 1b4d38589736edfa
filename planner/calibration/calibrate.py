"""Fit the planner's coefficients to measured runs and published points; measure what is left.

``fit_calibration`` takes ``harness run`` records (and, for throughput, published points),
fits the coefficients the records can tell apart (``planner.calibration.fit`` says which, from what) and
returns a ``Calibration`` with provenance and residuals: per quantity, the planner's relative
errors with the fitted coefficients (n, median, 90th percentile, worst). ``residuals`` does
the second half alone, for any calibration. Pure Python: no torch, so the planner can refit
and check itself anywhere.

Quantities (residual keys):

- ``memory.peak_bytes``: the planner's peak allocated bytes vs the run's peak live tensor bytes
  (rank 0, over forward, backward and the optimizer step);
- ``memory.<category>_bytes``: each category at each phase's peak, where it is at least
  ``agreement.RUN_CATEGORY_FLOOR`` of that phase (smaller ones say nothing about the peak);
- ``host.rss_bytes``: ``host_process_bytes + (1 + allocator_reserve_fraction) * peak`` vs the
  process's peak RSS (CPU runs);
- ``checkpoint.pretrained_bytes``: adapter (or 16-bit model) tensor bytes on disk;
- ``throughput.tokens_per_s``: tokens/s per GPU of GPU runs and published points.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from planner.calibration import fit
from planner.calibration.agreement import RUN_CATEGORY_FLOOR, gpu_of_device, on_gpu
from planner.catalog import find_model
from planner.errors import PlannerError
from planner.estimate.memory import gpu_memory
from planner.schema.calibration import PEAK_RESIDUAL, THROUGHPUT_RESIDUAL, Calibration, Coefficient, Provenance, Residual
from planner.schema.memory import CATEGORIES
from planner.schema.records import Measurement, RunResult


@dataclass(frozen=True)
class ThroughputPoint:
    """One measured tokens/s per GPU and how the planner predicts it under a calibration."""

    label: str
    measured: float
    predict: Callable[[Calibration], float]
    tokens_per_micro_step: int = 0


def _runs(records: Iterable[Measurement]) -> list[tuple[Measurement, RunResult]]:
    return [(m, m.result) for m in records if isinstance(m.result, RunResult)]


def with_values(cal: Calibration, values: dict[str, float], source: str = "", calibrated: bool = True) -> Calibration:
    coefficients = dict(cal.coefficients)
    for k, v in values.items():
        old = coefficients[k]
        coefficients[k] = Coefficient(value=v, unit=old.unit, source=source or old.source, calibrated=calibrated)
    return cal.model_copy(update={"coefficients": coefficients})


def solve_monotone(f: Callable[[float], float], target: float, lo: float, hi: float, iters: int = 30) -> float:
    """The x in [lo, hi] where the non-decreasing ``f`` crosses ``target`` (bisection; clamped)."""
    if f(lo) >= target:
        return lo
    if f(hi) <= target:
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


# -- memory ------------------------------------------------------------------------------------


def fit_optimizer_scratch(records: Sequence[Measurement], cal: Calibration) -> tuple[float, int] | None:
    """The optimizer step's scratch in state-sized tensors: per run (optimizer on the device,
    AdamW, ZeRO 1-3 whose step the planner composes from DeepSpeed's own code), the value that
    makes the planner's temporaries at the step equal the measured ones; the median of those."""
    per_run: list[float] = []
    for m, r in _runs(records):
        s = m.spec
        step = r.phases.get("optimizer_step")
        if step is None or s.offload != "none" or s.optimizer != "adamw" or s.zero_stage == 0:
            continue
        arch = find_model(m.model)

        def temps(x: float, arch=arch, s=s) -> float:  # type: ignore[no-untyped-def]
            return gpu_memory(arch, s, with_values(cal, {"optimizer_scratch_states": x})).phases["optimizer_step"].temporaries

        if temps(4.0) == temps(0.0):
            continue
        x = solve_monotone(temps, step.at_peak_bytes.temporaries, 0.0, 4.0)
        if x in (0.0, 4.0) or temps(x + 0.05) == temps(x):
            continue  # at a clamp, or where another term (the flat 16-bit copy) hides the scratch
        per_run.append(x)
    return (fit.median(per_run), len(per_run)) if per_run else None


def _better_switch(
    name: str, runs: list[tuple[Measurement, RunResult]], cal: Calibration, phases: tuple[str, ...]
) -> tuple[float, int] | None:
    """A 0/1 coefficient set to whichever value predicts the runs' phase peaks better (mean
    |relative error| over the given phases: runs the switch does not touch must not outvote
    those it does)."""
    if not runs:
        return None

    def err(v: float) -> float | None:
        c = with_values(cal, {name: v})
        errors = []
        for m, r in runs:
            pred = gpu_memory(find_model(m.model), m.spec, c)
            errors += [abs(fit.rel_error(pred.phases[p].total, r.phases[p].peak_bytes)) for p in phases if p in r.phases]
        return sum(errors) / len(errors) if errors else None

    off, on = err(0.0), err(1.0)
    if off is None or on is None or off == on:  # the runs cannot tell the two apart
        return None
    return (1.0 if on < off else 0.0), len(runs)


def fit_per_tensor_step(records: Sequence[Measurement], cal: Calibration) -> tuple[float, int] | None:
    """``optimizer_per_tensor_step`` (0 or 1): which of DeepSpeed's two no-ZeRO wrappers the
    ZeRO-0 runs used, by which predicts their optimizer-step peaks better."""
    zero0 = [(m, r) for m, r in _runs(records) if m.spec.zero_stage == 0 and m.spec.offload == "none"]
    return _better_switch("optimizer_per_tensor_step", zero0, cal, ("optimizer_step",))


def fit_dropout_mask(records: Sequence[Measurement], cal: Calibration) -> tuple[float, int] | None:
    """``dropout_mask_full_width`` (0 or 1): whether the LoRA runs with dropout keep a bool mask
    or a full-width noise tensor, by which predicts their forward and backward peaks better."""
    lora = [(m, r) for m, r in _runs(records) if m.spec.method != "full" and m.spec.lora_dropout > 0]
    return _better_switch("dropout_mask_full_width", lora, cal, ("forward", "backward"))


def fit_host(records: Sequence[Measurement], cal: Calibration) -> tuple[float, float, int] | None:
    """``(allocator_reserve_fraction, host_process_bytes, n)`` from CPU runs: the Theil-Sen line
    of each rank-0 process's peak RSS over its peak live tensor bytes."""
    pts = [(r.peak_bytes, r.max_rss_bytes) for _, r in _runs(records) if not on_gpu(r)]
    if len({x for x, _ in pts}) < 2:
        return None
    slope, intercept = fit.theil_sen([float(x) for x, _ in pts], [float(y) for _, y in pts])
    return max(slope - 1.0, 0.0), max(intercept, 0.0), len(pts)


def fit_cuda_reserve(records: Sequence[Measurement]) -> tuple[float, int] | None:
    """``allocator_reserve_fraction`` on CUDA: the median of max_reserved / max_allocated - 1."""
    ratios = [
        ph.cuda_max_reserved_bytes / ph.cuda_max_allocated_bytes - 1.0
        for _, r in _runs(records)
        for ph in r.phases.values()
        if ph.cuda_max_reserved_bytes and ph.cuda_max_allocated_bytes
    ]
    return (max(fit.median(ratios), 0.0), len(ratios)) if ratios else None


def fit_cuda_context(records: Sequence[Measurement]) -> tuple[float, int] | None:
    """``cuda_context_bytes``: what the device holds beyond the caching allocator's reserve (the
    CUDA context, cuBLAS/NCCL workspaces), the median of ``device_used - reserved`` at the end of
    each phase of GPU runs."""
    extra = [
        ph.cuda_device_used_bytes - ph.cuda_reserved_at_end_bytes
        for _, r in _runs(records)
        for ph in r.phases.values()
        if ph.cuda_device_used_bytes is not None and ph.cuda_reserved_at_end_bytes is not None
    ]
    return (max(fit.median(extra), 0.0), len(extra)) if extra else None


def memory_errors(records: Sequence[Measurement], cal: Calibration) -> dict[str, list[float]]:
    """Relative errors per memory quantity (see the module docstring)."""
    from planner.formulas.checkpoint import adapter_bytes, merged_model_bytes

    out: dict[str, list[float]] = {}

    def add(key: str, predicted: float, measured: float) -> None:
        out.setdefault(key, []).append(fit.rel_error(predicted, measured))

    for m, r in _runs(records):
        arch = find_model(m.model)
        pred = gpu_memory(arch, m.spec, cal)
        peak_pred = max(pred.phases[p].total for p in r.phases)
        add(PEAK_RESIDUAL, peak_pred, r.peak_bytes)
        for phase, meas in r.phases.items():
            p = pred.phases[phase]
            for c in CATEGORIES:
                mv = getattr(meas.at_peak_bytes, c)
                if mv >= RUN_CATEGORY_FLOOR * meas.peak_bytes:
                    add(f"memory.{c}_bytes", getattr(p, c), mv)
        if not on_gpu(r):
            rss = cal.value("host_process_bytes") + (1 + cal.value("allocator_reserve_fraction")) * peak_pred
            add("host.rss_bytes", rss, r.max_rss_bytes)
        if r.checkpoint is not None:
            want = adapter_bytes(arch, m.spec).total if m.spec.method != "full" else merged_model_bytes(arch, m.spec)
            add("checkpoint.pretrained_bytes", want, r.checkpoint.pretrained_tensor_bytes)
    return out


# -- throughput ---------------------------------------------------------------------------------


def run_throughput_points(records: Sequence[Measurement]) -> list[ThroughputPoint]:
    """GPU runs as throughput points (CPU tokens/s on a shared machine says nothing: skipped)."""
    from planner.calibration.published import planner_tokens_per_s_per_gpu

    pts = []
    for m, r in _runs(records):
        gpu = gpu_of_device(r.device)
        if gpu is None or r.tokens_per_s <= 0:
            continue
        arch = find_model(m.model)

        def predict(cal: Calibration, arch=arch, spec=m.spec, gpu=gpu) -> float:  # type: ignore[no-untyped-def]
            return planner_tokens_per_s_per_gpu(arch, spec, gpu, None, cal)

        label = f"run {m.model} {m.spec.method} b{m.spec.micro_batch_size}"
        pts.append(ThroughputPoint(label, r.tokens_per_s / r.world_size, predict, m.spec.tokens_per_micro_batch))
    return pts


def published_throughput_points() -> list[ThroughputPoint]:
    """The published records that give tokens/s per GPU (``data/measurements/published/``)."""
    from planner.calibration.published import compare_published, published_measurements
    from planner.schema.records import PublishedResult

    def predict(cal: Calibration, m: Measurement) -> float:
        return next(c.predicted for c in compare_published(m, cal) if c.what == "tokens_per_s_per_gpu")

    return [
        ThroughputPoint(
            m.result.source_id,
            m.result.tokens_per_s_per_gpu,
            lambda cal, m=m: predict(cal, m),  # type: ignore[misc]
            m.spec.tokens_per_micro_batch,
        )
        for m in published_measurements()
        if isinstance(m.result, PublishedResult) and m.result.tokens_per_s_per_gpu is not None
    ]


def published_memory_errors(cal: Calibration) -> list[float]:
    """Peak memory per GPU of the published records that give it (planner vs publication)."""
    from planner.calibration.published import compare_published, published_measurements
    from planner.schema.records import PublishedResult

    return [
        c.error_rel
        for m in published_measurements()
        if isinstance(m.result, PublishedResult) and m.result.peak_memory_bytes_per_gpu is not None
        for c in compare_published(m, cal)
        if c.what == "peak_memory_bytes_per_gpu"
    ]


#: ``compute_tokens_half`` is fitted only from points that reach below this many tokens per
#: micro-step (at least ``HALF_MIN_POINTS`` of them): above it the efficiency curve is flat and
#: its knee cannot be told from the plateau, so a fit there would trade GPU-to-GPU differences
#: for a knee nobody measured.
HALF_TOKENS_BELOW = 2048
HALF_MIN_POINTS = 3


def fit_throughput(
    points: Sequence[ThroughputPoint], cal: Calibration, tokens_per_micro_step: Sequence[int] = ()
) -> tuple[float, float | None]:
    """``(compute_efficiency_max, compute_tokens_half or None)`` minimising the median |log
    error|; the knee only when the points reach small micro-steps (``HALF_TOKENS_BELOW``)."""
    if len(points) < 3:
        raise PlannerError(f"a throughput fit needs at least 3 points (got {len(points)})")
    with_knee = sum(1 for t in tokens_per_micro_step if t < HALF_TOKENS_BELOW) >= HALF_MIN_POINTS
    half0 = cal.value("compute_tokens_half")

    def loss(emax: float, half: float = half0) -> float:
        c = with_values(cal, {"compute_efficiency_max": emax, "compute_tokens_half": half})
        return fit.median_abs_log_error([p.predict(c) for p in points], [p.measured for p in points])

    emax_grid = [0.3 + 0.05 * i for i in range(15)]
    if with_knee:
        emax, half = fit.grid_search(loss, [emax_grid, fit.geometric_grid(16, 8192, 10)], refine=2)
        return emax, half
    (emax,) = fit.grid_search(loss, [emax_grid], refine=3)
    return emax, None


def throughput_errors(points: Sequence[ThroughputPoint], cal: Calibration) -> list[float]:
    return [fit.rel_error(p.predict(cal), p.measured) for p in points]


# -- the whole calibration ------------------------------------------------------------------------


def _residual(s: fit.Summary, source: str) -> Residual:
    return Residual(n=s.n, median_rel=s.median_rel, p90_rel=s.p90_rel, max_rel=s.max_rel, bias_rel=s.bias_rel, source=source)


def residuals(
    records: Sequence[Measurement], cal: Calibration, throughput_points: Sequence[ThroughputPoint] = (), source: str = ""
) -> dict[str, Residual]:
    errors = memory_errors(records, cal)
    if throughput_points:
        errors[THROUGHPUT_RESIDUAL] = throughput_errors(throughput_points, cal)
    out = {}
    for key, errs in sorted(errors.items()):
        s = fit.summarize(errs)
        out[key] = _residual(s, source)
    return out


def fit_calibration(
    records: Sequence[Measurement],
    base: Calibration,
    *,
    device: str,
    command: str,
    record_files: dict[str, int],
    throughput_points: Sequence[ThroughputPoint] = (),
    date: str | None = None,
) -> Calibration:
    """Fit what the records can tell apart; everything else keeps ``base``'s value and source."""
    runs = _runs(records)
    if not runs:
        raise PlannerError("no measured runs to fit (every record holds an error, or none were given)")
    when = date or dt.date.today().isoformat()
    where = ", ".join(f"{f} ({n})" for f, n in record_files.items())
    cal = base
    memory_fits = (
        ("optimizer_scratch_states", fit_optimizer_scratch, "median over {n} runs' optimizer-step temporaries"),
        ("optimizer_per_tensor_step", fit_per_tensor_step, "the wrapper that predicts the optimizer-step peaks of {n} ZeRO-0 runs better"),
        (
            "dropout_mask_full_width",
            fit_dropout_mask,
            "the dropout mask that predicts the forward and backward peaks of {n} LoRA runs better",
        ),
    )
    for name, fitter, how in memory_fits:
        got = fitter(records, cal)
        if got is not None:
            v, n = got
            cal = with_values(cal, {name: round(v, 3)}, f"Fitted {when} by harness calibrate: {how.format(n=n)} ({where}).")
    cuda_runs = [m for m, r in runs if on_gpu(r)]
    if cuda_runs:
        context = fit_cuda_context(cuda_runs)
        if context is not None:
            v, n = context
            cal = with_values(
                cal,
                {"cuda_context_bytes": float(int(v))},
                f"Fitted {when}: median device used - reserved over {n} phases of GPU runs ({where}).",
            )
        reserve = fit_cuda_reserve(cuda_runs)
        if reserve is not None:
            v, n = reserve
            cal = with_values(
                cal,
                {"allocator_reserve_fraction": round(v, 4)},
                f"Fitted {when}: median max_reserved/max_allocated - 1 over {n} phases of GPU runs ({where}).",
            )
    else:
        host = fit_host(records, cal)
        if host is not None:
            frac, proc, n = host
            src = f"Fitted {when}: Theil-Sen line of peak RSS over peak tensor bytes, {n} CPU runs ({where})."
            cal = with_values(cal, {"allocator_reserve_fraction": round(frac, 4), "host_process_bytes": float(int(proc))}, src)
    points = [*run_throughput_points(records), *throughput_points]
    if len(points) >= 3:
        emax, half = fit_throughput(points, cal, [p.tokens_per_micro_step for p in points])
        src = f"Fitted {when}: median |log error| over {len(points)} tokens/s points (GPU runs and published, {where})."
        values = {"compute_efficiency_max": round(emax, 4), **({} if half is None else {"compute_tokens_half": round(half, 1)})}
        cal = with_values(cal, values, src)
    versions: dict[str, str] = {}
    for m, _ in runs:
        versions.update(m.versions)
    provenance = Provenance(date=when, command=command, records=record_files, versions=versions, hosts=sorted({m.host for m, _ in runs}))
    return cal.model_copy(
        update={
            "id": f"{device}-{when}",
            "fitted": True,
            "device": device,
            "description": f"Fitted by harness calibrate on {device}: {where}.",
            "residuals": residuals(records, cal, points, source=where),
            "provenance": provenance,
        }
    )


def trace_peak_errors(records: Sequence[Measurement], cal: Calibration) -> list[float]:
    """Peak memory errors on ``harness trace`` records (full-size models, one GPU's live tensors
    without DeepSpeed): the evidence behind the cited defaults' memory band."""
    from planner.calibration.agreement import compare
    from planner.schema.records import TraceResult

    out = []
    for m in records:
        if isinstance(m.result, TraceResult) and len(m.result.steps) >= 2:
            row = next(r for r in compare(m, cal) if r.what == "peak")
            out.append(row.error_rel)
    return out


def default_residuals(
    cal: Calibration,
    trace_dir: str = "data/measurements/trace",
    run_file: str = "data/measurements/run/cpu.jsonl",
    run_calibration: str = "cpu",
) -> dict[str, Residual]:
    """Residuals of GPU plans under cited defaults. Peak memory: the full-size traces (live
    tensors of the real training code, no DeepSpeed) and the real DeepSpeed runs on CPU, the
    latter evaluated with the coefficients fitted to their device (the optimizer's scratch and
    the allocator differ between CPU and CUDA; what the model gets wrong in DeepSpeed's
    structure carries over). Tokens/s: the published points."""
    from pathlib import Path

    from planner.catalog import load_calibration
    from planner.schema.records import read_measurements

    traces = trace_peak_errors(read_measurements(Path(trace_dir)), cal)
    runs = memory_errors(read_measurements(Path(run_file)), load_calibration(run_calibration))[PEAK_RESIDUAL]
    published = published_memory_errors(cal)
    peak = fit.summarize(traces + runs + published)
    thr = fit.summarize(throughput_errors(published_throughput_points(), cal))

    return {
        PEAK_RESIDUAL: _residual(
            peak,
            f"{len(traces)} full-size traces ({trace_dir}), {len(runs)} DeepSpeed runs on CPU ({run_file}), "
            f"{len(published)} published peak(s)",
        ),
        THROUGHPUT_RESIDUAL: _residual(thr, "published runs (data/measurements/published/points.jsonl)"),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m planner.calibration residuals default``: recompute a calibration file's residuals."""
    import argparse
    import json

    from planner.catalog import calibration_path

    parser = argparse.ArgumentParser(prog="python -m planner.calibration residuals", description=main.__doc__)
    parser.add_argument("--residuals", required=True, help="calibration name or path whose residuals to recompute (default)")
    args = parser.parse_args(argv)
    path = calibration_path(args.residuals)
    raw = json.loads(path.read_text())
    cal = Calibration.model_validate(raw)
    raw["residuals"] = {k: v.model_dump() for k, v in default_residuals(cal).items()}
    path.write_text(json.dumps(raw, indent=2) + "\n")
    for k, v in raw["residuals"].items():
        print(f"{k}: n={v['n']} median {v['median_rel']:.1%} p90 {v['p90_rel']:.1%} worst {v['max_rel']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
