"""`make experiment`'s statistics on hand-made per-seed numbers: t-intervals, the paired bootstrap over problems,
maj@k at equal tokens, and the summary the demo prints and writes."""

from __future__ import annotations

import math

import pytest

from mrt_star.experiment import (
    bootstrap_interval,
    comparisons,
    maj_at_equal_tokens,
    paired_problem_differences,
    per_problem_accuracy,
    seed_values,
    summarize,
    t_interval,
    t_quantile_975,
)


def test_t_interval_by_hand():
    # diffs 0.01, 0.03, 0.05: mean 0.03, sd 0.02, t_{0.975,2} = 4.303 → half-width 4.303 · 0.02 / √3 = 0.0497.
    stats = t_interval([0.01, 0.03, 0.05])
    assert stats["mean"] == pytest.approx(0.03) and stats["sd"] == pytest.approx(0.02) and stats["n"] == 3
    assert stats["high"] - stats["mean"] == pytest.approx(0.0497, abs=1e-4)
    assert stats["mean"] - stats["low"] == pytest.approx(0.0497, abs=1e-4)
    # Ten seeds of sd 0.045 (the spread seen on toy world 5): t_{0.975,9} = 2.262 → ± 0.032.
    ten = [0.03 + 0.045 * x for x in (-1, 1) * 5]
    sd = t_interval(ten)["sd"]
    assert t_interval(ten)["high"] - 0.03 == pytest.approx(2.2622 * sd / math.sqrt(10))
    assert t_interval([0.2]) == {"mean": 0.2, "sd": None, "n": 1, "low": None, "high": None}
    with pytest.raises(ValueError):
        t_interval([])


def test_t_quantiles():
    assert t_quantile_975(1) == 12.7062 and t_quantile_975(2) == 4.3027 and t_quantile_975(9) == 2.2622
    # Past the table the expansion continues it smoothly and falls towards the normal 1.96.
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=1e-4)
    assert t_quantile_975(30) > t_quantile_975(31) > t_quantile_975(100) > t_quantile_975(10_000) > 1.95996
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)


def test_per_problem_accuracy_and_pairing():
    rows = [{"model": "mrt", "problem_id": "p1", "correct": c} for c in (True, True, False, True)]
    rows += [{"model": "mrt", "problem_id": "p2", "correct": c} for c in (False, False, False, True)]
    rows += [{"model": "star", "problem_id": "p1", "correct": c} for c in (True, False, False, False)]
    acc = per_problem_accuracy(rows)
    assert acc == {"mrt": {"p1": 0.75, "p2": 0.25}, "star": {"p1": 0.25}}
    assert paired_problem_differences(acc["mrt"], acc["star"]) == [0.5]  # p2 was not evaluated for star


def _spread(problems: int) -> list[float]:
    return [(-0.25, 0.0, 0.25, 0.5)[i % 4] for i in range(problems)]  # mean 0.125


def test_bootstrap_contains_the_mean_and_shrinks_with_more_problems():
    low, high = bootstrap_interval([_spread(40)], resamples=2000, seed=0)
    assert low < 0.125 < high
    # Standard error of the mean = sd/√n (sd = 0.2795): the 95% interval is about ± 1.96 · 0.0442 = ± 0.087.
    assert high - low == pytest.approx(2 * 1.96 * 0.2795 / math.sqrt(40), rel=0.1)
    big_low, big_high = bootstrap_interval([_spread(400)], resamples=2000, seed=0)
    assert big_low < 0.125 < big_high
    assert 2.5 < (high - low) / (big_high - big_low) < 4.0  # √10 = 3.16
    assert bootstrap_interval([_spread(40)], resamples=2000, seed=0) == (low, high)  # seeded
    # Seeds are averaged: two seeds of constant per-problem values leave nothing to resample.
    assert bootstrap_interval([[0.1] * 5, [0.3] * 7]) == pytest.approx((0.2, 0.2))
    with pytest.raises(ValueError):
        bootstrap_interval([[]])


def test_maj_at_equal_tokens_by_hand():
    a = [{"k": 1, "tokens": 100, "maj": 0.4}, {"k": 2, "tokens": 200, "maj": 0.5}, {"k": 4, "tokens": 400, "maj": 0.6}]
    b = [{"k": 1, "tokens": 60, "maj": 0.3}, {"k": 2, "tokens": 120, "maj": 0.45}, {"k": 4, "tokens": 240, "maj": 0.55}]
    # Budget: the smaller of the largest totals, min(400, 240) = 240. a there: 0.5 + 0.1 · 40/200 = 0.52.
    budget, values = maj_at_equal_tokens({"a": a, "b": b})
    assert budget == 240 and values == pytest.approx({"a": 0.52, "b": 0.55})
    # A model whose first point lies past the budget is read on the line from (0, 0): 0.6 · 400/500 = 0.48.
    long = [{"k": 1, "tokens": 500, "maj": 0.6}, {"k": 2, "tokens": 1000, "maj": 0.8}]
    assert maj_at_equal_tokens({"a": a, "long": long}) == (400, pytest.approx({"a": 0.6, "long": 0.48}))


def _model(accuracy: float, maj: list[dict], regret: dict) -> dict:
    return {"accuracy": accuracy, "first_attempt_accuracy": accuracy - 0.05, "mean_tokens": maj[0]["tokens"],
            "maj_vs_tokens": maj, "regret": regret}


def _seed(d: float, base: float) -> dict:
    """One seed: star at 0.5, mrt at 0.5 + d on the same two problems, base at `base`."""
    per_problem = {"star": {"p1": 0.25, "p2": 0.75}, "mrt": {"p1": 0.25 + d, "p2": 0.75 + d},
                   "base": {"p1": base - 0.1, "p2": base + 0.1}}
    maj = {"star": [{"k": 1, "tokens": 100.0, "maj": 0.5}, {"k": 2, "tokens": 200.0, "maj": 0.6}],
           "mrt": [{"k": 1, "tokens": 80.0, "maj": 0.5 + d}, {"k": 2, "tokens": 160.0, "maj": 0.6 + d}],
           "base": [{"k": 1, "tokens": 100.0, "maj": base}, {"k": 2, "tokens": 200.0, "maj": base}]}
    regret = {"star": {"50": 0.9, "300": 0.4}, "mrt": {"50": 0.9, "300": 0.4 - d}, "base": {"50": 0.9, "300": 0.5}}
    models = {label: _model(sum(per_problem[label].values()) / 2, maj[label], regret[label]) for label in maj}
    return {"metrics": {"models": models}, "per_problem": per_problem}


def test_seed_values_read_regret_at_the_largest_budget_and_maj_at_the_shared_budget():
    values = seed_values(_seed(0.03, 0.4)["metrics"])
    assert values["mrt"]["regret"] == pytest.approx(0.37)  # budget 300, not "50" (the larger string)
    # Shared budget min(200, 160, 200) = 160: star 0.5 + 0.1 · 60/100 = 0.56; mrt its k=2 point 0.63.
    assert values["star"]["maj_at_equal_tokens"] == pytest.approx(0.56)
    assert values["mrt"]["maj_at_equal_tokens"] == pytest.approx(0.63)


def test_comparisons_of_the_experiment_rules():
    assert comparisons(["mrt", "mrt-trace", "star", "shortest"]) == [
        ("mrt", "star"), ("mrt", "mrt-trace"), ("mrt", "shortest"),
        ("mrt", "base"), ("mrt-trace", "base"), ("star", "base"), ("shortest", "base")]
    assert comparisons(["mrt", "star"]) == [("mrt", "star"), ("mrt", "base"), ("star", "base")]


def test_summarize_paired_differences_over_seeds():
    seeds = [_seed(0.01, 0.4), _seed(0.03, 0.45), _seed(0.05, 0.5)]
    report = summarize(seeds, ["mrt", "star"], resamples=500)
    mrt_star = next(d for d in report["differences"] if (d["a"], d["b"]) == ("mrt", "star"))
    accuracy = mrt_star["metrics"]["accuracy"]
    assert accuracy["mean"] == pytest.approx(0.03) and accuracy["high"] - 0.03 == pytest.approx(0.0497, abs=1e-4)
    assert accuracy["positive_seeds"] == 3
    # Every problem moved by the same d within a seed: resampling problems changes nothing; only seeds vary.
    assert accuracy["bootstrap"] == pytest.approx((0.03, 0.03))
    assert mrt_star["metrics"]["regret"]["mean"] == pytest.approx(-0.03)
    assert mrt_star["metrics"]["regret"]["positive_seeds"] == 0
    assert mrt_star["metrics"]["mean_tokens"]["mean"] == pytest.approx(-20.0)
    # Base: accuracy 0.4, 0.45, 0.5 → mean 0.45, sd 0.05; its bootstrap spans the ± 0.1 problem spread.
    base = report["models"]["base"]["accuracy"]
    assert base["mean"] == pytest.approx(0.45) and base["sd"] == pytest.approx(0.05)
    assert base["bootstrap"][0] < 0.45 < base["bootstrap"][1]
    assert report["maj_budgets"] == [160.0, 160.0, 160.0]
    assert [(d["a"], d["b"]) for d in report["differences"]] == [("mrt", "star"), ("mrt", "base"), ("star", "base")]
