"""``harness run``: real training steps with transformers + peft + DeepSpeed, measured.

One spec (the planner's ``TrainingSpec``) on this machine: a Llama-family model built from its
config with random weights, peft applied as a user applies it, ``deepspeed.initialize`` with a
config generated from the spec (ZeRO stage, bf16, offload, the bucket sizes the planner
assumes), random token batches. Warm-up steps, then measured steps; one measured step is
profiled phase by phase (``harness.memory_phases``) for the live tensor bytes per category.
Then the checkpoint: ``save_pretrained`` (the adapter, or the 16-bit model) and DeepSpeed's
``save_checkpoint`` (with optimizer states), their sizes on disk.

Processes: ``nproc`` ranks started as ``python -m harness.run --worker`` with the usual
``RANK``/``WORLD_SIZE``/``MASTER_*`` environment; gloo on CPU (``DS_ACCELERATOR=cpu``), NCCL
on CUDA. Every rank writes its result; the parent assembles the record (rank 0's numbers, the
others' peaks). A rank that fails or times out makes an error record: nothing is lost.

CPU notes (issue 5): DeepSpeed's shared-memory op is marked unavailable so it is not compiled
(~90 s), the optimizer is torch's AdamW (``torch_adam``; DeepSpeed's fused CPU Adam compiles
~170 s), and with the optimizer offloaded ``zero_force_ds_cpu_optimizer`` is off. One thread per
process.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec

WORKER_TIMEOUT_S = 1800


def deepspeed_config(arch: Architecture, spec: TrainingSpec, device: str) -> dict[str, Any]:
    """The DeepSpeed config a user would write for ``spec`` (``planner.configs.emit``: Hugging Face's
    "auto" values made explicit, as the planner assumes them), with what a CPU run needs:
    unpinned offload buffers, torch's AdamW, and no forced DeepSpeedCPUAdam."""
    from planner.configs.emit import deepspeed_config as emitted

    cfg = emitted(arch, spec)
    zero = cfg["zero_optimization"]
    for key in ("offload_optimizer", "offload_param"):
        if key in zero:
            zero[key]["pin_memory"] = device == "cuda"
    if device == "cpu":
        if cfg["optimizer"]["type"] == "AdamW":
            cfg["optimizer"]["params"]["torch_adam"] = True
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def build_model(arch: Architecture, spec: TrainingSpec, ds_config: dict[str, Any] | None = None) -> Any:
    """The model as a user builds it: transformers from config (random weights), peft's LoRA.
    Under ZeRO-3 the base model is built inside ``deepspeed.zero.Init`` (partitioned as it is
    made), as transformers does when DeepSpeed ZeRO-3 is configured; peft's adapters come after."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.trace import apply_lora, hf_config

    if spec.method == "qlora":
        raise ValueError("harness run does not do QLoRA yet (bitsandbytes needs CUDA)")
    dtype = {"amp-bf16": torch.float32, "fp32": torch.float32, "fp16-mixed": torch.float16}.get(spec.precision, torch.bfloat16)
    torch.manual_seed(0)
    # on a GPU, build (and randomly initialise) the weights there: 7B on the host takes minutes
    on_gpu = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
    zero_init: Any = contextlib.nullcontext()
    if ds_config is not None and spec.zero_stage == 3:
        import deepspeed

        zero_init = deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=dtype)
    with device or contextlib.nullcontext(), zero_init:
        model = AutoModelForCausalLM.from_config(hf_config(arch, spec), dtype=dtype)
    if spec.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.method == "lora":
        model = apply_lora(model, spec)
    return model


def _files_bytes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One rank's run; returns its measurements (JSON-able)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))

    torch.set_num_threads(int(job.get("threads", 1)))
    import deepspeed
    import transformers
    from deepspeed import ops

    from harness.memory_phases import PhaseProfiler, storage_labels
    from harness.trace import max_rss_bytes
    from planner.catalog import architecture_from_config

    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu"
    device_name = "cuda" if cuda else "cpu"
    if not cuda:
        ops.__compatible_ops__["deepspeed_shm_comm"] = False
    arch = architecture_from_config(job["architecture"], name=job["model"])
    spec = TrainingSpec.model_validate(job["spec"])
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank = int(os.environ["RANK"])
    if os.environ.get("HARNESS_FAULT_RANK") == str(rank):  # for tests: a rank that dies mid-run
        raise RuntimeError(f"injected fault on rank {rank}")
    t0 = time.perf_counter()
    cfg = deepspeed_config(arch, spec, device_name)
    model = build_model(arch, spec, cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=cfg)
    engine.train()
    device = engine.device if cuda else torch.device("cpu")
    load_s = time.perf_counter() - t0
    b, s = spec.micro_batch_size, spec.seq_len
    gen = torch.Generator().manual_seed(rank)
    vocab = arch.vocab_size + spec.added_tokens
    ids = torch.randint(0, vocab, (b, s), generator=gen).to(device)
    batch = {"input_ids": ids, "labels": ids}
    if spec.padding_mask:
        batch["attention_mask"] = torch.ones_like(ids)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step() -> None:
        for _ in range(spec.grad_accum):
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()

    times = []
    for i in range(job["warmup"] + job["steps"]):
        sync()
        a = time.perf_counter()
        step()
        sync()
        if i >= job["warmup"]:
            times.append(time.perf_counter() - a)
    # one more step, phase by phase, with the memory profile
    pp = PhaseProfiler(device)
    labels = lambda: storage_labels(engine.module, engine, device)  # noqa: E731
    cuda_peaks: dict[str, dict[str, int]] = {}
    out: dict[str, Any] = {}
    before = labels()
    for phase, fn in (
        ("forward", lambda: out.__setitem__("loss", engine(**batch).loss)),
        # the loss (and with it what autograd and checkpointing still hold) is dropped inside
        # the phase, as a training loop drops it after backward: frees between two profiled
        # phases would be seen by neither
        ("backward", lambda: (engine.backward(out["loss"]), out.pop("loss"))),
        ("optimizer_step", lambda: engine.step()),
    ):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with pp.phase(phase, before, labels):
            fn()
        sync()
        if cuda:
            free, total = torch.cuda.mem_get_info()  # the device as nvidia-smi sees it
            cuda_peaks[phase] = {
                "allocated": torch.cuda.max_memory_allocated(),
                "reserved": torch.cuda.max_memory_reserved(),
                "active": int(torch.cuda.memory_stats().get("active_bytes.all.peak", 0)),
                "device_used": int(total - free),
                "reserved_now": torch.cuda.memory_reserved(),
            }
        before = {**pp.phases[phase].alive_at_end, **labels()}
    result: dict[str, Any] = {
        "rank": rank,
        "device": torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
        "step_times_s": times,
        "load_s": load_s,
        "phases": {k: {"peak_bytes": v.peak_bytes, "at_peak": v.at_peak} for k, v in pp.phases.items()},
        "cuda_peaks": cuda_peaks,
        "max_rss_bytes": max_rss_bytes(),
        "parameters": {
            "total": sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters()),
            "trainable": sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad),
        },
    }
    if job.get("save"):
        result["checkpoint"] = _save(engine, spec, Path(job["save_dir"]), rank, cuda)
    engine.destroy()
    return result


def _save(engine: Any, spec: TrainingSpec, folder: Path, rank: int, cuda: bool) -> dict[str, Any]:
    """``save_pretrained`` (rank 0, the gathered 16-bit weights) and ``save_checkpoint`` (every
    rank its partition), with the host memory rise while saving."""
    import torch.distributed as dist

    from harness.trace import max_rss_bytes

    rss0 = max_rss_bytes()
    pretrained = folder / "pretrained"
    state = engine._zero3_consolidated_16bit_state_dict() if spec.zero_stage == 3 else None
    module = engine.module
    if rank == 0:
        if spec.method == "lora":
            kw: dict[str, Any] = {}
            if state is not None:
                from peft import get_peft_model_state_dict

                kw["state_dict"] = get_peft_model_state_dict(module, state_dict=state)
            module.save_pretrained(pretrained, **kw)
        else:
            module.save_pretrained(pretrained, state_dict=state, safe_serialization=True)
    dist.barrier()
    engine.save_checkpoint(str(folder / "deepspeed"), tag="step")
    dist.barrier()
    files = _files_bytes(folder) if rank == 0 else {}
    return {"files": files, "save_rss_rise_bytes": max(0, max_rss_bytes() - rss0)}


def free_port() -> int:
    """A TCP port on the loopback that is free now (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunOptions:
    """How a spec is run: measured and warm-up steps, whether to save, and the time limit."""

    steps: int = 3
    warmup: int = 1
    save: bool = True
    timeout_s: float = WORKER_TIMEOUT_S


def make_job(arch: Architecture, spec: TrainingSpec, opts: RunOptions, save_dir: Path) -> dict[str, Any]:
    """The job ``harness.run.worker`` runs (what ``launch`` writes to ``job.json``)."""
    return {
        "model": arch.name,
        "architecture": arch.model_dump(mode="json", exclude={"name", "hf_id", "aliases", "source"}),
        "spec": spec.model_dump(mode="json"),
        "steps": opts.steps,
        "warmup": opts.warmup,
        "save": opts.save,
        "save_dir": str(save_dir),
    }


def assemble(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's result with every rank's peak and RSS and the median step time (as ``launch``)."""
    first = results[0]
    first["rank_peaks_bytes"] = [max(ph["peak_bytes"] for ph in r["phases"].values()) for r in results]
    first["rank_max_rss_bytes"] = [r["max_rss_bytes"] for r in results]
    first["median_step_s"] = statistics.median(t for r in results for t in r["step_times_s"])
    return first


def launch(arch: Architecture, spec: TrainingSpec, opts: RunOptions, progress: Any = None, save_root: Path | None = None) -> dict[str, Any]:
    """Run ``spec.world_size`` worker processes; returns rank 0's result with every rank's peaks,
    or raises RuntimeError with the failing rank's last lines. Checkpoints go under
    ``save_root/save``."""
    nproc = spec.world_size
    with tempfile.TemporaryDirectory(prefix="harness-run-") as tmp:
        work = Path(tmp)
        save_dir = (save_root or work) / "save"
        job = make_job(arch, spec, opts, save_dir)
        (work / "job.json").write_text(json.dumps(job))
        port = str(free_port())
        procs = []
        for rank in range(nproc):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            env.setdefault("OMP_NUM_THREADS", "1")
            log = (work / f"rank{rank}.log").open("w")
            cmd = [sys.executable, "-m", "harness.run", "--worker", str(work / "job.json"), str(work / f"rank{rank}.json")]
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        if progress:
            progress(f"{nproc} process(es) started")
        deadline = time.monotonic() + opts.timeout_s
        failed: list[int] = []
        # wait for all; the first rank that fails (or the deadline) ends the others, which
        # would otherwise wait for it in a collective
        try:
            while True:
                codes = [p.poll() for p, _ in procs]
                failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
                if failed or all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    failed = [r for r, c in enumerate(codes) if c is None]
                    break
                time.sleep(0.2)
        except BaseException:  # Ctrl-C or a kill of this process: leave no rank behind
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
            raise
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
        if failed:
            rank = failed[0]
            tail = (work / f"rank{rank}.log").read_text(errors="replace").strip().splitlines()[-15:]
            why = "timed out" if procs[rank][0].returncode in (None, -9) and time.monotonic() > deadline else "failed"
            raise RuntimeError(f"rank {rank} {why}: " + " | ".join(tail))
        results = [json.loads((work / f"rank{r}.json").read_text()) for r in range(nproc)]
    return assemble(results)


def _worker_main(job_path: str, out_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = worker(job)
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        raise SystemExit(_worker_main(sys.argv[2], sys.argv[3]))
    print("usage: harness run ... (python -m harness.run --worker JOB OUT is internal)", file=sys.stderr)
    raise SystemExit(2)


def safetensors_payload_bytes(path: Path) -> int:
    """Tensor bytes of a safetensors file: its size less the 8-byte length and the JSON header."""
    with path.open("rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return path.stat().st_size - 8 - header


def run_record(arch: Architecture, spec: TrainingSpec, opts: RunOptions, command: str, progress: Any = None, launcher: Any = None) -> Any:
    """Run and wrap the result as a ``Measurement`` (a failure becomes a record with its error).
    ``launcher`` starts the ranks: ``launch`` (local processes, the default) or
    ``harness.ray_run.launch_ray`` bound to a cluster address."""
    import datetime as dt
    from importlib.metadata import version

    from harness.trace import versions
    from planner.schema.records import CategoryBytes, CheckpointFiles, Measurement, RunResult

    base = {
        "kind": "run",
        "model": arch.name,
        "spec": spec,
        "sharding": "deepspeed",
        "tool": "harness run (DeepSpeed + peft, torch.profiler memory per phase)",
        # the version without importing deepspeed here: its import logs to stdout, which --json owns
        "versions": {**versions(), "deepspeed": version("deepspeed")},
        "command": command,
        "date": dt.date.today().isoformat(),
        "host": f"{platform.machine()} {platform.system()}",
    }
    try:
        with tempfile.TemporaryDirectory(prefix="harness-save-") as keep:
            r = (launcher or launch)(arch, spec, opts, progress, save_root=Path(keep))
            checkpoint = None
            if opts.save and "checkpoint" in r:
                root = Path(keep) / "save" / "pretrained"
                payload = sum(safetensors_payload_bytes(p) for p in sorted(root.glob("*.safetensors")))
                ck = r["checkpoint"]
                checkpoint = CheckpointFiles(
                    files_bytes=ck["files"], pretrained_tensor_bytes=payload, save_rss_rise_bytes=ck["save_rss_rise_bytes"]
                )
    except RuntimeError as exc:
        return Measurement(**base, error=str(exc)[-4000:])
    phases = {}
    for name, ph in r["phases"].items():
        cuda = r["cuda_peaks"].get(name, {})
        phases[name] = {
            "peak_bytes": ph["peak_bytes"],
            "at_peak_bytes": CategoryBytes(**ph["at_peak"]),
            "cuda_max_allocated_bytes": cuda.get("allocated"),
            "cuda_max_reserved_bytes": cuda.get("reserved"),
            "cuda_max_active_bytes": cuda.get("active"),
            "cuda_device_used_bytes": cuda.get("device_used"),
            "cuda_reserved_at_end_bytes": cuda.get("reserved_now"),
        }
    peak_phase = max(phases, key=lambda k: phases[k]["peak_bytes"])
    nproc = spec.world_size
    tokens = spec.micro_batch_size * spec.seq_len * spec.grad_accum * nproc
    result = RunResult(
        device=r["device"],
        world_size=nproc,
        peak_bytes=phases[peak_phase]["peak_bytes"],
        peak_phase=peak_phase,
        phases=phases,
        rank_peaks_bytes=r["rank_peaks_bytes"],
        tokens_per_s=tokens / r["median_step_s"],
        median_step_s=r["median_step_s"],
        step_times_s=r["step_times_s"],
        load_s=r["load_s"],
        max_rss_bytes=r["max_rss_bytes"],
        rank_max_rss_bytes=r["rank_max_rss_bytes"],
        parameters=r["parameters"],
        checkpoint=checkpoint,
    )
    return Measurement(**base, result=result)
