"""Run a grid of ``harness run`` specs and append the records, resumably (no fit).

    python -m harness.run_grid [--grid cpu] [--out data/measurements/run/cpu.jsonl] [--limit N]

Kept for the commands recorded in existing measurements; ``harness calibrate GRID`` runs a grid
and then fits. Grids are ``data/grids/*.yaml`` (see ``harness.grid``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.grid import load_grid, run_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/measurements/run/cpu.jsonl"))
    parser.add_argument("--grid", default="cpu", help="a grid name from data/grids/ or a grid file")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many missing specs")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    command = f"python -m harness.run_grid --grid {args.grid} --out {args.out}"
    made = run_grid(grid, args.out, command, limit=args.limit, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{made} run(s) made; records in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
