"""Evaluation metrics as pure functions: pass@k, maj@k (and against tokens), J curves and their regret.

Nothing here samples or grades; `mrt_star.eval.sampling` feeds these with graded samples. Conventions:

- A *J curve* is a list of points (tokens, J): J is the chance of a correct answer if the trace stopped
  at that token position. Between points the curve is a straight line, it starts at (0, 0) and holds
  its last value after the trace ends — the same reading as `mrt_star.progress.regret` (DESIGN.md §1),
  so `curve_at` and the regret of a curve agree.
- maj@k groups samples by a *vote key*. `vote_keys` puts every correct sample in one group (they all
  equal the reference) and groups wrong ones by their normalised extracted answer; samples without an
  answer abstain.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from fractions import Fraction

from mrt_star.progress.regret import normalized_regret, regret_at_budgets

CORRECT_KEY = "<correct>"


# --- pass@k ------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Return the unbiased pass@k estimate 1 − C(n−c, k)/C(n, k) from n samples with c correct.

    Chen et al. 2021; the product form 1 − Π_{i=n−c+1}^{n} (1 − k/i) avoids huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Return pass@k averaged over problems given (n, c) per problem."""
    if not counts:
        raise ValueError("no problems")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


# --- majority voting ---------------------------------------------------------------------------------


def normalize_answer(answer: str | None) -> str | None:
    """Return an answer string reduced for grouping (whitespace and `$` dropped), None if empty."""
    if answer is None:
        return None
    text = "".join(answer.split()).strip("$")
    return text or None


def vote_keys(extracted: Sequence[str | None], correct: Sequence[bool]) -> list[Hashable | None]:
    """Return one vote key per sample: CORRECT_KEY for correct samples, the normalised answer otherwise.

    Correct answers are all equivalent to the reference, so they form one group even when written
    differently (`\\frac{1}{2}` and `0.5`); wrong answers are grouped by text (None: abstains).
    """
    return [CORRECT_KEY if ok else normalize_answer(ans) for ans, ok in zip(extracted, correct, strict=True)]


def majority_index(keys: Sequence[Hashable | None]) -> int | None:
    """Return the index of the sample whose key wins the vote, None when every sample abstains.

    Ties go to the key whose first vote comes earliest, so the result is deterministic.
    """
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    winner = max(counts, key=lambda key: (counts[key], -first[key]))
    return first[winner]


def _expected_vote(keys: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """Return the exact mean, over all k-subsets taken in random order, of the vote being correct.

    In a random order the earliest of several tied answers is each tied answer with equal chance, so a
    t-way tie gives each answer 1/t. Counted per answer group with a polynomial product over the other
    groups (sizes and ties), so no subset is enumerated.
    """
    groups: dict[Hashable, list] = {}
    abstain = 0
    for key, ok in zip(keys, correct, strict=True):
        if key is None:
            abstain += 1
            continue
        groups.setdefault(key, [0, bool(ok)])[0] += 1
    win = Fraction(0)
    for g, (size_g, ok_g) in groups.items():
        if not ok_g:
            continue
        for x in range(1, min(size_g, k) + 1):
            rest = k - x
            # Groups smaller than x can neither tie nor beat g: their samples are as free as abstentions.
            rivals = [size_h for h, (size_h, _) in groups.items() if h != g and size_h >= x]
            free = abstain + sum(size_h for h, (size_h, _) in groups.items() if h != g and size_h < x)
            # ways[s][t]: picks of s samples from the rivals seen so far with t of them tied at x votes
            ways = [[0] * (len(rivals) + 1) for _ in range(rest + 1)]
            ways[0][0] = 1
            for size_h in rivals:
                new = [[0] * (len(rivals) + 1) for _ in range(rest + 1)]
                for s_, row in enumerate(ways):
                    for t, w in enumerate(row):
                        if not w:
                            continue
                        for j in range(0, min(size_h, x, rest - s_) + 1):
                            new[s_ + j][t + (j == x)] += w * math.comb(size_h, j)
                ways = new
            for s_, row in enumerate(ways):
                for t, w in enumerate(row):
                    if w and rest - s_ <= free:
                        win += Fraction(math.comb(size_g, x) * w * math.comb(free, rest - s_), t + 1)
    return float(win / math.comb(len(keys), k))


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int, mode: str = "expected") -> float:
    """Return maj@k of one problem: whether the majority answer among k samples is correct.

    `answers` are vote keys (see `vote_keys`); `correct[i]` says whether sample i is correct.
    mode "first": the vote over the first k samples, ties to the answer voted first (0 or 1).
    mode "expected": the exact mean over all k-subsets of the n samples taken in random order (ties
    split evenly) — the same quantity with much less variance. Both are deterministic.
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"{n} answers but {len(correct)} correctness flags")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if mode == "first":
        win = majority_index(answers[:k])
        return float(win is not None and bool(correct[win]))
    if mode != "expected":
        raise ValueError(f"unknown maj@k mode {mode!r}; choose 'first' or 'expected'")
    return _expected_vote(answers, correct, k)


def mean_maj_at_k(problems: Sequence[tuple[Sequence[Hashable | None], Sequence[bool]]], k: int,
                  mode: str = "expected") -> float:
    """Return maj@k averaged over problems given (vote keys, correct flags) per problem."""
    if not problems:
        raise ValueError("no problems")
    return sum(maj_at_k(keys, flags, k, mode) for keys, flags in problems) / len(problems)


def maj_vs_tokens(problems: Sequence[tuple[Sequence[Hashable | None], Sequence[bool], Sequence[float]]],
                  ks: Sequence[int], mode: str = "expected") -> list[dict[str, float]]:
    """Return [{k, tokens, maj}]: maj@k against the mean total tokens spent on k samples per problem.

    With mode "expected", the tokens of a random k-subset average k × the mean sample length; with
    "first", they are the tokens of the first k samples.
    """
    points = []
    for k in ks:
        spent = []
        for _, _, tokens in problems:
            spent.append(sum(tokens[:k]) if mode == "first" else k * sum(tokens) / len(tokens))
        points.append({"k": int(k), "tokens": sum(spent) / len(spent),
                       "maj": mean_maj_at_k([(a, c) for a, c, _ in problems], k, mode)})
    return points


# --- J curves ----------------------------------------------------------------------------------------


def episode_curve(episode_tokens: Sequence[float], episode_correct: Sequence[float]) -> tuple[list[float], list[float]]:
    """Return (tokens, J) of a trace: J after episode j at the cumulative token count of episodes 0..j."""
    if len(episode_tokens) != len(episode_correct):
        raise ValueError(f"{len(episode_tokens)} episode lengths but {len(episode_correct)} values")
    tokens, total = [], 0.0
    for t in episode_tokens:
        total += float(t)
        tokens.append(total)
    return tokens, [float(v) for v in episode_correct]


def curve_at(tokens: Sequence[float], values: Sequence[float], t: float, start_value: float = 0.0) -> float:
    """Return the J curve's value at token position t (linear between points, a step at a repeated
    position, held after the end) — the curve whose area `mrt_star.progress.regret` integrates."""
    x0, y0 = 0.0, float(start_value)
    for x1, y1 in zip(tokens, values, strict=True):
        x1, y1 = float(x1), float(y1)
        if t < x1:
            return y0 + (y1 - y0) * (t - x0) / (x1 - x0)
        x0, y0 = x1, y1
    return y0


def token_grid(max_tokens: float, points: int = 64) -> list[float]:
    """Return `points` evenly spaced token positions from 0 to max_tokens."""
    if points < 2 or max_tokens <= 0:
        return [0.0, float(max(max_tokens, 0))]
    return [max_tokens * i / (points - 1) for i in range(points)]


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]], grid: Sequence[float]) -> list[float]:
    """Return the mean of several J curves at each grid position (accuracy if stopped at t tokens)."""
    if not curves:
        raise ValueError("no curves")
    return [sum(curve_at(tok, val, t) for tok, val in curves) / len(curves) for t in grid]


# --- regret ------------------------------------------------------------------------------------------


def curve_regret(tokens: Sequence[float], values: Sequence[float], budgets: Sequence[float]) -> dict[float, float]:
    """Return {budget: normalized regret} of one J curve (`mrt_star.progress.regret`, parity definition)."""
    return {r["budget"]: r["value"] for r in regret_at_budgets(tokens, values, budgets)}


def mean_regret(curves: Sequence[tuple[Sequence[float], Sequence[float]]], budgets: Sequence[float]) -> dict[float, float]:
    """Return {budget: mean normalized regret} over J curves (equal to the regret of their mean curve)."""
    if not curves:
        raise ValueError("no curves")
    return {float(c): sum(normalized_regret(tok, val, c) for tok, val in curves) / len(curves) for c in budgets}


def maj_curve_regret(points: Sequence[dict[str, float]], budgets: Sequence[float]) -> dict[float, float]:
    """Return {budget: regret} of the maj@k-vs-tokens curve read as a J curve (the majority-vote baseline).

    Regret of parallel sampling at the same token budgets, to set beside a model's sequential J curve.
    """
    pts = sorted(points, key=lambda p: p["tokens"])
    return curve_regret([p["tokens"] for p in pts], [p["maj"] for p in pts], budgets)


def episode_regret(values: Sequence[float], comparator: Sequence[float]) -> float:
    """Return the episode-axis regret: mean over episodes j of (comparator_j − J_j).

    The comparator is what k = j+1 independent samples would reach (e.g. maj@(j+1) of the same model);
    episodes past the comparator's end compare against its last value. Negative means the sequential
    trace beats voting.
    """
    if not values or not comparator:
        raise ValueError("empty curve")
    ref = [comparator[min(j, len(comparator) - 1)] for j in range(len(values))]
    return sum(r - v for r, v in zip(ref, values, strict=True)) / len(values)


def episode_comparator(values: Sequence[float], maj: Sequence[float]) -> list[float]:
    """Return the appendix's comparator per episode j: the better of majority voting, maj@(j+1), and
    next-episode interpolation, the J the curve reaches one episode later (its last value held).

    Both are budgets the model itself could have reached with the compute of j+1 episodes: vote over
    j+1 independent samples, or run one more episode of the same trace.
    """
    if not values or not maj:
        raise ValueError("empty curve")
    last = len(values) - 1
    return [max(float(maj[min(j, len(maj) - 1)]), float(values[min(j + 1, last)])) for j in range(len(values))]


def episode_regret_curve(values: Sequence[float], comparator: Sequence[float]) -> list[float]:
    """Return the cumulative episode-axis regret after each episode j: (1/(j+1))·Σ_{i≤j} (comparator_i − J_i)."""
    if len(values) != len(comparator):
        raise ValueError(f"{len(values)} J values but {len(comparator)} comparator values")
    out, total = [], 0.0
    for j, (v, c) in enumerate(zip(values, comparator, strict=True)):
        total += float(c) - float(v)
        out.append(total / (j + 1))
    return out


# --- budget forcing ----------------------------------------------------------------------------------


def budget_cuts(num_tokens: int, budgets: Sequence[int]) -> list[int]:
    """Return the token positions where a trace of `num_tokens` tokens is cut to force an answer.

    Every budget below the trace's length, then the full trace (budgets past the end add nothing:
    the curve holds its last value there).
    """
    cuts = sorted({int(b) for b in budgets if 0 < int(b) < num_tokens})
    return [*cuts, int(num_tokens)] if num_tokens > 0 else cuts


def forced_curve(cuts: Sequence[int], correct: Sequence[Sequence[bool]]) -> tuple[list[float], list[float]]:
    """Return (tokens, J) of a budget-forced trace: J at each cut = fraction of its forced answers correct."""
    if len(cuts) != len(correct):
        raise ValueError(f"{len(cuts)} cuts but {len(correct)} groups of forced answers")
    return [float(c) for c in cuts], [sum(map(bool, flags)) / len(flags) if flags else 0.0 for flags in correct]
