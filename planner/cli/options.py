"""Every command-line option, declared once: built from ``PlanRequest``'s fields (flags, default,
help, range), plus the options that only the command line has (``--json``, ``--plot``,
``--emit``). A command names the options it takes (``options(...)``); its function receives
them as keyword arguments. The pattern of huggingface_hub's ``cli/_cli_utils.py``: aliases
declared once, thin commands."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from planner.schema.request import PlanRequest

#: The defaults, for a command's signature (``PlanRequest()``, without building its validator).
DEFAULT = PlanRequest.model_construct()


def _is_choice(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Literal


def option_info(name: str, flags: Iterable[str] | None = None, help: str | None = None, hidden: bool | None = None) -> Any:  # noqa: A002
    """The ``typer.Option`` of a request field (flags, help and visibility may be overridden by a
    command that spells the option its own way, as ``plan sweep`` does)."""
    field = PlanRequest.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    kw: dict[str, Any] = {
        "help": field.description if help is None else help,
        "hidden": bool(extra.get("hidden")) if hidden is None else hidden,
    }
    for meta in field.metadata:
        if hasattr(meta, "ge"):
            kw["min"] = meta.ge
        if hasattr(meta, "le"):
            kw["max"] = meta.le
    if _is_choice(field.annotation):
        kw["case_sensitive"] = False
    decls = list(PlanRequest.flags(name) if flags is None else flags)
    return typer.Option(*decls, **{k: v for k, v in kw.items() if v not in (None, "")})


def alias(name: str, flags: Iterable[str] | None = None, help: str | None = None, hidden: bool | None = None) -> Any:  # noqa: A002
    """A request field's ``Annotated`` alias, or spelled a command's own way (other flags, help,
    or hidden: kept out of ``--help`` so that a misplaced option gets a clear message, not "No
    such option")."""
    return Annotated[PlanRequest.model_fields[name].annotation, option_info(name, flags, help, hidden)]


#: ``Annotated`` aliases: one per request field (``OPTION["seq_len"]``).
OPTION: dict[str, Any] = {n: alias(n) for n in PlanRequest.model_fields}

#: The options only the command line has (outputs, not inputs of a plan): type, default, flag, help.
_CLI_ONLY: dict[str, tuple[Any, Any, str, str]] = {
    "as_json": (bool, False, "--json", "Print the result as JSON (raw integer bytes)."),
    "plot": (
        str | None,
        None,
        "--plot",
        "Also draw a PNG (needs matplotlib): memory per GPU by category and phase (plan), per GPU and per node "
        "against capacity (compare), the largest micro batch per hardware (sweep).",
    ),
    "emit": (
        str | None,
        None,
        "--emit",
        "Also write ready-to-run configs for the plan into this folder: ds_config.json, adapter_config.json, "
        "accelerate_config.yaml, launch.sh and run_spec.json (for `harness run --spec`).",
    ),
}


def cli_option(name: str, hidden: bool = False) -> Any:
    """A command-line-only option (``as_json``, ``plot``, ``emit``), or hidden from a command's
    ``--help`` where it does not belong."""
    typ, _, flag, text = _CLI_ONLY[name]
    return Annotated[typ, typer.Option(flag, help=text, hidden=hidden)]


Command = Callable[..., Any]


def options(fields: Iterable[str], cli: Iterable[str] = (), override: dict[str, Any] | None = None) -> Callable[[Command], Command]:
    """Give a command the options ``fields`` (request fields, in this order), the command-line
    outputs ``cli`` (``as_json``, ``plot``, ``emit``) and ``override`` (name -> an alias of
    its own). The command is called as ``f(ctx, **values)``."""
    override = override or {}

    def wrap(f: Command) -> Command:
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        for name in fields:
            annotation = override.get(name, OPTION[name])
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=getattr(DEFAULT, name)))
        for name in cli:
            annotation = override.get(name, cli_option(name))
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=_CLI_ONLY[name][1]))
        f.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return f

    return wrap


def given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The request fields given on the command line (not their defaults): what
    ``settings_sources`` reports as set by an option."""
    return {k: v for k, v in values.items() if k in PlanRequest.model_fields and given_on_command_line(ctx, k)}


def given_on_command_line(ctx: typer.Context, param: str) -> bool:
    """Whether an option was given on the command line (not its default). By name: typer may
    bring its own copy of click's ``ParameterSource``."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


#: The options of one plan's inputs (every request field but the lists of compare/sweep/cheapest).
PLAN_FIELDS = tuple(n for n in PlanRequest.model_fields if n not in ("models", "methods", "instances", "max_nodes"))
