"""Speed of the hot paths, measured with pytest-benchmark (not timed assertions).

Run ``pytest tests/benchmark/test_benchmark.py --benchmark-enable`` to see the numbers; in the normal
suite (``--benchmark-disable``) each body runs once as a smoke test.
"""

from __future__ import annotations

import subprocess
import sys

from planner.catalog import find_gpu, find_instance, find_model
from planner.estimate.plan import build_plan
from planner.schema.spec import TrainingSpec

P4DE = find_instance("p4de.24xlarge")


def test_bench_one_plan_with_batch_search(benchmark):
    arch, gpu = find_model("70b"), find_gpu(P4DE.gpu)
    plan = benchmark(build_plan, arch, TrainingSpec(method="lora", gpus_per_node=8), gpu, P4DE)
    assert plan.memory.fits


def test_bench_sweep_models_methods_instances(benchmark):
    insts = [find_instance(n) for n in ("p4de.24xlarge", "p5.48xlarge", "g5.48xlarge", "g6e.48xlarge")]

    def sweep() -> int:
        n = 0
        for model in ("7b", "13b", "70b"):
            for method in ("full", "lora", "qlora"):
                for inst in insts:
                    build_plan(find_model(model), TrainingSpec(method=method, gpus_per_node=inst.gpu_count), find_gpu(inst.gpu), inst)
                    n += 1
        return n

    assert benchmark(sweep) == 36


def test_bench_cli_start_up(benchmark):
    def run() -> int:
        return subprocess.run(
            [sys.executable, "-m", "planner.cli", "--model", "70b", "--instance", "p4de.24xlarge", "--json"], capture_output=True
        ).returncode

    assert benchmark.pedantic(run, rounds=3, iterations=1) == 0


def test_bench_memory_and_time_of_10000_configurations(benchmark):
    """The inner loop of a sweep: memory per GPU and step time for 10,000 (model, method,
    instance, micro batch) configurations, without building Plan objects. Issue 4's target is
    10,000 configurations per second; see the README for the measured rate."""
    from planner.catalog import load_calibration
    from planner.estimate.memory import gpu_memory, param_counts
    from planner.estimate.timing import step_timing

    cal = load_calibration()
    insts = [find_instance(n) for n in ("p4de.24xlarge", "p5.48xlarge", "g5.48xlarge", "g6e.48xlarge")]
    archs = [find_model(m) for m in ("7b", "13b", "70b", "llama-3.1-8b", "qwen2.5-7b")]
    configs = [
        (arch, TrainingSpec(method=method, gpus_per_node=inst.gpu_count, micro_batch_size=b), find_gpu(inst.gpu), inst)
        for arch in archs
        for method in ("full", "lora")
        for inst in insts
        for b in range(1, 251)
    ]

    def sweep() -> int:
        for arch, spec, gpu, inst in configs:
            gpu_memory(arch, spec, cal)
            step_timing(arch, spec, param_counts(arch, spec), gpu, inst, cal)
        return len(configs)

    assert benchmark.pedantic(sweep, rounds=3, iterations=1) == 10_000
