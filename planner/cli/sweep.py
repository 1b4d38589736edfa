"""``plan sweep``: models x methods x hardware x micro batches in one table, ranked by dollars
per epoch."""

from __future__ import annotations

from typing import Any

import typer

from planner import api
from planner.cli.options import PLAN_FIELDS, alias, cli_option, given, options
from planner.cli.output import console, write_json
from planner.errors import PlannerError
from planner.schema.request import PlanRequest

#: In a sweep, --model, --method and --instance take comma lists (or all).
_LISTS = {
    "models": alias("models", ["--model", "-m", "--models"], help="Comma list of models, or all.", hidden=False),
    "methods": alias("methods", ["--method", "--methods"], help="Comma list of methods, or all (default full,lora)."),
    "instances": alias("instances", ["--instance", "-i", "--instances"], help="Comma list of priced instances, or all."),
    "batch_size": alias("batch_size", help="Comma list of micro batches per GPU and/or max (default 8)."),
    "emit": cli_option("emit", hidden=True),
}
_FIELDS = ("models", "methods", "instances", *(n for n in PLAN_FIELDS if n not in ("model", "method", "instance")))


@options(_FIELDS, cli=("as_json", "plot", "emit"), override=_LISTS)
def sweep(ctx: typer.Context, **values: Any) -> None:
    """Sweep models x methods x instances (or one --gpu with --gpus) x micro batches: one
    table, cheapest per epoch first; rows that do not fit say why."""
    if values["emit"] is not None:
        raise PlannerError("--emit writes the configs of one plan; drop it from `plan sweep`")
    rows = api.sweep(PlanRequest.given(given(ctx, values)))
    if values["plot"] is not None:
        from planner.render.plots import save, sweep_figure

        save(sweep_figure(rows), values["plot"])
    if values["as_json"]:
        write_json([r.as_dict() for r in rows])
    else:
        from planner.render.tables import render_rows

        render_rows(rows, console(), "sweep")
