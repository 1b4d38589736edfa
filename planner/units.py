"""The only place units are spelled: binary sizes (GiB = 2**30 bytes), decimal prefixes (a
vendor's GB = 10**9 bytes, TFLOP/s = 10**12 FLOP/s) and ceiling division (sharding rounds up).

Bytes are ``int`` everywhere; GiB appear only at display (``planner.render``), labelled GiB.
"""

from __future__ import annotations

KIB = 2**10
MIB = 2**20
GIB = 2**30
TIB = 2**40

KILO = 10**3
MEGA = 10**6
GIGA = 10**9
TERA = 10**12


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ints, exactly (no float): one rank's share of ``a``
    items split over ``b`` ranks, rounded up."""
    if b <= 0:
        raise ValueError(f"ceil_div by {b}")
    return -(-a // b)


def gib(n_bytes: float) -> float:
    """Bytes as GiB (display only)."""
    return n_bytes / GIB


def mib(n_bytes: float) -> float:
    """Bytes as MiB (display only)."""
    return n_bytes / MIB
