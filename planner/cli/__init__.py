"""The ``plan`` command line (``planner.cli.commands``); ``main`` is the console entry point."""

from __future__ import annotations

from planner.cli.commands import full_app, main, run_cli
from planner.cli.options import given_on_command_line

__all__ = ["full_app", "given_on_command_line", "main", "run_cli"]
