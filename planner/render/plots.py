"""Pictures of plans (``--plot FILE.png``) and of the calibration (``python -m planner.calibration plot``).

matplotlib is optional (``pip install 'ft-planner[plot]'``) and imported only here, only when a
picture is asked for. Sizes are drawn in GiB (2^30 bytes), labelled as such.

- ``plan_figure``: one plan, memory per GPU by category in each phase, against the GPU.
- ``compare_figure``: several plans side by side (``plan compare``: full vs LoRA, like the
  seed's figures), memory per GPU at the peak and per node (all GPUs; host RAM), against
  capacity.
- ``sweep_figure``: ``plan sweep``'s largest micro batch per hardware and model/method.
- ``calibration_figure``: predicted vs measured peaks with the ±error band.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import PlannerError
from planner.schema.memory import GPU_PHASES as PHASES
from planner.units import GIB, MIB

if TYPE_CHECKING:
    from planner.schema.plan import Plan
    from planner.search import Row

#: The stacked bars: each category's ``--json`` key (``schema.memory.CATEGORIES`` in order), then
#: the overhead, with a label and a colour (colour-blind safe, Okabe-Ito).
STACK = (
    ("parameters_bytes", "parameters", "#0072B2"),
    ("gradients_bytes", "gradients", "#E69F00"),
    ("optimizer_states_bytes", "optimizer states (fp32 master, moments)", "#009E73"),
    ("activations_bytes", "activations", "#CC79A7"),
    ("temporaries_bytes", "temporaries (buckets, gathers, scratch)", "#56B4E9"),
    ("overhead_bytes", "allocator reserve + CUDA context", "#BBBBBB"),
)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlannerError("--plot needs matplotlib: pip install 'ft-planner[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (the folder must exist); errors name the file."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise PlannerError(f"--plot {out}: give a .png file name")
    try:
        fig.savefig(out, dpi=130, bbox_inches="tight")
    except OSError as exc:
        raise PlannerError(f"--plot {out}: cannot write ({exc.strerror})") from None
    finally:
        _pyplot().close(fig)
    return out


def _title(p: Plan) -> str:
    s, hw = p.inputs.spec, p.inputs.hardware
    where = hw.instance or f"{hw.gpus_per_node}x {hw.gpu_name}"
    shard = s.sharding.upper() if s.sharding in ("fsdp2", "fsdp1", "ddp") else f"ZeRO-{s.zero_stage}"
    return f"{p.inputs.model} {s.method}, {where}, micro batch {s.micro_batch_size} x {s.seq_len}, {shard}, offload {s.offload}"


def _stack(ax: Any, x: Sequence[float], splits: Sequence[dict[str, int]], width: float = 0.6) -> None:
    bottom = [0.0] * len(x)
    for key, label, colour in STACK:
        heights = [sp.get(key, 0) / GIB for sp in splits]
        ax.bar(x, heights, width, bottom=bottom, label=label, color=colour, edgecolor="white", linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]


def _capacity(ax: Any, gib: float, label: str) -> None:
    ax.axhline(gib, color="#D55E00", linestyle="--", linewidth=1.5, label=label)


def plan_figure(p: Plan) -> Any:
    """Memory per GPU by category in each phase of one plan, against the GPU's memory."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    splits = []
    for phase in PHASES:
        sp = getattr(p.memory.per_gpu.phase_splits_bytes, phase)
        d = sp.model_dump()
        if phase == p.memory.per_gpu.peak_phase:
            d["overhead_bytes"] = p.memory.per_gpu.overhead_bytes
        splits.append(d)
    _stack(ax, range(len(PHASES)), splits)
    _capacity(ax, p.memory.gpu_capacity_bytes / GIB, f"GPU memory usable ({p.memory.gpu_capacity_bytes / GIB:.0f} GiB)")
    ax.set_xticks(range(len(PHASES)), [ph.replace("_", " ") + (" *" if ph == p.memory.per_gpu.peak_phase else "") for ph in PHASES])
    ax.set_ylabel("memory per GPU (GiB)")
    ax.set_title(_title(p), fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.text(0.01, 0.01, "* peak phase (reserve + context drawn there)", fontsize=7)
    return fig


def compare_figure(plans: Sequence[Plan]) -> Any:
    """Plans side by side: per GPU at each one's peak (stacked by category) and per node (all
    the node's GPUs, and host RAM), each against its capacity."""
    plt = _pyplot()
    fig, (gpu_ax, node_ax) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"{p.inputs.spec.method}\n{p.inputs.hardware.instance or p.inputs.hardware.gpu}\nb={p.inputs.spec.micro_batch_size}" for p in plans]  # noqa: E501
    splits = [{key: getattr(p.memory.per_gpu, key) for key, _, _ in STACK} for p in plans]
    _stack(gpu_ax, range(len(plans)), splits)
    for i, p in enumerate(plans):
        cap = p.memory.gpu_capacity_bytes / GIB
        gpu_ax.hlines(cap, i - 0.4, i + 0.4, color="#D55E00", linestyle="--", linewidth=1.5)
        verdict = "fits" if p.memory.fits_gpu else "does not fit"
        gpu_ax.text(i, p.memory.per_gpu.peak_bytes / GIB, verdict, ha="center", va="bottom", fontsize=8)
    gpu_ax.plot([], [], color="#D55E00", linestyle="--", label="GPU memory usable")
    gpu_ax.set_xticks(range(len(plans)), labels, fontsize=8)
    gpu_ax.set_ylabel("memory per GPU at the peak phase (GiB)")
    gpu_ax.set_title("per GPU", fontsize=10)
    gpu_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    xs = range(len(plans))
    gpu_node = [p.memory.per_node_gpu.peak_bytes / GIB for p in plans]
    host = [p.memory.per_node_cpu.peak_bytes / GIB for p in plans]
    node_ax.bar([x - 0.2 for x in xs], gpu_node, 0.4, label="GPU memory, all GPUs of a node", color="#0072B2")
    node_ax.bar([x + 0.2 for x in xs], host, 0.4, label="host RAM (peak: load, train or save)", color="#E69F00")
    for i, p in enumerate(plans):
        node_ax.hlines(p.memory.per_node_gpu.capacity_bytes / GIB, i - 0.4, i, color="#0072B2", linestyle="--", linewidth=1.2)
        if p.memory.host_capacity_bytes is not None:
            node_ax.hlines(p.memory.host_capacity_bytes / GIB, i, i + 0.4, color="#E69F00", linestyle="--", linewidth=1.2)
    node_ax.plot([], [], color="grey", linestyle="--", label="capacity")
    node_ax.set_xticks(list(xs), labels, fontsize=8)
    node_ax.set_ylabel("memory per node (GiB)")
    node_ax.set_title("per node", fontsize=10)
    node_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    first = plans[0]
    fig.suptitle(f"{first.inputs.model}, micro batch x seq {first.inputs.spec.micro_batch_size} x {first.inputs.spec.seq_len}", fontsize=10)
    fig.tight_layout()
    return fig


def sweep_figure(rows: Sequence[Row]) -> Any:
    """The largest micro batch per GPU that fits, per hardware, one bar per model and method."""
    plt = _pyplot()
    hardware = list(dict.fromkeys(r.hardware for r in rows))
    series = list(dict.fromkeys(f"{r.model} {r.method}" for r in rows))
    best: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (f"{r.model} {r.method}", r.hardware)
        best[key] = max(best.get(key, 0), r.plan.max_micro_batch_size if r.plan is not None else 0)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(hardware)), 4.5))
    width = 0.8 / max(1, len(series))
    for j, name in enumerate(series):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(hardware))]
        heights = [best.get((name, h), 0) for h in hardware]
        ax.bar(xs, heights, width, label=name)
        for x, h in zip(xs, heights, strict=True):
            ax.text(x, h, str(h), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(hardware)), hardware, fontsize=8)
    ax.set_ylabel("largest micro batch per GPU that fits")
    seq = rows[0].plan.inputs.spec.seq_len if rows and rows[0].plan else None
    ax.set_title(f"Largest micro batch (sequence {seq}); 0 = not even 1 fits", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def calibration_figure(points: Sequence[tuple[float, float, str]], band_rel: float | None, title: str) -> Any:
    """Predicted against measured bytes (log-log) with y = x and the ± band; ``points`` are
    (measured, predicted, group)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    groups = list(dict.fromkeys(g for _, _, g in points))
    for g in groups:
        xs = [m / MIB for m, _, gg in points if gg == g]
        ys = [p / MIB for _, p, gg in points if gg == g]
        ax.scatter(xs, ys, s=18, label=g, alpha=0.8)
    lo = min(min(m, p) for m, p, _ in points) / MIB * 0.8
    hi = max(max(m, p) for m, p, _ in points) / MIB * 1.25
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="planner = measured")
    if band_rel:
        for sign in (1, -1):
            ax.plot([lo, hi], [lo * (1 + sign * band_rel), hi * (1 + sign * band_rel)], color="grey", linestyle="--", linewidth=1)
        ax.plot([], [], color="grey", linestyle="--", label=f"± {band_rel:.1%} (90th percentile |error|)")
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.set_xlabel("measured peak live tensors (MiB)")
    ax.set_ylabel("planner (MiB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig
