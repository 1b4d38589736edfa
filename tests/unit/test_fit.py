"""The fit, by round trip: records synthesized from known coefficients plus noise give back
those coefficients (issue 5). Pure Python: no torch."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from planner.calibration import fit
from planner.calibration.calibrate import (
    ThroughputPoint,
    fit_calibration,
    fit_host,
    fit_optimizer_scratch,
    fit_throughput,
    residuals,
    with_values,
)
from planner.catalog import find_gpu, find_model, load_calibration
from planner.estimate.memory import gpu_memory, param_counts
from planner.estimate.resolve import make_spec
from planner.estimate.timing import step_timing
from planner.schema.records import Measurement, RunResult, read_measurements

RUNS = Path(__file__).resolve().parents[2] / "data" / "measurements" / "run" / "cpu.jsonl"


def test_estimators_on_hand_worked_numbers() -> None:
    assert fit.median([3, 1, 2]) == 2
    assert fit.median([4, 1, 2, 3]) == 2.5
    assert fit.quantile([0, 10], 0.9) == pytest.approx(9.0)
    s = fit.summarize([0.1, -0.2, 0.05])
    assert (s.n, s.median_rel, s.max_rel, s.bias_rel) == (3, 0.1, 0.2, 0.05)
    assert s.band_rel == 0.2  # under 10 errors the band is the worst case
    # Theil-Sen ignores one wild point that least squares would follow
    xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    ys = [3.0, 5.0, 7.0, 9.0, 11.0, 100.0]
    assert fit.theil_sen(xs, ys) == pytest.approx((2.0, 1.0))
    with pytest.raises(ValueError):
        fit.theil_sen([1.0, 1.0], [2.0, 3.0])


def test_grid_search_refines_past_the_grid() -> None:
    (x,) = fit.grid_search(lambda a: (a - 0.737) ** 2, [[0.0, 0.25, 0.5, 0.75, 1.0]], refine=3)
    assert x == pytest.approx(0.737, abs=0.002)


def _noisy(rng: random.Random, x: float, rel: float) -> float:
    return x * (1 + rng.gauss(0, rel))


def test_throughput_round_trip() -> None:
    """tokens/s made with compute_efficiency_max 0.62 and compute_tokens_half 700, 3 % noise,
    over micro batches 1-64 (512-32768 tokens per micro-step), come back within a few %."""
    base = load_calibration()
    truth = with_values(base, {"compute_efficiency_max": 0.62, "compute_tokens_half": 700.0})
    rng = random.Random(5)
    gpu = find_gpu("a100-80gb")
    points = []
    for model in ("7b", "13b"):
        arch = find_model(model)
        for method in ("lora", "full"):
            for b in (1, 2, 4, 8, 16, 32, 64):
                spec = make_spec(arch, {"zero_stage": 3, "offload": "none", "seq_len": 512}, method, 8, b)

                def predict(cal, arch=arch, spec=spec):  # type: ignore[no-untyped-def]
                    t = step_timing(arch, spec, param_counts(arch, spec), gpu, None, cal)
                    return t.tokens_per_s / t.world

                points.append(ThroughputPoint(f"{model} {method} b{b}", _noisy(rng, predict(truth), 0.03), predict, 512 * b))
    emax, half = fit_throughput(points, base, [p.tokens_per_micro_step for p in points])
    assert emax == pytest.approx(0.62, rel=0.03)
    assert half is not None and half == pytest.approx(700, rel=0.15)
    # without small micro-steps the knee is left alone: only the plateau is fitted
    big = [p for p in points if p.tokens_per_micro_step >= 4096]
    emax_big, half_big = fit_throughput(big, base, [p.tokens_per_micro_step for p in big])
    assert half_big is None


def _cpu_runs() -> list[Measurement]:
    return [m for m in read_measurements(RUNS) if isinstance(m.result, RunResult)]


def _with_step_temporaries(m: Measurement, temporaries: int) -> Measurement:
    r = m.result
    assert isinstance(r, RunResult)
    step = r.phases["optimizer_step"]
    at_peak = step.at_peak_bytes.model_copy(update={"temporaries": temporaries})
    phases = {**r.phases, "optimizer_step": step.model_copy(update={"at_peak_bytes": at_peak})}
    return m.model_copy(update={"result": r.model_copy(update={"phases": phases})})


def test_optimizer_scratch_round_trip() -> None:
    """Step temporaries made with optimizer_scratch_states 1.5 (2 % noise) give back 1.5."""
    base = load_calibration()
    truth = with_values(base, {"optimizer_scratch_states": 1.5})
    rng = random.Random(1)
    synth = []
    for m in _cpu_runs():
        temps = gpu_memory(find_model(m.model), m.spec, truth).phases["optimizer_step"].temporaries
        synth.append(_with_step_temporaries(m, int(_noisy(rng, temps, 0.02))))
    got = fit_optimizer_scratch(synth, base)
    assert got is not None
    value, n = got
    assert n >= 20
    assert value == pytest.approx(1.5, rel=0.03)


def test_host_round_trip() -> None:
    """Peak RSS made as 700 MB + 1.25 x peak tensor bytes (1 % noise, two wild runs) gives back
    the baseline and the allocator's share."""
    rng = random.Random(2)
    runs = _cpu_runs()
    synth = []
    for i, m in enumerate(runs):
        r = m.result
        assert isinstance(r, RunResult)
        rss = 7e8 + 1.25 * r.peak_bytes
        rss = rss * 3 if i in (3, 17) else _noisy(rng, rss, 0.01)
        synth.append(m.model_copy(update={"result": r.model_copy(update={"max_rss_bytes": int(rss)})}))
    got = fit_host(synth, load_calibration())
    assert got is not None
    frac, proc, n = got
    assert n == len(runs)
    assert frac == pytest.approx(0.25, abs=0.05)
    assert proc == pytest.approx(7e8, rel=0.05)


def test_fit_calibration_on_the_committed_cpu_runs() -> None:
    """The committed CPU grid fits single-tensor AdamW's two scratch states, and the planner
    with that calibration predicts the median run's peak within 1 %."""
    runs = _cpu_runs()
    cal = fit_calibration(runs, load_calibration(), device="cpu", command="test", record_files={str(RUNS): len(runs)})
    assert cal.fitted and cal.device == "cpu" and cal.n_records == len(runs)
    assert cal.value("optimizer_scratch_states") == pytest.approx(2.0, abs=0.05)
    assert cal.coefficients["optimizer_scratch_states"].calibrated
    assert cal.value("optimizer_per_tensor_step") == 1.0 and cal.value("dropout_mask_full_width") == 1.0
    assert not cal.coefficients["compute_efficiency_max"].calibrated  # CPU tokens/s fits nothing
    res = cal.residuals or {}
    assert res["memory.peak_bytes"].median_rel < 0.01 and res["memory.peak_bytes"].p90_rel < 0.12
    assert res["memory.optimizer_states_bytes"].max_rel < 1e-3
    assert res["checkpoint.pretrained_bytes"].max_rel == 0.0
    # the defaults (one scratch state: CUDA's foreach AdamW) are further from CPU runs
    assert residuals(runs, load_calibration())["memory.peak_bytes"].median_rel > res["memory.peak_bytes"].median_rel


def test_gpu_records_fit_the_cuda_terms_and_throughput() -> None:
    """Records as a GPU run writes them (CUDA counters, tokens/s) give back the context, the
    allocator's reserve and the throughput they were made with."""
    from harness.calibrate import device_of
    from planner.catalog import find_gpu

    base = load_calibration()
    truth = with_values(base, {"compute_efficiency_max": 0.55})
    gpu = find_gpu("h200")
    rng = random.Random(3)
    synth = []
    for m in _cpu_runs():
        if m.spec.zero_stage != 2:
            continue
        r = m.result
        assert isinstance(r, RunResult)
        phases = {}
        for name, ph in r.phases.items():
            reserved = int(ph.peak_bytes * 1.08)
            phases[name] = ph.model_copy(
                update={
                    "cuda_max_allocated_bytes": ph.peak_bytes,
                    "cuda_max_reserved_bytes": reserved,
                    "cuda_reserved_at_end_bytes": reserved,
                    "cuda_device_used_bytes": reserved + int(_noisy(rng, 6e8, 0.01)),
                }
            )
        arch = find_model(m.model)
        t = step_timing(arch, m.spec, param_counts(arch, m.spec), gpu, None, truth)
        tokens = _noisy(rng, t.tokens_per_s, 0.02)
        synth.append(
            m.model_copy(update={"result": r.model_copy(update={"device": "NVIDIA H200", "phases": phases, "tokens_per_s": tokens})})
        )
    assert device_of(synth) == "h200"
    cal = fit_calibration(synth, base, device="h200", command="test", record_files={"synthetic": len(synth)})
    assert cal.value("cuda_context_bytes") == pytest.approx(6e8, rel=0.02)
    assert cal.value("allocator_reserve_fraction") == pytest.approx(0.08, abs=0.005)
    assert cal.coefficients["compute_efficiency_max"].calibrated
    # one micro-step size only: the plateau and the knee trade off, but the fitted pair
    # reproduces the measured tokens/s
    assert (cal.residuals or {})["throughput.tokens_per_s"].median_rel < 0.03
