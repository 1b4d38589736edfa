"""The ``plan`` command line: the typer app, its commands, and the one way errors leave it.

Errors in the input print one line on stderr and exit 2; "does not fit" is a result (exit 0).
Each command is a thin module (``plan_cmd``, ``compare``, ``sweep``, ``cheapest``, ``listing``)
over ``planner.api``; tables and pictures are ``planner.render``.
"""

from __future__ import annotations

import sys

import typer

from planner.cli import cheapest, compare, listing, plan_cmd, sweep
from planner.errors import PlannerError

app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help=(
        "Plan the memory, time and cost of fine-tuning an LLM before renting GPUs. "
        "`plan --model ... --instance ...` plans one job; the commands below compare, sweep and search."
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback(invoke_without_command=True)(plan_cmd.plan)
app.command("compare")(compare.compare)
app.command("sweep")(sweep.sweep)
app.command("cheapest")(cheapest.cheapest)
app.command("list")(listing.list_catalog)


def run_cli(typer_app: typer.Typer, prog: str, argv: list[str] | None) -> int:
    """Run a typer app: every input error becomes one line on stderr and exit code 2."""
    try:
        rv = typer_app(args=argv, prog_name=prog, standalone_mode=False)
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
    return run_cli(app, "plan", list(sys.argv[1:] if argv is None else argv))
