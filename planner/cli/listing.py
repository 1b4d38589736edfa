"""``plan list models|gpus|instances|stacks``: the catalog."""

from __future__ import annotations

from typing import Literal

import typer

from planner import catalog
from planner.cli.output import console


def list_catalog(what: Literal["models", "gpus", "instances", "stacks"] = typer.Argument(..., case_sensitive=False)) -> None:
    """List the catalog: models, gpus, instances or stacks (the training stacks' behaviours)."""
    from planner.render import tables

    out = console()
    if what == "models":
        tables.render_models(catalog.architectures(), out)
    elif what == "gpus":
        tables.render_gpus(catalog.gpus(), out)
    elif what == "stacks":
        tables.render_stacks(catalog.stacks(), out)
    else:
        tables.render_instances(catalog.instances(), out)
