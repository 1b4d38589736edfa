"""``plan --model M (--instance I | --gpu G [--gpus N]) [options]``: one plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from planner import api
from planner.cli.options import PLAN_FIELDS, alias, given, options
from planner.cli.output import console, say, write_json
from planner.schema.request import PlanRequest

#: ``plan``'s own options are one plan's; the lists of compare/sweep/cheapest are kept, hidden,
#: only to say where they go.
_ELSEWHERE = {n: alias(n, hidden=True) for n in ("models", "methods", "instances", "max_nodes")}


@options((*PLAN_FIELDS, *_ELSEWHERE), cli=("as_json", "plot", "emit"), override=_ELSEWHERE)
def plan(ctx: typer.Context, **values: Any) -> None:
    """Plan memory per GPU and per node, the largest micro batch that fits, checkpoint sizes,
    and (estimated) tokens/s, time and dollars per epoch.

    Also: `plan compare` (methods and instances side by side), `plan sweep` (comma lists or all
    for models, methods, instances, micro batches), `plan cheapest` (every priced instance, up to
    --max-nodes), `plan list models|gpus|instances`. Each has its own --help.
    """
    if ctx.invoked_subcommand is not None:
        return
    req = PlanRequest.given(given(ctx, values))
    done = api.planned(req)
    result = done.plan
    if values["emit"] is not None:
        from planner.configs.emit import emit

        # a catalog model by its name; a config.json by its absolute path (the run may start elsewhere)
        assert req.model is not None
        as_path = Path(req.model)
        run_model = str(as_path.resolve()) if (as_path.suffix == ".json" or as_path.is_dir()) and as_path.exists() else done.arch.name
        written = emit(values["emit"], run_model, done.arch, done.spec)
        say(f"wrote {', '.join(p.name for p in written)} to {values['emit']}")
    if values["plot"] is not None:
        from planner.render.plots import plan_figure, save

        save(plan_figure(result), values["plot"])
    if values["as_json"]:
        write_json(result)
    else:
        from planner.render.tables import render_plan

        render_plan(result, console())
