"""From prover results to the numbers MRT filters on: the J curve, per-episode progress, regret.

Pure functions over plain lists, so they are tested on constructed prover results with known answers.
Index convention (DESIGN.md §1): position 0 of a J curve is the empty prefix j = −1, position i+1 is
the prefix through episode i; a trace with L episodes has L+1 J values and L progress values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from mrt_star.progress.regret import regret_at_budgets, token_axis


def j_from_samples(correct: Sequence[bool]) -> float:
    """Return the share of forced answers that are correct (the sampled estimate of J)."""
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def j_from_logprob(logprob: float) -> float:
    """Return J as the probability of the reference answer: exp(teacher-forced log-prob), in [0, 1]."""
    if logprob is None or math.isnan(logprob):
        return 0.0
    return float(min(1.0, math.exp(min(0.0, logprob))))


def j_tokens(episode_tokens: Sequence[int]) -> list[int]:
    """Return the token position of each prefix: 0, then the cumulative episode token counts."""
    out, total = [0], 0
    for n in episode_tokens:
        total += int(n)
        out.append(total)
    return out


def progress(j_values: Sequence[float]) -> list[float]:
    """Return r_prg(j) = J(j) − J(j−1) for each episode j = 0..L−1."""
    return [float(b - a) for a, b in zip(j_values, j_values[1:], strict=False)]


def cumulative_progress(j_values: Sequence[float]) -> float:
    """Return J(L−1) − J(−1): the progress summed over the trace's episodes."""
    return float(j_values[-1] - j_values[0]) if j_values else 0.0


def trace_metrics(j_values: Sequence[float], episode_tokens: Sequence[int], budgets: Sequence[float],
                  threshold: float = 0.5, axis: str = "thinking", prompt_tokens: float = 0, stop_tokens: float = 0,
                  answer_tokens: Sequence[float] | None = None) -> dict[str, Any]:
    """Return the scored-trace columns computed from one trace's J curve (see `schemas.SCORED`).

    `axis` places each prefix for the regret (`mrt_star.progress.regret.token_axis`): `thinking` at its
    thinking tokens, `parity` at prompt + prefix + stop text + `answer_tokens[j]` (the mean forced-answer
    tokens of prefix j). `j_tokens` stays the thinking-token position either way.
    """
    if len(j_values) != len(episode_tokens) + 1:
        raise ValueError(f"{len(episode_tokens)} episodes need {len(episode_tokens) + 1} J values, got {len(j_values)}")
    tokens = j_tokens(episode_tokens)
    values = [float(v) for v in j_values]
    positions = token_axis(tokens, axis, prompt_tokens, stop_tokens, answer_tokens)
    return {
        "j_tokens": tokens,
        "j_values": values,
        "progress": progress(values),
        "cumulative_progress": cumulative_progress(values),
        "j_start": values[0],
        "j_end": values[-1],
        "forced_final_correct": values[-1] > threshold,
        # Parity prepends (0, 0); J(−1) then jumps at the first position (a step, see regret.py).
        "regret": regret_at_budgets(positions, values, budgets) if budgets else [],
    }


# --- estimator agreement ----------------------------------------------------------------------------


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Return the Pearson correlation of two equal-length series (None if either is constant)."""
    n = len(xs)
    if n < 2 or n != len(ys):
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _sign(x: float, eps: float) -> int:
    return 0 if abs(x) <= eps else (1 if x > 0 else -1)


def estimator_agreement(curves_a: Iterable[Sequence[float]], curves_b: Iterable[Sequence[float]],
                        eps: float = 1e-9) -> dict[str, Any]:
    """Return how two J estimators agree over many traces.

    Keys: `j_correlation` (Pearson over all prefixes), `j_mean_abs_diff`, `progress_sign_agreement`
    (share of episodes whose progress has the same sign, zero counted as its own sign; `eps` is the
    dead zone), `progress_correlation`, and `prefixes`/`episodes` counted.
    """
    ja, jb, pa, pb = [], [], [], []
    for a, b in zip(curves_a, curves_b, strict=True):
        if len(a) != len(b):
            raise ValueError("the two estimators scored different numbers of prefixes")
        ja += list(a)
        jb += list(b)
        pa += progress(a)
        pb += progress(b)
    signs = [_sign(x, eps) == _sign(y, eps) for x, y in zip(pa, pb, strict=True)]
    # Many zero-progress episodes (J = 0 → 0 under sampling) inflate plain sign agreement; report the
    # agreement on episodes where either estimator sees any change too.
    moving = [s for s, x, y in zip(signs, pa, pb, strict=True) if abs(x) > eps or abs(y) > eps]
    return {
        "prefixes": len(ja),
        "episodes": len(pa),
        "j_correlation": pearson(ja, jb),
        "j_mean_abs_diff": sum(abs(x - y) for x, y in zip(ja, jb, strict=True)) / len(ja) if ja else None,
        "progress_sign_agreement": sum(signs) / len(signs) if signs else None,
        "progress_sign_agreement_moving": sum(moving) / len(moving) if moving else None,
        "progress_correlation": pearson(pa, pb),
    }


# --- stage summary ----------------------------------------------------------------------------------


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def score_summary(rows: Sequence[dict[str, Any]], budgets: Sequence[float] = ()) -> dict[str, Any]:
    """Return the closing numbers of a score run over scored rows (means of J, progress shares, costs)."""
    episodes = [p for r in rows for p in r["progress"]]
    out: dict[str, Any] = {
        "traces": len(rows),
        "episodes": len(episodes),
        "mean_episodes_per_trace": _mean([len(r["progress"]) for r in rows]),
        "mean_j_start": _mean([r["j_start"] for r in rows]),
        "mean_j_end": _mean([r["j_end"] for r in rows]),
        "mean_cumulative_progress": _mean([r["cumulative_progress"] for r in rows]),
        "share_episodes_positive_progress": _mean([float(p > 0) for p in episodes]),
        "share_episodes_negative_progress": _mean([float(p < 0) for p in episodes]),
        "share_forced_final_correct": _mean([float(r["forced_final_correct"]) for r in rows]),
        "share_trace_correct": _mean([float(bool(r.get("correct"))) for r in rows]),
        **early_rise(rows),
        "prover_rollouts": sum(r.get("prover_rollouts", 0) for r in rows),
        "prover_tokens": sum(r.get("prover_tokens", 0) for r in rows),
        "prover_skipped_prefixes": sum(r.get("prover_skipped_prefixes", 0) for r in rows),
    }
    for budget in budgets:
        values = [x["value"] for r in rows for x in r["regret"] if x["budget"] == float(budget)]
        out[f"mean_regret@{int(budget) if float(budget).is_integer() else budget}"] = _mean(values)
    return out


def early_rise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return how much of a correct trace's progress a prover sees before its last episode.

    Among correct traces with two or more episodes: the share whose J rises above J_start before the last
    episode (partial work a prover can finish), and the mean J at the middle prefix next to J_start and J_end.
    When the first share is near 0, progress telescopes to the last episode and every ranking by progress
    falls back to length.
    """
    curves = [list(r["j_values"]) for r in rows if r.get("correct") and len(r["j_values"]) > 2]
    return {
        "correct_j_rises_before_last_episode": _mean([float(max(j[1:-1]) > j[0] + 1e-9) for j in curves]),
        "correct_mean_j_start": _mean([j[0] for j in curves]),
        "correct_mean_j_middle": _mean([j[len(j) // 2] for j in curves]),
        "correct_mean_j_end": _mean([j[-1] for j in curves]),
    }
