"""``plan compare``: methods x hardware side by side, each at the given micro batch and at its
largest."""

from __future__ import annotations

from typing import Any

import typer

from planner import api
from planner.cli.options import PLAN_FIELDS, cli_option, given, options
from planner.cli.output import console, write_json
from planner.errors import PlannerError
from planner.schema.request import PlanRequest


@options((*PLAN_FIELDS, "methods", "instances"), cli=("as_json", "plot", "emit"), override={"emit": cli_option("emit", hidden=True)})
def compare(ctx: typer.Context, **values: Any) -> None:
    """Compare methods (--methods, default full,lora) on one or more instances (--instances
    A,B, or --instance / --gpu): memory per GPU and per node, the largest micro batch, time and
    dollars per epoch, at the given micro batch and at the largest that fits."""
    if values["emit"] is not None:
        raise PlannerError("--emit writes the configs of one plan; drop it from `plan compare`")
    rows = api.compare(PlanRequest.given(given(ctx, values)))
    if values["plot"] is not None:
        from planner.render.plots import compare_figure, save

        save(compare_figure([r.plan for r in rows]), values["plot"])
    if values["as_json"]:
        write_json([r.as_dict() for r in rows])
    else:
        from planner.render.tables import render_compare

        render_compare([(r.plan, r.plan_at_max_batch) for r in rows], console())
