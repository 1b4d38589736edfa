"""The ``plan`` command line: the typer app, its commands, and the one way errors leave it.

Errors in the input print one line on stderr and exit 2; "does not fit" is a result (exit 0).
Each command is a thin module (``plan_cmd``, ``compare``, ``sweep``, ``cheapest``, ``listing``)
over ``planner.api``; tables and pictures are ``planner.render``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import typer

from planner.cli import plan_cmd
from planner.errors import PlannerError

_SETTINGS: dict[str, Any] = {
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
#: The commands besides ``plan`` itself: name -> (module in planner.cli, function), imported
#: when run or listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("compare", "compare"),
    "sweep": ("sweep", "sweep"),
    "cheapest": ("cheapest", "cheapest"),
    "list": ("listing", "list_catalog"),
}


def command(name: str) -> Callable[..., Any]:
    module, function = COMMANDS[name]
    return getattr(importlib.import_module(f"planner.cli.{module}"), function)  # type: ignore[no-any-return]


def full_app() -> typer.Typer:
    """``plan`` with every command (``plan --help`` lists them)."""
    app = typer.Typer(
        invoke_without_command=True,
        help=(
            "Plan the memory, time and cost of fine-tuning an LLM before renting GPUs. "
            "`plan --model ... --instance ...` plans one job; the commands below compare, sweep and search."
        ),
        **_SETTINGS,
    )
    app.callback(invoke_without_command=True)(plan_cmd.plan)
    for name in COMMANDS:
        app.command(name)(command(name))
    return app


def _one(command: Callable[..., Any]) -> typer.Typer:
    """An app of one command: typer builds every command's options before it runs one (about
    12 ms for the four commands), so a run builds only the command it runs."""
    one = typer.Typer(**_SETTINGS)
    one.command()(command)
    return one


def app_for(argv: list[str]) -> tuple[typer.Typer, str]:
    """The app that runs ``argv`` and its program name: one command (``plan compare ...`` is
    ``compare`` as ``plan compare``; options only are one plan), or every command for
    ``plan --help`` and what is no command."""
    if argv and argv[0] in COMMANDS:
        return _one(command(argv[0])), f"plan {argv[0]}"
    if not argv or argv[0].startswith("-") and not {"-h", "--help"} & set(argv):
        return _one(plan_cmd.plan), "plan"
    return full_app(), "plan"


def run_cli(typer_app: typer.Typer, prog: str, argv: list[str] | None, prog_name: str | None = None) -> int:
    """Run a typer app: every input error becomes one line on stderr (``prog: error: ...``) and
    exit code 2. ``prog_name`` is the name usage lines show (default ``prog``)."""
    try:
        rv = typer_app(args=argv, prog_name=prog_name or prog, standalone_mode=False)
    except PlannerError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        # typer's (vendored click's) usage errors: unknown option, bad choice, out of range.
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            msg = " ".join(exc.format_message().split())
            print(f"{prog}: error: {msg}", file=sys.stderr)
            return 2
        raise
    return rv if isinstance(rv, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``plan``): every input error is one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    one, name = app_for(args)
    return run_cli(one, "plan", args[1:] if name != "plan" else args, prog_name=name)
