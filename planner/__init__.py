"""Fine-tuning memory and cost planner: pure Python, no torch.

The public surface (``__all__``)::

    from planner import plan
    p = plan("70b", method="lora", instance="p4de.24xlarge", batch_size="max")
    p.memory.per_gpu.peak_allocated_bytes, p.max_micro_batch_size, p.time_cost

``plan`` takes ``plan``'s command-line options as keyword arguments (``--lora-rank`` is
``lora_rank``, ``--grad-ckpt/--no-grad-ckpt`` is ``grad_ckpt=True/False``, comma lists may be
lists) and returns the same pydantic model that ``plan --json`` prints (``Plan``; its
``model_dump()`` is that JSON). Bad input raises ``PlannerError`` with the CLI's one-line
message. ``build_plan`` (``from planner.estimate.plan import build_plan``) is the lower-level entry
point over a ``TrainingSpec``. NB: ``planner.estimate.plan`` is this function; the module of that name
is reached with ``from planner.estimate.plan import ...``.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from planner.errors import PlannerError
from planner.schema.spec import DeepSpeedConfig, TrainingSpec

if TYPE_CHECKING:
    from planner.schema.plan import Plan

__version__ = "0.1.0"
__all__ = ["DeepSpeedConfig", "Plan", "PlannerError", "TrainingSpec", "__version__", "plan"]


def __getattr__(name: str) -> Any:
    if name == "Plan":
        from planner.schema.plan import Plan

        return Plan
    raise AttributeError(f"module 'planner' has no attribute {name!r}")


def _argv(options: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, str)):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def plan(model: str, **options: Any) -> Plan:
    """Plan one fine-tuning job: what ``plan --model MODEL [options] --json`` prints, as a
    ``Plan``. Options are ``plan``'s, with underscores: ``method``, ``instance`` or ``gpu``
    (+ ``gpus``), ``nodes``, ``batch_size`` (a number or ``"max"``), ``seq_len``, ``zero``,
    ``offload``, ``grad_ckpt``, ``precision``, ``lora_rank``, ``lora_targets``, ``deepspeed``
    / ``peft`` / ``accelerate_config`` (file paths), ``calibration``, ``dataset_tokens``,
    ``epochs``, ... (``plan --help``)."""
    from planner.cli import app
    from planner.schema.plan import Plan

    if {"json", "emit", "mode", "help", "plot"} & set(options):
        raise PlannerError("plan(): json, emit, plot, mode and help are command-line only")
    argv = ["--model", str(model), *_argv(options), "--json"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            app(args=argv, prog_name="plan", standalone_mode=False)
    except PlannerError:
        raise
    except Exception as exc:
        # typer's usage errors (unknown option, bad choice): the CLI's one line
        if hasattr(exc, "format_message"):
            message = " ".join(exc.format_message().split())
            raise PlannerError(f"plan(): {message}") from None
        raise
    finally:
        sys.stdout.flush()
    return Plan.model_validate_json(out.getvalue())
