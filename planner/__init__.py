"""Fine-tuning memory and cost planner: pure Python, no torch.

The public surface (``__all__``)::

    from planner import plan, compare, sweep, cheapest, PlanRequest
    p = plan("70b", method="lora", instance="p4de.24xlarge", batch_size="max")
    p.memory.per_gpu.peak_allocated_bytes, p.max_micro_batch_size, p.time_cost
    rows = sweep(models="7b,13b", methods="full,lora", instances="p4de.24xlarge")

``plan``, ``compare``, ``sweep`` and ``cheapest`` (``planner.api``) take ``plan``'s command-line
options as keyword arguments (``--lora-rank`` is ``lora_rank``, ``--grad-ckpt/--no-grad-ckpt``
is ``grad_ckpt=True/False``, comma lists may be lists), or a ``PlanRequest`` that holds them,
and return what the matching command prints with ``--json``: a ``Plan`` (``model_dump()`` is
that JSON) or rows (``row.as_dict()``). They never print and are safe to call from several
threads. Bad input raises ``PlannerError`` with the command line's one-line message.
``build_plan`` (``planner.estimate.plan``) is the lower-level entry point over a
``TrainingSpec``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from planner.api import cheapest, compare, plan, sweep
from planner.errors import PlannerError
from planner.schema.plan import Plan
from planner.schema.request import PlanRequest
from planner.schema.spec import DeepSpeedConfig, TrainingSpec

if TYPE_CHECKING:
    from planner.search import CompareRow, Row

__version__ = "0.1.0"
__all__ = [
    "CompareRow",
    "DeepSpeedConfig",
    "Plan",
    "PlanRequest",
    "PlannerError",
    "Row",
    "TrainingSpec",
    "__version__",
    "cheapest",
    "compare",
    "plan",
    "sweep",
]


def __getattr__(name: str) -> Any:
    """``Row`` and ``CompareRow`` (``planner.search``), imported when first asked for: a single
    plan does not load the searches."""
    if name in ("Row", "CompareRow"):
        from planner import search

        return getattr(search, name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
