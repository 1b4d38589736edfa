"""``harness.ray_run.launch_ray``: the ranks of ``harness run`` as a Ray Train job, on a local
Ray instance on the CPU, give what ``harness.run.launch`` gives.

Needs ray[train] and the harness extra; skipped with a reason otherwise. About 2 minutes on two
cores: each Ray Train run spends 10-15 s starting its workers before DeepSpeed starts, and each
spec is run through ``launch`` as well to compare.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("torch", reason="harness extra (torch) not installed")
pytest.importorskip("deepspeed", reason="harness extra (deepspeed) not installed")
pytest.importorskip("peft", reason="harness extra (peft) not installed")
ray = pytest.importorskip("ray", reason="ray[train] not installed")
pytest.importorskip("ray.train.torch", reason="ray[train] not installed")

from harness.ray_run import launch_ray  # noqa: E402
from harness.run import RunOptions, launch  # noqa: E402
from planner.calibration.agreement import REPEAT_RUN_PEAK_TOLERANCE  # noqa: E402
from planner.catalog import find_model  # noqa: E402
from planner.estimate.memory import param_counts  # noqa: E402
from planner.estimate.resolve import make_spec  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.harness]
TINY = find_model("7b-tiny")
OPTS = RunOptions(steps=2, warmup=1, save=True)


def _spec(method: str, zero: int, nproc: int):
    fields = {"zero_stage": zero, "offload": "none", "seq_len": 128, "grad_ckpt": True}
    return make_spec(TINY, fields, method, nproc, 4)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with two CPUs (one per rank), its workers' output kept off the console."""
    if ray.is_initialized():  # someone else's instance: use it, leave it running
        yield
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize(("method", "zero", "nproc"), [("lora", 0, 1), ("full", 3, 2)], ids=["lora-zero0-x1", "full-zero3-x2"])
def test_ray_train_ranks_measure_what_local_processes_measure(local_ray, tmp_path, method, zero, nproc):
    spec = _spec(method, zero, nproc)
    t0 = time.perf_counter()
    r = launch_ray(TINY, spec, OPTS, save_root=tmp_path / "ray")
    ray_s = time.perf_counter() - t0
    local = launch(TINY, spec, OPTS, save_root=tmp_path / "local")

    # the contract run_record reads
    assert set(local) <= set(r)
    assert r["rank"] == 0 and len(r["rank_peaks_bytes"]) == len(r["rank_max_rss_bytes"]) == nproc
    assert len(r["step_times_s"]) == OPTS.steps and r["median_step_s"] > 0 and r["load_s"] > 0
    assert set(r["phases"]) == {"forward", "backward", "optimizer_step"}
    pc = param_counts(TINY, spec)
    assert r["parameters"] == local["parameters"] == {"total": pc.total, "trainable": pc.trainable}

    # the same memory: what is held at each phase's peak is deterministic (parameters, their
    # gradients, the optimizer states); the peaks themselves within REPEAT_RUN_PEAK_TOLERANCE
    # (3 %) on every rank: with two ranks the moment a collective's buffer is freed varies from
    # run to run, local or on Ray
    for phase, ph in r["phases"].items():
        mine, theirs = ph["at_peak"], local["phases"][phase]["at_peak"]
        for cat in ("parameters", "gradients", "optimizer_states"):
            assert mine[cat] == theirs[cat], (phase, cat)
        assert ph["peak_bytes"] == pytest.approx(local["phases"][phase]["peak_bytes"], rel=REPEAT_RUN_PEAK_TOLERANCE), phase
    assert r["rank_peaks_bytes"] == pytest.approx(local["rank_peaks_bytes"], rel=REPEAT_RUN_PEAK_TOLERANCE)

    # the checkpoint went under save_root, as with launch
    files = r["checkpoint"]["files"]
    assert files == local["checkpoint"]["files"]
    weights = "pretrained/adapter_model.safetensors" if method == "lora" else "pretrained/model.safetensors"
    assert (tmp_path / "ray" / "save" / weights).stat().st_size == files[weights]
    assert ray_s < 90, f"Ray Train run took {ray_s:.0f} s"


def test_a_failing_rank_raises_quickly_with_its_lines(local_ray, monkeypatch):
    """HARNESS_FAULT_RANK set in the driver after Ray started reaches the ranks (launch_ray hands
    the driver's HARNESS_* variables to the loop): rank 1 raises after joining the process group,
    rank 0 waits for it in a collective and is ended by Ray Train."""
    monkeypatch.setenv("HARNESS_FAULT_RANK", "1")
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="rank 1 failed") as err:
        launch_ray(TINY, _spec("lora", 1, 2), RunOptions(steps=2, warmup=1, save=False))
    assert "injected fault on rank 1" in str(err.value)
    assert time.perf_counter() - t0 < 90


def test_calibrate_runs_the_ci_grids_first_two_specs_on_ray(local_ray, tmp_path, capsys):
    """``harness calibrate ci --ray-address local --limit 2``: the CI grid's first two specs as
    Ray Train jobs, recorded, then fitted (issue 5's acceptance)."""
    from harness.cli import main
    from harness.grid import expand, key, load_grid, record_key
    from planner.catalog import load_calibration
    from planner.schema.records import read_measurements

    out, cal_path = tmp_path / "ray.jsonl", tmp_path / "cal.json"
    rc = main(["calibrate", "ci", "--ray-address", "local", "--limit", "2", "--out", str(out), "--calibration-out", str(cal_path)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    records = read_measurements(out)
    assert [record_key(m) for m in records] == [key(*j) for j in expand(load_grid("ci"))[:2]]
    assert all(m.result is not None for m in records), [m.error for m in records]
    cal = load_calibration(str(cal_path))
    assert cal.fitted and cal.n_records == 2 and cal.device == "cpu"
