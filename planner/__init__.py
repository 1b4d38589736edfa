"""Fine-tuning memory and cost planner: pure Python, no torch.

The public entry point is :func:`planner.plan.build_plan`; the CLI lives in
:mod:`planner.cli`.
"""

__version__ = "0.1.0"
