"""Rendering: the one place that turns a Plan (integer bytes) into rich tables in GiB."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from planner.schema.catalog import Architecture, Gpu, Instance
from planner.schema.memory import GPU_PHASES as PHASES
from planner.schema.memory import HOST_PHASES, Category
from planner.schema.plan import MAX_SEARCH_BATCH, Plan
from planner.schema.spec import TrainingSpec
from planner.schema.stack import StackProfile
from planner.units import GIB, GIGA, MEGA, TERA

#: The memory table's rows, one per category (``schema.memory.CATEGORIES``, in that order).
CATEGORY_LABELS: dict[Category, str] = {
    "parameters": "Parameters",
    "gradients": "Gradients",
    "optimizer_states": "Optimizer states (incl. fp32 master)",
    "activations": "Activations (saved for backward, logits)",
    "temporaries": "Temporaries (buckets, gathered params, step scratch)",
}


def gib(n: int | None) -> str:
    return "—" if n is None else f"{n / GIB:,.2f}"


def _count(n: int) -> str:
    if n >= GIGA:
        return f"{n / GIGA:,.2f} B"
    if n >= MEGA:
        return f"{n / MEGA:,.2f} M"
    return f"{n:,}"


def _band(error_rel: float | None) -> str:
    """`` ± 4%``: the calibration's error band on a number (nothing when it has none)."""
    return "" if error_rel is None else f" ± {error_rel:.0%}"


def _residual_line(residuals: dict | None) -> str:
    """The error bands' basis: per quantity, the residuals behind the calibration."""
    if not residuals:
        return "No residuals: the numbers carry no error band. "
    keep = {"memory.peak_bytes": "peak memory", "throughput.tokens_per_s": "tokens/s"}
    parts = [
        f"{label} {r.median_rel:.0%} median / {r.p90_rel:.0%} p90 / {r.max_rel:.0%} worst |error| over {r.n} ({r.source or 'records'})"
        for key, label in keep.items()
        if (r := residuals.get(key)) is not None
    ]
    return ("Error bands (±) from: " + "; ".join(parts) + ". ") if parts else ""


def _setting(plan: Plan, field: str) -> str:
    """A spec setting's value for display (``deepspeed.<knob>`` included)."""
    spec = plan.inputs.spec
    value = getattr(spec.deepspeed, field.split(".", 1)[1]) if field.startswith("deepspeed.") else getattr(spec, field)
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else (f"{value:,}" if isinstance(value, int) else str(value))


def render_plan(plan: Plan, console: Console) -> None:
    spec = plan.inputs.spec
    hw = plan.inputs.hardware
    where = f"{hw.instance} ({hw.gpus_per_node}× {hw.gpu_name})" if hw.instance else f"{hw.gpus_per_node}× {hw.gpu_name}"
    if hw.nodes > 1:
        where = f"{hw.nodes} nodes × {where}"
    method = spec.method.upper() if spec.method != "full" else "full-parameter"
    lora = ""
    if spec.method != "full":
        lora = f", r={spec.lora_rank} α={spec.lora_alpha:g} dropout={spec.lora_dropout:g} on {','.join(spec.lora_targets)}"
        if spec.modules_to_save:
            lora += f", save {','.join(spec.modules_to_save)}"
    console.print(
        Text.assemble(
            ("Plan: ", "bold"),
            (f"{plan.inputs.model}", "bold cyan"),
            f" · {method}{lora} · {where}\n",
            f"micro batch {spec.micro_batch_size} × seq {spec.seq_len} (grad accum {spec.grad_accum}) · {spec.precision} · "
            f"{spec.optimizer} · {_engine(spec)} offload={spec.offload} · "
            f"grad ckpt {'on' if spec.grad_ckpt else 'off'} · attention {spec.attention}",
        )
    )
    if plan.stack is not None:
        st = plan.stack
        line = f"Stack: {st.name} ({st.title})"
        if st.auto:
            line += " · auto from " + ", ".join(f"{k} {v}" for k, v in st.versions.items())
        console.print(Text(line, style="dim"))

    from_files = {k: v for k, v in plan.settings_sources.items() if v != "default" and not v.startswith(("--", "stack "))}
    if from_files:
        files: dict[str, list[str]] = {}
        for field, source in from_files.items():
            name, _, key = source.partition(": ")
            files.setdefault(name, []).append(f"{key.removeprefix('zero_optimization.')}={_setting(plan, field)}")
        for name, items in files.items():
            console.print(Text.assemble(("From ", "dim"), (name, "bold"), ": ", "; ".join(items)))
        overridden = [f"{k} ({v})" for k, v in plan.settings_sources.items() if v.startswith("--")]
        if overridden:
            console.print(Text(f"Options given: {', '.join(overridden)}", style="dim"))
    if plan.settings_ignored:
        console.print(Text(f"Read, not modelled: {'; '.join(plan.settings_ignored)}", style="dim"))

    p = plan.parameters
    params = Table(title="Parameters", title_justify="left")
    params.add_column("total", justify="right")
    params.add_column("trainable", justify="right")
    params.add_column("trainable %", justify="right")
    params.add_column("frozen", justify="right")
    params.add_row(_count(p.total), _count(p.trainable), f"{100 * p.trainable / p.total:.3f}", _count(p.frozen))
    console.print(params)

    g = plan.memory.per_gpu
    splits = g.phase_splits_bytes
    mem = Table(title="Memory per GPU (GiB)", title_justify="left")
    mem.add_column("category")
    for ph in PHASES:
        style = "bold" if ph == g.peak_phase else ""
        mem.add_column(ph.replace("_", " ") + (" ★" if ph == g.peak_phase else ""), justify="right", style=style)
    for cat, label in CATEGORY_LABELS.items():
        mem.add_row(label, *(gib(getattr(getattr(splits, ph), f"{cat}_bytes")) for ph in PHASES))
    mem.add_row("[bold]allocated (max_memory_allocated)", *(gib(getattr(g.phase_peaks_bytes, ph)) for ph in PHASES), end_section=True)
    console.print(mem)

    m = plan.memory
    verdict = Table(title="Fit", title_justify="left", show_header=True)
    verdict.add_column("resource")
    verdict.add_column("needs (GiB)", justify="right")
    verdict.add_column("has (GiB)", justify="right")
    verdict.add_column("headroom (GiB)", justify="right")
    verdict.add_column("")

    def mark(ok: bool | None) -> str:
        return "[yellow]host size unknown" if ok is None else ("[green]fits" if ok else "[bold red]RUNS OUT")

    verdict.add_row(
        f"GPU memory per GPU (peak {g.peak_phase.replace('_', ' ')}: live tensors {gib(g.peak_allocated_bytes)}"
        f"{_band(g.peak_error_rel)}, reserved {gib(g.peak_reserved_bytes)} + CUDA context {gib(g.cuda_context_bytes)})",
        gib(g.peak_bytes),
        gib(m.gpu_capacity_bytes),
        gib(m.gpu_headroom_bytes),
        mark(m.fits_gpu),
    )
    c = m.per_node_cpu
    verdict.add_row(
        f"Host RAM per node (peak {c.peak_phase.replace('_', ' ')})",
        gib(c.peak_bytes),
        gib(m.host_capacity_bytes),
        gib(m.host_headroom_bytes),
        mark(m.fits_host),
    )
    console.print(verdict)

    host = Table(title="Host RAM per node (GiB)", title_justify="left")
    host.add_column("item")
    host.add_column("GiB", justify="right")
    host.add_row("training processes (one per GPU)", gib(c.process_bytes))
    host.add_row("offloaded optimizer (fp32 master, moments, fp32 grads)", gib(c.offloaded_optimizer_bytes))
    host.add_row("offloaded parameters", gib(c.offloaded_parameters_bytes))
    host.add_row("model loading spike (all ranks)", gib(c.model_load_bytes))
    host.add_row("checkpoint save spike (rank 0 gathers + serialises)", gib(c.checkpoint_save_bytes))
    for host_ph in HOST_PHASES:
        host.add_row(f"[bold]phase total: {host_ph.replace('_', ' ')}", gib(getattr(c.phase_peaks_bytes, host_ph)))
    console.print(host)

    status = (
        "[bold green]FITS"
        if m.fits
        else f"[bold red]DOES NOT FIT[/] — runs out of: {', '.join('GPU memory' if x == 'gpu' else 'host RAM' for x in m.limiting)}"
    )

    def batch(n: int) -> str:
        return f"≥ {n:,} (search limit)" if n >= MAX_SEARCH_BATCH else f"{n:,}"

    gpu_alone = plan.max_micro_batch_size_gpu
    console.print(
        f"{status}. Largest micro batch per GPU that fits: [bold]{batch(plan.max_micro_batch_size)}[/]"
        + (f" (GPU memory alone: {batch(gpu_alone)})" if gpu_alone != plan.max_micro_batch_size else "")
    )

    _render_time(plan, console)

    ck = plan.checkpoint
    cks = Table(title="Checkpoints on disk (GiB)", title_justify="left")
    cks.add_column("file")
    cks.add_column("GiB", justify="right")
    cks.add_column("bytes", justify="right")
    label = "fine-tuned model weights (safetensors)" if spec.method == "full" else "base model weights (safetensors)"
    cks.add_row(label, gib(ck.model_weights_bytes), f"{ck.model_weights_bytes:,}")
    if ck.adapter_bytes is not None:
        cks.add_row(
            f"LoRA adapter ({ck.adapter_dtype} A/B, embeddings: {spec.save_embedding_layers})",
            gib(ck.adapter_bytes),
            f"{ck.adapter_bytes:,}",
        )
    cks.add_row("training state (weights + fp32 master + optimizer)", gib(ck.training_state_bytes), f"{ck.training_state_bytes:,}")
    cks.add_row("merged model", gib(ck.merged_model_bytes), f"{ck.merged_model_bytes:,}")
    console.print(cks)
    if ck.storage_bytes is not None:
        budget = f"{ck.storage_bytes / GIGA:,.1f} GB of storage"
        if ck.adapter_bytes is None:
            console.print(f"{budget} holds [bold]{ck.models_in_storage:,}[/] full fine-tuned models.")
        elif ck.storage_bytes < ck.model_weights_bytes:
            console.print(f"{budget} does not hold the base model itself ({gib(ck.model_weights_bytes)} GiB).")
        else:
            console.print(f"{budget} holds [bold]{ck.models_in_storage:,}[/] LoRA adapters beside one base model.")
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {w}")

    cal = plan.calibration
    defaults = [k for k, v in cal.coefficients.items() if not v.calibrated]
    fitted = [k for k, v in cal.coefficients.items() if v.calibrated]
    console.print(
        f"[dim]Calibration {cal.id}"
        + (f" (fitted on {cal.device}, {cal.n_records} measured runs)" if cal.fitted else " (cited defaults)")
        + ": counts of parameters, weights, optimizer states and checkpoints are exact; "
        "live tensors per phase agree within 3 % with full-size traces of the real training code (harness trace) and "
        "with real DeepSpeed runs on CPU as `harness calibrate` reports; not yet real GPU runs. "
        + _residual_line(cal.residuals)
        + f"Calibrated coefficients: {', '.join(fitted) or 'none'}. Cited defaults, not fitted: {', '.join(defaults) or 'none'}. "
        f"GiB = 2^30 bytes.[/]"
    )


def _render_time(plan: Plan, console: Console) -> None:
    t, tc = plan.throughput, plan.time_cost
    spec = plan.inputs.spec
    label = "calibrated" if t.calibrated else "cited defaults, not yet fitted: treat as an estimate"
    tab = Table(title=f"Throughput and cost at micro batch {spec.micro_batch_size} ({label})", title_justify="left")
    tab.add_column("quantity")
    tab.add_column("value", justify="right")
    parts = t.step_time_parts
    tab.add_row("tokens/s (all GPUs; per GPU)", f"{t.tokens_per_s:,.0f}; {t.tokens_per_s_per_gpu:,.0f}" + _band(t.tokens_per_s_error_rel))
    tab.add_row(f"step time s ({t.tokens_per_step:,} tokens/step)", f"{t.step_time_s:.3f}")
    for name, v in (
        ("compute", parts.compute_s),
        ("communication (exposed)", parts.communication_s),
        ("offload (PCIe)", parts.offload_s),
        ("optimizer", parts.optimizer_s),
        ("framework (ZeRO-3 hooks)", parts.framework_s),
    ):
        mark = "  <- bottleneck" if name.split()[0] == t.bottleneck else ""
        tab.add_row(f"  {name}", f"{v:.3f}{mark}")
    tab.add_row("MFU", f"{t.mfu:.1%}")
    hours = tc.seconds_per_epoch / 3600
    tab.add_row(f"time per epoch ({tc.dataset_tokens:,} tokens)", f"{hours:.2f} h")
    if tc.epochs != 1:
        tab.add_row(f"time for {tc.epochs:g} epochs", f"{tc.seconds_total / 3600:.2f} h")
    if tc.usd_per_hour is not None and tc.usd_per_epoch is not None and tc.usd_per_million_tokens is not None:
        tab.add_row("USD per hour (on-demand, all nodes)", f"{tc.usd_per_hour:,.2f}")
        tab.add_row("USD per epoch", f"{tc.usd_per_epoch:,.2f}")
        if tc.epochs != 1 and tc.usd_total is not None:
            tab.add_row(f"USD for {tc.epochs:g} epochs", f"{tc.usd_total:,.2f}")
        tab.add_row("USD per million tokens", f"{tc.usd_per_million_tokens:,.3f}")
    else:
        tab.add_row("USD", "no price: give --instance")
    console.print(tab)


def render_compare(rows: list, console: Console) -> None:
    """``plan compare``: one row per (hardware, method); memory at the asked micro batch, speed
    and price at the largest micro batch that fits."""
    from rich.table import Table

    if not rows:
        return
    first = rows[0][0]
    b = first.inputs.spec.micro_batch_size
    t = Table(
        title=f"{first.inputs.model}: memory at micro batch {b}; tokens/s, time and USD at the largest micro batch that fits "
        f"(time coefficients: {'calibrated' if first.throughput.calibrated else 'cited defaults, not fitted'})",
        title_justify="left",
    )
    for col in (
        "hardware",
        "method",
        f"GiB/GPU @{b}",
        f"fits @{b}",
        "max micro batch",
        "tokens/s @max",
        "h/epoch @max",
        "USD/epoch @max",
        "checkpoint GiB",
    ):
        t.add_column(col, justify="left" if col in ("hardware", "method") else "right")
    for at_b, at_max in rows:
        hw = at_b.inputs.hardware
        where = hw.instance or f"{hw.gpus_per_node}x {hw.gpu}"
        ck = at_b.checkpoint
        ck_bytes = ck.adapter_bytes if ck.adapter_bytes is not None else ck.model_weights_bytes
        fits = "yes" if at_b.memory.fits else "[red]no[/red] (" + ", ".join(at_b.memory.limiting) + ")"
        if at_max is None:
            speed = ("—", "—", "—")
        else:
            tc = at_max.time_cost
            usd = f"{tc.usd_per_epoch:,.2f}" if tc.usd_per_epoch is not None else "—"
            speed = (f"{at_max.throughput.tokens_per_s:,.0f}", f"{tc.seconds_per_epoch / 3600:.2f}", usd)
        t.add_row(
            where,
            at_b.inputs.spec.method,
            f"{at_b.memory.per_gpu.peak_bytes / GIB:.1f}",
            fits,
            str(at_b.max_micro_batch_size),
            *speed,
            f"{ck_bytes / GIB:.2f}",
        )
    console.print(t)


def render_rows(rows: list, console: Console, kind: str, limit: int = 40) -> None:
    """``plan sweep`` / ``plan cheapest``: one row per plan, cheapest first, infeasible marked."""
    from rich.table import Table

    shown = rows[:limit]
    calibrated = next((r.plan.throughput.calibrated for r in rows if r.plan is not None), False)
    title = "Sweep" if kind == "sweep" else "Cheapest setups that fit"
    t = Table(
        title=f"{title}, by USD per epoch ({'calibrated' if calibrated else 'time from cited defaults, not fitted'})",
        title_justify="left",
    )
    for col in ("model", "method", "hardware", "nodes", "micro batch", "GiB/GPU", "tokens/s", "h/epoch", "USD/epoch", "fits"):
        t.add_column(col, justify="left" if col in ("model", "method", "hardware", "fits") else "right")
    for r in shown:
        p = r.plan
        if p is None:
            t.add_row(r.model, r.method, r.hardware, str(r.nodes), "—", "—", "—", "—", "—", f"[red]no[/red]: {r.reason}")
            continue
        tc = p.time_cost
        usd = f"{tc.usd_per_epoch:,.2f}" if tc.usd_per_epoch is not None else "—"
        fits = "yes" if p.memory.fits else f"[red]no[/red]: {r.reason}"
        t.add_row(
            r.model,
            r.method,
            r.hardware,
            str(r.nodes),
            str(r.micro_batch),
            f"{p.memory.per_gpu.peak_bytes / GIB:.1f}",
            f"{p.throughput.tokens_per_s:,.0f}",
            f"{tc.seconds_per_epoch / 3600:.2f}",
            usd,
            fits,
        )
    console.print(t)
    if len(rows) > limit:
        console.print(f"[dim]{len(rows) - limit} more rows: use --json for all[/]")
    if kind == "cheapest" and rows and rows[0].usd_per_epoch is not None:
        best = rows[0]
        console.print(
            f"Cheapest: {best.hardware} x{best.nodes} node(s), micro batch {best.micro_batch}: "
            f"USD {best.usd_per_epoch:,.2f} per epoch, {best.plan.time_cost.seconds_per_epoch / 3600:.2f} h."
        )


def _engine(spec: TrainingSpec) -> str:
    """The sharding engine as the plan's header names it."""
    if spec.sharding == "ddp":
        return "DDP" if spec.gpus_per_node * spec.nodes > 1 else "one GPU"
    return spec.sharding.upper() if spec.sharding != "deepspeed" else f"ZeRO-{spec.zero_stage}"


def render_stacks(stacks: tuple[StackProfile, ...], console: Console) -> None:
    """``plan list stacks``: each profile's behaviours (values; the sources are in the files and
    in a plan's ``--json``)."""
    from planner.schema.stack import BEHAVIOURS

    t = Table(title="Training stacks (--stack NAME; every behaviour is also an option)")
    t.add_column("behaviour")
    for st in stacks:
        t.add_column(st.name)
    for b in BEHAVIOURS:
        # a stack's other engines (given with --sharding) beside its default one
        t.add_row(b, *("/".join([str(st.value(b, "-")), *st.engines]) if b == "sharding" else str(st.value(b, "-")) for st in stacks))
    console.print(t)
    for st in stacks:
        console.print(Text.assemble((st.name, "bold"), f": {st.title}. {st.description}"))


def render_models(models: tuple[Architecture, ...], console: Console) -> None:
    from planner.formulas.params import total_params

    t = Table(title="Models")
    for col in ("name", "aliases", "HF id", "type", "parameters", "layers", "hidden", "heads/kv", "vocab"):
        t.add_column(col)
    for a in models:
        t.add_row(
            a.name,
            ", ".join(a.aliases),
            a.hf_id or "",
            a.model_type,
            f"{total_params(a):,}",
            str(a.num_hidden_layers),
            str(a.hidden_size),
            f"{a.num_attention_heads}/{a.kv_heads}",
            str(a.vocab_size),
        )
    console.print(t)


def render_gpus(gpus: tuple[Gpu, ...], console: Console) -> None:
    t = Table(title="GPUs")
    for col in ("id", "name", "aliases", "usable GiB", "bf16/fp16 dense TFLOP/s", "memory TB/s", "NVLink GB/s (1 dir)"):
        t.add_column(col)
    for g in gpus:
        peak = g.peak_flops_per_s.get("bf16") or g.peak_flops_per_s.get("fp16") or 0
        nv = "—" if g.nvlink_bandwidth_bytes_per_s is None else f"{g.nvlink_bandwidth_bytes_per_s / GIGA:g}"
        t.add_row(
            g.id,
            g.name,
            ", ".join(g.aliases),
            gib(g.usable_memory_bytes),
            f"{peak / TERA:g}",
            f"{g.hbm_bandwidth_bytes_per_s / TERA:.2f}",
            nv,
        )
    console.print(t)


def render_instances(instances: tuple[Instance, ...], console: Console) -> None:
    t = Table(title="Instances")
    for col in ("id", "provider", "GPUs", "host GiB", "network", "USD/h", "region, as of"):
        t.add_column(col)
    for i in instances:
        usd = "—" if i.usd_per_hour is None else f"{i.usd_per_hour:,.2f}"
        t.add_row(
            i.id, i.provider, f"{i.gpu_count}× {i.gpu}", gib(i.host_memory_bytes), i.network, usd, f"{i.price_region}, {i.price_as_of}"
        )
    console.print(t)


def render_agreement(results: list[tuple[str, list]], console: Console, verbose: bool = False) -> None:
    """Planner vs measured records: one row per record (peak, the worst category, FLOPs).

    ``results`` holds (label, rows) pairs from ``planner.calibration.agreement.compare``; with ``verbose``
    every compared quantity gets its own row.
    """
    from rich.table import Table

    t = Table(title="Planner vs trace (per GPU, GiB; error = planner / trace - 1)", title_justify="left")
    for col in ("record", "quantity", "planner", "trace", "error", "ok"):
        t.add_column(col, justify="left" if col in ("record", "quantity") else "right")
    for name, rows in results:
        shown = rows if verbose else _headline_rows(rows)
        for i, r in enumerate(shown):
            flops = r.what.startswith("flops")
            fmt = (lambda x: f"{x:.4g}") if flops else (lambda x: f"{x / GIB:.2f}")
            err = f"{r.error_rel * 100:+.1f}%" if r.measured else ("0" if r.predicted == 0 else "inf")
            t.add_row(name if i == 0 else "", r.what, fmt(r.predicted), fmt(r.measured), err, "yes" if r.ok else "[red]NO[/red]")
        t.add_section()
    console.print(t)


def _headline_rows(rows: list) -> list:
    peak = [r for r in rows if r.what == "peak"]
    flops = [r for r in rows if r.what.startswith("flops")]
    cats = [r for r in rows if r.what.count(".") == 1 and not r.what.endswith(".total") and not r.what.startswith("flops")]
    failing = [r for r in cats if not r.ok]
    worst = failing or sorted((r for r in cats if r.measured), key=lambda r: -abs(r.error_rel) * (r.measured > r.allowed_abs))[:1]
    return peak + worst + flops
