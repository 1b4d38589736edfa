"""``python -m planner.calibration COMMAND``: the calibration loop's own commands.

- ``residuals NAME``: recompute a calibration file's residuals (``calibrate.main``)
- ``published [--write|--check]``: the published points as measurement records
- ``plot [RECORDS] [CALIBRATION] --out FILE.png``: the planner against real runs
- ``report``: the agreement tables (planner vs traces, real runs, published points)
"""

from __future__ import annotations

import sys

COMMANDS = ("residuals", "published", "plot", "report")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print(__doc__, file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help") else 2
    import importlib

    command, rest = args[0], args[1:]
    if command == "residuals" and rest and not rest[0].startswith("-"):
        rest = ["--residuals", *rest]
    module = {"residuals": "calibrate", "published": "published", "plot": "plots", "report": "report"}[command]
    run = importlib.import_module(f"planner.calibration.{module}").main
    return int(run(rest))


if __name__ == "__main__":
    sys.exit(main())
