"""``harness run`` on Ray: the same ranks as ``harness.run.launch``, started as a Ray Train job.

``launch_ray`` takes what ``launch`` takes and returns what it returns (rank 0's result with every
rank's peaks, RSS and the median step time), so ``run_record`` can use either; any failure is a
``RuntimeError`` naming the failing rank with its last log lines, as ``launch`` raises.

One ``ray.train.torch.TorchTrainer`` per spec: ``spec.world_size`` workers (one CPU each on the
CPU, one GPU each with CUDA), ``FailureConfig(max_failures=0)`` (a failed rank fails the run,
nothing is retried). Ray Train creates the torch.distributed process group (gloo on the CPU,
NCCL with GPUs) and sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` before the loop runs;
the loop sets the ranks again from ``ray.train.get_context()`` and calls ``harness.run.worker``,
whose ``deepspeed.init_distributed`` finds the group initialised and adopts it (DeepSpeed only
creates a group when ``torch.distributed.is_initialized()`` is false).

Results come back as files, as with ``launch``: each rank writes ``rank{r}.json`` (and its
output, ``rank{r}.log``) into a folder the driver made. Nothing is reported to Ray Train: in
Ray 2.60 (Train V2, the default) ``result.metrics`` are the metrics of the latest reported
checkpoint (none without one, and rank 0's only), and ``ray.train.report`` is a collective every
rank must reach. The folder must be one the workers can write and the driver read, which on one
machine (a local Ray instance) it is; ``save_dir`` (the checkpoints ``run_record`` reads back)
needs the same anyway. Ray Train V1 (``RAY_TRAIN_V2_ENABLED=0``) works too, more noisily.

Environment: the workers are Ray's processes (started by the raylet, not by this process), so
the driver's ``HARNESS_*``/``DS_*``/``DEEPSPEED_*`` variables (``HARNESS_FAULT_RANK`` for the
tests) are handed to the loop and set there. Time limit: ``opts.timeout_s``, kept by a watchdog
in every rank (it ends its process when the time is up, which fails the run) and by the driver
(which stops waiting a minute later). A cluster with fewer CPUs (GPUs) than ranks is an error at
once: Ray Train would wait for them without end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.run import RunOptions, assemble, make_job
from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec

FORWARDED_ENV_PREFIXES = ("HARNESS_", "DS_", "DEEPSPEED_")
DRIVER_GRACE_S = 60.0  # how long the driver waits past the deadline for the ranks' watchdogs
TIMED_OUT_EXIT = 124


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so C++ output too) into
    ``path``: the rank's log, as ``launch`` keeps it, and nothing on the driver's console."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _watchdog(deadline: float, rank: int, work: Path) -> threading.Timer:
    """End this process at the wall-clock ``deadline``: a rank stuck in a collective cannot be
    interrupted otherwise, and a dead rank fails the Ray Train run."""

    def expire() -> None:
        with contextlib.suppress(OSError):
            (work / f"rank{rank}.error").write_text(f"rank {rank} timed out\n")
        os.write(2, f"harness: rank {rank} timed out\n".encode())
        os._exit(TIMED_OUT_EXIT)

    timer = threading.Timer(max(0.0, deadline - time.time()), expire)
    timer.daemon = True
    timer.start()
    return timer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One rank under Ray Train: the ranks' environment, then ``harness.run.worker``; its result
    (or its traceback) goes to the shared folder."""
    import json

    import ray.train

    from harness.run import worker

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    work = Path(config["work"])
    for key in [k for k in os.environ if k.startswith("HARNESS_") and k not in config["env"]]:
        del os.environ[key]  # the driver's environment decides, as with launch()
    os.environ.update(config["env"])
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(ctx.get_local_rank()), WORLD_SIZE=str(ctx.get_world_size()))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(ctx.get_local_world_size()))
    os.environ["OMP_NUM_THREADS"] = "1"
    timer = _watchdog(config["deadline"], rank, work)
    try:
        with _output_to(work / f"rank{rank}.log"):
            try:
                result = worker(config["job"])
            except BaseException:
                tb = traceback.format_exc()
                (work / f"rank{rank}.error").write_text(tb)
                os.write(2, tb.encode())  # not print(): Ray Train's patched print doubles it
                raise
        tmp = work / f"rank{rank}.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(work / f"rank{rank}.json")
    finally:
        timer.cancel()


def _connect(address: str | None, nproc: int, use_gpu: bool) -> None:
    """``ray.init(address=address)`` unless Ray is initialised already: ``None`` attaches to
    ``RAY_ADDRESS`` or a running local instance, else starts one; ``"local"`` always starts one.
    A local instance started here has at least ``nproc`` CPUs (``launch`` runs any number of
    processes on any number of cores) and keeps its workers' output off this console. Then the
    cluster must hold the ranks: Ray Train would wait for missing resources without end."""
    import ray

    if not ray.is_initialized():
        kw: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING}
        cpus: dict[str, Any] = {"num_cpus": max(os.cpu_count() or 1, nproc)}
        try:
            ray.init(address=address, **kw, **cpus)
        except ValueError as exc:  # address None found a running cluster: it has its own CPUs
            if "existing cluster" not in str(exc):
                raise
            ray.init(address=address, **kw)
    have = ray.cluster_resources()
    need = "GPU" if use_gpu else "CPU"
    if have.get(need, 0) < nproc:
        raise RuntimeError(
            f"the Ray cluster this process is connected to has {have.get(need, 0):g} {need}(s); {nproc} rank(s) need one "
            "each (address='local' in a process not yet connected to Ray starts an instance with enough)"
        )


def _failure(work: Path, nproc: int, deadline: float, exc: BaseException | None) -> RuntimeError:
    """The error ``launch`` would raise: the rank that failed first (the first to write its
    traceback; the others fail after it, in a collective) with its last log lines."""
    errors = sorted((p.stat().st_mtime, int(p.name[4:].split(".")[0])) for p in work.glob("rank*.error"))
    failures = getattr(exc, "worker_failures", None) or {}
    if errors:
        rank = errors[0][1]
    elif failures:
        rank = min(failures)
    else:
        rank = next((r for r in range(nproc) if not (work / f"rank{r}.json").exists()), 0)
    log = work / f"rank{rank}.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-15:] if log.exists() else []
    if not tail and exc is not None:
        cause = failures.get(rank, exc)
        tail = [line for line in str(cause).strip().splitlines() if line.strip()][-15:]
    if not tail:
        tail = ["no output: the rank did not start (are the Ray cluster's resources taken?)"]
    timed_out = time.time() > deadline
    why = "timed out" if timed_out else "failed"
    return RuntimeError(f"rank {rank} {why} (Ray Train): " + " | ".join(tail))


def launch_ray(
    arch: Architecture,
    spec: TrainingSpec,
    opts: RunOptions,
    progress: Any = None,
    save_root: Path | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """``harness.run.launch`` as a Ray Train job (``address``: the Ray cluster, as ``ray.init``
    takes it; ``None`` or ``"local"`` for one on this machine). Returns rank 0's result with
    every rank's peaks, or raises RuntimeError with the failing rank's last lines."""
    try:
        import ray
        import ray.train
        from ray.train.torch import TorchTrainer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"harness run on Ray needs ray[train]: {exc}") from exc
    import torch

    nproc = spec.world_size
    use_gpu = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu"
    with tempfile.TemporaryDirectory(prefix="harness-ray-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        save_dir = (save_root or work) / "save"
        deadline = time.time() + opts.timeout_s
        config = {
            "job": make_job(arch, spec, opts, save_dir),
            "work": str(work),
            "deadline": deadline,
            "env": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)},
        }
        try:
            _connect(address, nproc, use_gpu)
        except RuntimeError:
            raise
        except Exception as exc:
            raise RuntimeError(f"could not start or reach Ray (address={address!r}): {exc}") from exc
        # Ray Train V2 (the default in 2.60) runs its controller on no CPU; V1's trainer actor
        # (RAY_TRAIN_V2_ENABLED=0) takes one unless told not to, and with all CPUs held by ranks
        # it would wait for one without end
        from ray.air.config import ScalingConfig as ScalingConfigV1

        v1: dict[str, Any] = {"trainer_resources": {"CPU": 0}} if ray.train.ScalingConfig is ScalingConfigV1 else {}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(
                num_workers=nproc, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 1}, **v1
            ),
            run_config=ray.train.RunConfig(
                name="harness-run",
                storage_path=str(work / "ray"),
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )
        if progress:
            progress(f"{nproc} Ray Train worker(s) requested")
        # fit() in a thread: the driver keeps its own deadline (a run that cannot be scheduled
        # waits for resources), and Ray Train installs no SIGINT handler off the main thread
        box: dict[str, Any] = {}

        def fit() -> None:
            try:
                box["result"] = trainer.fit()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=fit, name="harness-ray-fit", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.time()) + DRIVER_GRACE_S)
        if thread.is_alive():
            raise _failure(work, nproc, deadline, None)
        missing = [r for r in range(nproc) if not (work / f"rank{r}.json").exists()]
        if "error" in box or missing:
            raise _failure(work, nproc, deadline, box.get("error")) from box.get("error")
        import json

        results = [json.loads((work / f"rank{r}.json").read_text()) for r in range(nproc)]
    return assemble(results)
