"""The throughput model against published training throughput (data/published/throughput.json).

With today's cited default coefficients (not fitted), the median absolute error over the 45
points is 9.7 % (11.0 % before the plateau efficiency followed each GPU's measured matmul
ceiling). H100 runs are still over-predicted (-2 to +16 %) and A100-80GB runs under-predicted
(-7 to -21 %): the matmul ceilings (0.803 vs 0.869 of peak) explain a third of the gap between
the generations; fitting per device from real runs (issue 5) is the next step. The assertion
guards against getting worse. The full table prints at the end of every test run.
"""

from __future__ import annotations

import statistics

import pytest

from planner.published import predicted_tokens_per_s_per_gpu, published_throughput

POINTS = published_throughput()
MEDIAN_ABS_ERROR_MAX = 0.11


def test_points_are_there():
    assert len(POINTS) >= 40
    assert len({p.id for p in POINTS}) == len(POINTS)


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p.id)
def test_each_point_is_predicted_within_2x(point):
    """No mapping is wildly wrong; points whose runs the planner knowingly does not model (their
    ``known_gap``) are only required to be predicted, and stay in the median and the table."""
    ratio = predicted_tokens_per_s_per_gpu(point) / point.tokens_per_s_per_gpu
    assert ratio > 0
    if point.known_gap is None:
        assert 0.5 < ratio < 2.0


def test_median_error_against_published_throughput():
    errors = [abs(predicted_tokens_per_s_per_gpu(p) / p.tokens_per_s_per_gpu - 1) for p in POINTS]
    assert statistics.median(errors) <= MEDIAN_ABS_ERROR_MAX
