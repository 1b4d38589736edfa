"""Memoisation per model and setup, shared by the memory and time compositions.

Sweeps ask for the same model and setup at many micro batches; quantities that do not depend
on the micro batch, the sequence length or the accumulation are computed once per setup.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, TypeVar

from planner.schema.catalog import Architecture
from planner.schema.spec import TrainingSpec

T = TypeVar("T")

_MEMO: dict[tuple[int, tuple[Any, ...], str], tuple[Architecture, Any]] = {}
#: Spec fields a memoised quantity must not depend on (it is shared across them); the key is
#: every other field.
_PER_STEP_FIELDS = frozenset({"micro_batch_size", "seq_len", "grad_accum"})
_setup_fields = operator.itemgetter(*(f for f in TrainingSpec.model_fields if f not in _PER_STEP_FIELDS))


def per_setup(arch: Architecture, spec: TrainingSpec, what: str, compute: Callable[[], T]) -> T:
    """Memoise a quantity that does not depend on the micro batch, sequence or accumulation:
    sweeps ask for the same model and setup at many micro batches. The entry keeps the
    architecture it was computed for (ids are only compared while it lives)."""
    key = (id(arch), _setup_fields(spec.__dict__), what)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] is arch:
        return hit[1]  # type: ignore[no-any-return]
    if len(_MEMO) > 8192:
        _MEMO.clear()
    value = compute()
    _MEMO[key] = (arch, value)
    return value
