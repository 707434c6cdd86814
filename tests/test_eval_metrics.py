"""Evaluation metrics on constructed inputs whose values are known by hand."""

from __future__ import annotations

import math
from itertools import combinations

import pytest

from mrt_star.eval.metrics import (
    CORRECT_KEY,
    budget_cuts,
    curve_at,
    curve_regret,
    episode_curve,
    episode_regret,
    forced_curve,
    maj_at_k,
    maj_curve_regret,
    maj_vs_tokens,
    majority_index,
    mean_curve,
    mean_maj_at_k,
    mean_pass_at_k,
    mean_regret,
    pass_at_k,
    token_grid,
    vote_keys,
)
from mrt_star.progress.regret import normalized_regret


def test_pass_at_k_known_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # only 2 wrong samples: every 3-subset holds a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert mean_pass_at_k([(5, 2), (5, 5)], 2) == pytest.approx(0.85)


def test_pass_at_k_matches_binomials_and_is_stable_for_large_n():
    for n, c, k in [(20, 7, 5), (16, 1, 8), (30, 29, 2)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact)
    assert 0.0 < pass_at_k(10_000, 3, 500) < 1.0


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_vote_keys_and_deterministic_ties():
    keys = vote_keys(["4", " 5 ", None, "\\frac{8}{2}"], [True, False, False, True])
    assert keys == [CORRECT_KEY, "5", None, CORRECT_KEY]
    assert majority_index(["a", "b"]) == 0  # tie: the earliest first vote wins
    assert majority_index(["b", "a", "a", "b"]) == 0
    assert majority_index([None, "x", "y", "y"]) == 2
    assert majority_index([None, None]) is None


def _brute_expected(keys, ok, k):
    # Mean over k-subsets; a t-way tie gives each tied answer 1/t (a random order's earliest vote).
    total = 0.0
    subsets = list(combinations(range(len(keys)), k))
    for s in subsets:
        votes = {}
        for i in s:
            if keys[i] is not None:
                votes[keys[i]] = votes.get(keys[i], 0) + 1
        if votes:
            top = max(votes.values())
            tied = [a for a, v in votes.items() if v == top]
            flag = {keys[i]: ok[i] for i in s}
            total += sum(flag[a] for a in tied) / len(tied)
    return total / len(subsets)


def test_maj_at_k_first_and_expected():
    keys = ["w", CORRECT_KEY, CORRECT_KEY, "w", "v"]
    ok = [False, True, True, False, False]
    assert maj_at_k(keys, ok, 1, mode="first") == 0.0
    assert maj_at_k(keys, ok, 3, mode="first") == 1.0  # c, c beat w
    assert maj_at_k(keys, ok, 4, mode="first") == 0.0  # 2–2 tie: w voted first
    # Expected maj@1 is plain accuracy; maj@n is the full vote with the 2–2 tie split evenly.
    assert maj_at_k(keys, ok, 1) == pytest.approx(2 / 5)
    assert maj_at_k(keys, ok, 5) == pytest.approx(0.5)
    # maj@2 by hand over the 10 pairs: the correct pair wins (1); each of the 6 pairs of one correct
    # and one wrong sample is a tie (1/2); the 3 wrong pairs lose: (1 + 3) / 10.
    assert maj_at_k(keys, ok, 2) == pytest.approx(0.4)
    assert mean_maj_at_k([(keys, ok), ([CORRECT_KEY], [True])], 1) == pytest.approx((0.4 + 1) / 2)


def test_expected_maj_at_k_matches_enumeration():
    import random

    rng = random.Random(1)
    for _ in range(150):
        n = rng.randint(1, 8)
        keys = [rng.choice([CORRECT_KEY, "a", "b", "c", None]) for _ in range(n)]
        ok = [key == CORRECT_KEY for key in keys]
        for k in range(1, n + 1):
            assert maj_at_k(keys, ok, k) == pytest.approx(_brute_expected(keys, ok, k), abs=1e-12)
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(["a"], [True], 1, mode="best")


def test_maj_vs_tokens_points():
    problems = [([CORRECT_KEY, "w"], [True, False], [10, 30]), (["w", "w"], [False, False], [20, 20])]
    pts = maj_vs_tokens(problems, [1, 2])
    assert pts[0] == {"k": 1, "tokens": pytest.approx(20.0), "maj": pytest.approx(0.25)}
    # k=2: problem 1 is a 1–1 tie (1/2), problem 2 is never right.
    assert pts[1]["tokens"] == pytest.approx(40.0) and pts[1]["maj"] == pytest.approx(0.25)
    first = maj_vs_tokens(problems, [1], mode="first")
    assert first[0]["tokens"] == pytest.approx(15.0) and first[0]["maj"] == pytest.approx(0.5)


def test_curves_agree_with_the_regret_definition():
    tokens, values = episode_curve([10, 20], [0, 1])
    assert (tokens, values) == ([10.0, 30.0], [0.0, 1.0])
    assert curve_at(tokens, values, 5) == 0.0
    assert curve_at(tokens, values, 20) == pytest.approx(0.5)
    assert curve_at(tokens, values, 99) == 1.0  # held after the end
    # The area under the mean curve on a fine grid is 1 − regret.
    grid = token_grid(40, 4001)
    mean = mean_curve([(tokens, values)], grid)
    area = sum((grid[i + 1] - grid[i]) * (mean[i] + mean[i + 1]) / 2 for i in range(len(grid) - 1))
    assert 1 - area / 40 == pytest.approx(normalized_regret(tokens, values, 40), abs=1e-6)
    # (0,0)→(10,0)→(30,1) then held to 40: area 10 + 10 = 20 of 40.
    assert curve_regret(tokens, values, [40]) == {40.0: pytest.approx(0.5)}


def test_mean_regret_of_two_traces():
    # Solved at once (regret 0.5·10/20) vs never solved (regret 1).
    curves = [([10], [1.0]), ([10], [0.0])]
    assert mean_regret(curves, [20])[20.0] == pytest.approx((0.25 + 1.0) / 2)


def test_majority_and_episode_regret():
    pts = [{"k": 1, "tokens": 10, "maj": 1.0}]
    assert maj_curve_regret(pts, [20])[20.0] == pytest.approx(0.25)
    assert episode_regret([0.0, 1.0], [0.5, 0.5]) == pytest.approx(0.0)
    assert episode_regret([0.0, 0.0, 0.0], [0.5, 1.0]) == pytest.approx(2.5 / 3)


def test_budget_forcing_cut_points_and_curve():
    assert budget_cuts(100, [32, 64, 128]) == [32, 64, 100]
    assert budget_cuts(50, [50, 10]) == [10, 50]
    tokens, values = forced_curve([32, 64, 100], [[False, False], [True, False], [True, True]])
    assert tokens == [32.0, 64.0, 100.0] and values == [0.0, 0.5, 1.0]
