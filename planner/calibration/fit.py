"""Robust fitting of the planner's coefficients to measurements, in pure Python (no torch).

The estimators are deliberately simple and robust to a few bad records (a run on a loaded
machine, a published point with a detail we mapped wrongly): medians, Theil-Sen lines
(the median of all pairwise slopes; Sen 1968, "Estimates of the regression coefficient based
on Kendall's tau", JASA 63) and a grid search that minimises the median absolute log error.

What is fitted from what (``fit_memory`` / ``fit_throughput``):

- ``optimizer_scratch_states``: the optimizer step's scratch in units of one optimizer-state
  tensor of the stepped elements, from the temporaries measured at the step of runs that keep
  the optimizer on the device (torch's single-tensor AdamW, the CPU default, holds ``sqrt``
  and its quotient at once: 2; the foreach path of CUDA holds one: 1).
- ``allocator_reserve_fraction`` and ``host_process_bytes`` on CPU: the process's peak RSS is
  ``host_process_bytes + (1 + allocator_reserve_fraction) * peak tensor bytes`` (Theil-Sen over
  the runs' ranks). On CUDA ``allocator_reserve_fraction`` is the median of
  ``max_reserved / max_allocated - 1``.
- ``compute_efficiency_max`` and ``compute_tokens_half``: the step-time model's plateau
  efficiency and half-saturation tokens, from tokens/s of GPU runs and published points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("median of nothing")
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (``numpy.quantile``'s default method)."""
    if not xs:
        raise ValueError("quantile of nothing")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def rel_error(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured if measured else (0.0 if predicted == 0 else math.inf)


@dataclass(frozen=True)
class Summary:
    """Relative errors of one quantity: how many, and the median, 90th percentile and worst
    of their absolute values (signed median too, to show a bias)."""

    n: int
    median_rel: float
    p90_rel: float
    max_rel: float
    bias_rel: float

    @property
    def band_rel(self) -> float:
        """The error band a plan shows: the 90th percentile, or the worst case below 10 records."""
        return self.p90_rel if self.n >= 10 else self.max_rel


def summarize(errors: Sequence[float]) -> Summary:
    if not errors:
        raise ValueError("no errors to summarize")
    mags = [abs(e) for e in errors]
    return Summary(n=len(errors), median_rel=median(mags), p90_rel=quantile(mags, 0.9), max_rel=max(mags), bias_rel=median(errors))


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Slope and intercept of the Theil-Sen line through (xs, ys): the median pairwise slope,
    then the median of ``y - slope * x``. Needs two distinct x values."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    if not slopes:
        raise ValueError("a line needs two distinct x values")
    slope = median(slopes)
    return slope, median([y - slope * x for x, y in zip(xs, ys, strict=True)])


def geometric_grid(lo: float, hi: float, n: int) -> list[float]:
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def grid_search(loss: Callable[..., float], grids: Sequence[Sequence[float]], refine: int = 2) -> tuple[float, ...]:
    """The grid point minimising ``loss(*point)``, then ``refine`` rounds of a finer grid
    around it (each axis: the neighbours of the best point, 9 steps between them)."""
    axes = [list(g) for g in grids]
    best: tuple[float, ...] = ()
    for _ in range(refine + 1):
        points: list[tuple[float, ...]] = [()]
        for axis in axes:
            points = [p + (v,) for p in points for v in axis]
        best = min(points, key=lambda p: loss(*p))
        new_axes = []
        for axis, v in zip(axes, best, strict=True):
            i = axis.index(v)
            lo, hi = axis[max(i - 1, 0)], axis[min(i + 1, len(axis) - 1)]
            new_axes.append([lo + (hi - lo) * k / 8 for k in range(9)] if hi > lo else [v])
        axes = new_axes
    return best


def median_abs_log_error(predicted: Sequence[float], measured: Sequence[float]) -> float:
    return median([abs(math.log(p / m)) for p, m in zip(predicted, measured, strict=True)])
