"""``plan cheapest``: every priced instance at 1..--max-nodes nodes; the cheapest that fits."""

from __future__ import annotations

from typing import Any

import typer

from planner import api
from planner.cli.options import PLAN_FIELDS, alias, cli_option, given, options
from planner.cli.output import console, write_json
from planner.errors import PlannerError
from planner.schema.request import PlanRequest

_HIDDEN = {
    "instance": alias("instance", hidden=True),
    "instances": alias("instances", hidden=True),
    "plot": cli_option("plot", hidden=True),
    "emit": cli_option("emit", hidden=True),
}


@options((*PLAN_FIELDS, "instances", "max_nodes"), cli=("as_json", "plot", "emit"), override=_HIDDEN)
def cheapest(ctx: typer.Context, **values: Any) -> None:
    """Search every priced catalog instance (--gpu keeps one GPU type) at 1..--max-nodes nodes
    and rank them by dollars per epoch: the cheapest that fits first."""
    if values["emit"] is not None:
        raise PlannerError("--emit writes the configs of one plan; drop it from `plan cheapest`")
    if values["plot"] is not None:
        raise PlannerError("--plot goes with plan, `plan compare` and `plan sweep`")
    rows = api.cheapest(PlanRequest.given(given(ctx, values)))
    if values["as_json"]:
        write_json({"cheapest": rows[0].as_dict(), "candidates": [r.as_dict() for r in rows]})
    else:
        from planner.render.tables import render_rows

        render_rows(rows, console(), "cheapest")
