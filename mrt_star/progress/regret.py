"""Cumulative regret of a J curve on the token axis (DESIGN.md §1, parity with the reference analysis).

regret(C) = 1 − (1/C)·∫_0^C J(t) dt over the points (tokens_j, J_j) with (0, 0) prepended, joined by
straight lines (trapezoid rule), the last J held after the trace ends, and the curve interpolated at C.
The best achievable curve is J = 1 from the first token, so 0 is perfect and 1 is never solving.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise


def area_under(tokens: Sequence[float], values: Sequence[float], budget: float, start_value: float = 0.0) -> float:
    """Return ∫_0^budget J(t) dt for the piecewise-linear curve through (0, start_value) and the points."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} token positions but {len(values)} J values")
    xs, ys = [0.0], [float(start_value)]
    for t, v in zip(tokens, values, strict=True):
        if t < xs[-1]:
            raise ValueError("token positions must not decrease")
        if t == xs[-1]:
            ys[-1] = float(v) if t > 0 else ys[-1]
            continue
        xs.append(float(t))
        ys.append(float(v))
    area = 0.0
    for (x0, y0), (x1, y1) in pairwise(zip(xs, ys, strict=True)):
        if x0 >= budget:
            break
        if x1 > budget:  # interpolate at the budget
            y1 = y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
            x1 = budget
        area += (x1 - x0) * (y0 + y1) / 2
    if xs[-1] < budget:  # hold the last J after the trace ends
        area += (budget - xs[-1]) * ys[-1]
    return area


def normalized_regret(tokens: Sequence[float], values: Sequence[float], budget: float,
                      start_value: float = 0.0) -> float:
    """Return 1 − (1/C)·∫_0^C J(t) dt: the trace's regret against always-solved, in [0, 1] for J in [0, 1]."""
    return 1.0 - area_under(tokens, values, budget, start_value) / budget


def regret_at_budgets(tokens: Sequence[float], values: Sequence[float], budgets: Sequence[float],
                      start_value: float = 0.0) -> list[dict[str, float]]:
    """Return [{budget, value}] of normalized regret for each budget (the scored-trace column format)."""
    return [{"budget": float(c), "value": normalized_regret(tokens, values, c, start_value)} for c in budgets]
