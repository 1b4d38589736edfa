"""The rules of the house, checked on the source: which room may import which.

The graph counts every ``import`` in ``planner/``, also those inside functions (a lazy import
is still a dependency), but not those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

PLANNER = Path(__file__).resolve().parents[2] / "planner"


def _module(path: Path) -> str:
    rel = path.relative_to(PLANNER.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The planner modules ``path`` imports (a package import counts as its ``__init__``)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    here = _module(path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "planner"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "planner":
            for a in node.names:  # ``from planner.x import y``: y may itself be a module
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m != here}


MODULES = {_module(p) for p in PLANNER.rglob("*.py")}
GRAPH = {_module(p): _imports(p) for p in PLANNER.rglob("*.py")}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_graph_is_read():
    assert "planner.estimate.plan" in GRAPH and "planner.schema.spec" in GRAPH["planner.estimate.plan"]


def test_no_import_cycle_in_planner():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(n) :], n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


#: What each room may import (besides itself, ``planner.errors`` and ``planner.units``).
ALLOWED = {
    "schema": set(),
    "units": set(),
    "errors": set(),
    "catalog": {"schema"},
    "formulas": {"schema", "formulas"},
    "estimate": {"schema", "formulas", "catalog"},
    "search": {"schema", "estimate", "catalog", "formulas"},
    "configs": {"schema", "catalog", "formulas"},
    "api": {"schema", "estimate", "catalog", "formulas", "search", "configs"},
    "render": {"schema", "catalog", "formulas", "search"},
    "cli": {"schema", "estimate", "catalog", "formulas", "search", "configs", "api", "render"},
    "calibration": {"schema", "estimate", "catalog", "formulas", "configs", "render", "calibration", "api"},
    "__init__": {"api", "schema", "errors", "search"},
}


def test_each_room_imports_only_what_it_may():
    bad = []
    for m, deps in sorted(GRAPH.items()):
        room = _room(m)
        allowed = ALLOWED[room] | {room, "errors", "units"}
        bad += [f"{m} imports {d}" for d in sorted(deps) if _room(d) not in allowed]
    assert not bad, "\n".join(bad)


def test_the_core_never_imports_the_calibration_loop():
    core = [m for m in GRAPH if _room(m) not in ("calibration", "cli")]
    assert not [(m, d) for m in core for d in GRAPH[m] if _room(d) == "calibration"]


def _unit_literals(path: Path) -> list[str]:
    """Where ``path``'s code (not its strings or comments) spells a binary or decimal unit:
    ``2**30``, ``2**20``, ``10**9``, ``1 << 30``, ``1e9``, ``1e12``."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline) if t.type in (tokenize.NUMBER, tokenize.OP)]
    found = []
    for i, t in enumerate(toks):
        if t.type == tokenize.NUMBER and t.string.lower() in ("1e9", "1e12"):
            found.append(f"{path.relative_to(PLANNER.parent)}:{t.start[0]}: {t.line.strip()}")
        if i + 2 < len(toks) and toks[i + 1].string in ("**", "<<") and t.type == toks[i + 2].type == tokenize.NUMBER:
            base, exp = t.string, toks[i + 2].string
            unit = (base, toks[i + 1].string) in (("2", "**"), ("10", "**"), ("1", "<<"))
            if unit and exp in ("10", "20", "30", "40", "3", "6", "9", "12"):
                found.append(f"{path.relative_to(PLANNER.parent)}:{t.start[0]}: {t.line.strip()}")
    return found


def test_units_are_spelled_only_in_units_py():
    found = [f for p in sorted(PLANNER.rglob("*.py")) if p.name != "units.py" for f in _unit_literals(p)]
    assert not found, "\n".join(found)


def test_planner_never_imports_the_harness_or_torch():
    """The harness imports the planner (schema, catalog, api, the CLI's option aliases), never the
    reverse; and ``planner/`` stays pure Python."""
    banned = ("harness", "torch", "transformers", "peft", "deepspeed", "accelerate", "bitsandbytes", "ray")
    found = []
    for p in PLANNER.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{_module(p)} imports {n}" for n in names if n.split(".")[0] in banned]
    assert not found, "\n".join(found)
