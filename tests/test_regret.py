"""Regret on J curves whose area is known by hand."""

from __future__ import annotations

import pytest

from mrt_star.progress.regret import area_under, normalized_regret, regret_at_budgets


def test_step_curve_known_area():
    # (0,0) → (10,1): triangle of area 5, then J=1 held to 20: area 10; total 15 of 20.
    assert area_under([10], [1.0], 20) == pytest.approx(15.0)
    assert normalized_regret([10], [1.0], 20) == pytest.approx(0.25)


def test_interpolates_at_budget_inside_a_segment():
    # (0,0) → (10,0.5) → (30,1.0); at C=20 the curve is 0.75: area = 2.5 + (0.5+0.75)/2*10 = 8.75
    assert area_under([10, 30], [0.5, 1.0], 20) == pytest.approx(8.75)
    assert normalized_regret([10, 30], [0.5, 1.0], 20) == pytest.approx(1 - 8.75 / 20)


def test_dip_and_hold_and_start_value():
    # A dip in J lowers the area: (0,0)→(4,1)→(8,0)→(12,1), held to 16: 2+2+2+4 = 10
    assert area_under([4, 8, 12], [1, 0, 1], 16) == pytest.approx(10.0)
    assert area_under([4], [1.0], 4, start_value=1.0) == pytest.approx(4.0)
    assert [r["value"] for r in regret_at_budgets([10], [1.0], [10, 20])] == pytest.approx([0.5, 0.25])


def test_bad_curves_are_rejected():
    with pytest.raises(ValueError, match="must not decrease"):
        area_under([5, 3], [0.1, 0.2], 10)
    with pytest.raises(ValueError, match="budget must be positive"):
        area_under([5], [1], 0)
