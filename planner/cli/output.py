"""The one output path of the commands: JSON on stdout, or rich tables; chatter on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any


def console() -> Any:  # imported lazily: rich is not needed for --json
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def write_json(value: Any) -> None:
    """``value`` (a pydantic model, or plain JSON data) as indented JSON on stdout."""
    text = value.model_dump_json(indent=2) if hasattr(value, "model_dump_json") else json.dumps(value, indent=2)
    sys.stdout.write(text + "\n")


def say(message: str) -> None:
    """A line for the user that is not the result: stderr."""
    print(message, file=sys.stderr)
