"""Cumulative regret of a J curve on a token axis (DESIGN.md §1, parity with the reference analysis).

regret(C) = 1 − (1/C)·∫_0^C J(t) dt over the points (tokens_j, J_j) with (0, start_value) prepended, joined
by straight lines (the trapezoid rule, as numpy's `trapz` reads the reference's arrays), the last J held
after the trace ends, and the curve interpolated at C. Two points at the same token position are a step
(a vertical jump, no area), never a ramp — including a jump at position 0 (J(−1) > 0 counts from t = 0).
The best achievable curve is J = 1 from the first token, so 0 is perfect and 1 is never solving.

Token axes (`REGRET_AXES`): `thinking` puts prefix j at its thinking tokens; `parity` puts it where the
reference analysis does — prompt + prefix + stop text + the mean tokens of the forced answers (`token_axis`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

REGRET_AXES = ("thinking", "parity")


def token_axis(prefix_tokens: Sequence[float], axis: str = "thinking", prompt_tokens: float = 0,
               stop_tokens: float = 0, answer_tokens: Sequence[float] | None = None) -> list[float]:
    """Return the token position of each prefix on `axis` (parity: prompt + prefix + stop + mean answer)."""
    if axis not in REGRET_AXES:
        raise ValueError(f"unknown regret axis {axis!r}; choose one of {', '.join(REGRET_AXES)}")
    if axis == "thinking":
        return [float(t) for t in prefix_tokens]
    answers = list(answer_tokens) if answer_tokens is not None else [0.0] * len(prefix_tokens)
    if len(answers) != len(prefix_tokens):
        raise ValueError(f"{len(prefix_tokens)} prefixes but {len(answers)} mean answer lengths")
    return [float(prompt_tokens) + float(t) + float(stop_tokens) + float(a)
            for t, a in zip(prefix_tokens, answers, strict=True)]


def _points(tokens: Sequence[float], values: Sequence[float], start_value: float) -> list[tuple[float, float]]:
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} token positions but {len(values)} J values")
    points = [(0.0, float(start_value))]
    for t, v in zip(tokens, values, strict=True):
        if float(t) < points[-1][0]:
            raise ValueError("token positions must not decrease")
        points.append((float(t), float(v)))
    return points


def area_under(tokens: Sequence[float], values: Sequence[float], budget: float, start_value: float = 0.0) -> float:
    """Return ∫_0^budget J(t) dt for the curve through (0, start_value) and the points (steps at repeats)."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    points = _points(tokens, values, start_value)
    area = 0.0
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 >= budget:
            break
        if x1 > budget:  # interpolate at the budget
            y1 = y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
            x1 = budget
        area += (x1 - x0) * (y0 + y1) / 2
    last_x, last_y = points[-1]
    if last_x < budget:  # hold the last J after the trace ends
        area += (budget - last_x) * last_y
    return area


def normalized_regret(tokens: Sequence[float], values: Sequence[float], budget: float,
                      start_value: float = 0.0) -> float:
    """Return 1 − (1/C)·∫_0^C J(t) dt: the trace's regret against always-solved, in [0, 1] for J in [0, 1]."""
    return 1.0 - area_under(tokens, values, budget, start_value) / budget


def regret_at_budgets(tokens: Sequence[float], values: Sequence[float], budgets: Sequence[float],
                      start_value: float = 0.0) -> list[dict[str, float]]:
    """Return [{budget, value}] of normalized regret for each budget (the scored-trace column format)."""
    return [{"budget": float(c), "value": normalized_regret(tokens, values, c, start_value)} for c in budgets]
