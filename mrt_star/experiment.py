"""Statistics of `make experiment`: each model's mean over seeds and the paired differences between rules, with
95% intervals — enough to tell whether a 0.03 accuracy difference is real.

Two intervals answer two questions:
- the t-interval over seeds, mean ± t_{0.975, n−1}·sd/√n of the per-seed values (differences: paired, within
  a seed), covers everything that changes from seed to seed: training problems, sampled traces, fine-tuning
  and the held-out problems;
- the paired bootstrap over held-out problems (accuracy only) resamples each seed's problems with replacement,
  the same problems for both models of a pair, and averages over seeds: how far the choice of held-out
  problems alone moves the result, for these trained models. When it is much narrower than the t-interval,
  training noise dominates and more seeds, not more evaluation problems, are what narrows the t-interval.

maj@k at equal tokens: within a seed, each model's maj@k-vs-tokens curve (eval's `maj_vs_tokens` points:
mean total tokens of k samples per problem against maj@k, k = 1..n, joined by straight lines from (0, 0)) read
at one token budget shared by the seed's models — the smallest of their largest points' token totals, the most
that every model reaches with its n samples. A model that writes shorter traces gets more votes within it.

Pure functions over eval's metrics.json and per-sample rows (numpy for the bootstrap; no torch).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

# Per model and per seed; `regret` is read at the largest evaluated budget.
METRICS = ("accuracy", "first_attempt_accuracy", "maj_at_equal_tokens", "mean_tokens", "regret")
# Comparisons between rules, when both ran; every rule is also compared with the base model.
RULE_PAIRS = (("mrt", "star"), ("mrt", "mrt-trace"), ("mrt", "shortest"))
BASE = "base"
# t_{0.975, df} for df = 1..30 (two-sided 95%); larger df use the Cornish-Fisher expansion (error < 1e-5).
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000


def t_quantile_975(df: int) -> float:
    """Return the 0.975 quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    terms = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(g / df ** (i + 1) for i, g in enumerate(terms))


def t_interval(values: Sequence[float]) -> dict[str, Any]:
    """Return {mean, sd, n, low, high}: the mean of per-seed values and its 95% Student-t interval (none for n = 1)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if n == 1:
        return {"mean": mean, "sd": None, "n": 1, "low": None, "high": None}
    sd = statistics.stdev(values)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "low": mean - half, "high": mean + half}


def per_problem_accuracy(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Return {model label: {problem id: share of its samples correct}} from eval's per-sample rows."""
    flags: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        flags[row["model"]][str(row["problem_id"])].append(bool(row["correct"]))
    return {label: {pid: sum(f) / len(f) for pid, f in problems.items()} for label, problems in flags.items()}


def paired_problem_differences(a: dict[str, float], b: dict[str, float]) -> list[float]:
    """Return a − b for each problem both models were evaluated on (sorted by problem id)."""
    return [a[pid] - b[pid] for pid in sorted(set(a) & set(b))]


def bootstrap_interval(per_seed: Sequence[Sequence[float]], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Return the 95% percentile interval of the mean over seeds of each seed's mean per-problem value.

    Each resample draws every seed's problems with replacement (as many as it has); give per-problem
    differences to bootstrap a paired difference (the same problems for both models).
    """
    import numpy as np

    seeds = [np.asarray(values, dtype=float) for values in per_seed if len(values)]
    if not seeds:
        raise ValueError("no per-problem values to resample")
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for values in seeds:
        total += values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.quantile(total / len(seeds), [0.025, 0.975])
    return float(low), float(high)


def curve_value(points: Sequence[dict[str, float]], tokens: float) -> float:
    """Return a maj@k-vs-tokens curve at `tokens`: linear between points, from (0, 0), held after the last."""
    from mrt_star.eval.metrics import curve_at

    pts = sorted(points, key=lambda p: p["tokens"])
    return curve_at([p["tokens"] for p in pts], [p["maj"] for p in pts], tokens, start_value=0.0)


def maj_at_equal_tokens(curves: dict[str, Sequence[dict[str, float]]]) -> tuple[float, dict[str, float]]:
    """Return (the shared budget, {label: maj@k there}) of one seed's models (see the module docstring)."""
    if not curves or not all(curves.values()):
        raise ValueError("every model needs maj@k-vs-tokens points")
    budget = min(max(p["tokens"] for p in points) for points in curves.values())
    return budget, {label: curve_value(points, budget) for label, points in curves.items()}


def maj_curves(metrics: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """Return {label: maj@k-vs-tokens points} of the models in one eval metrics.json that have them."""
    return {label: m["maj_vs_tokens"] for label, m in metrics.get("models", {}).items() if m.get("maj_vs_tokens")}


def seed_values(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Return {label: {metric: value}} of one seed's eval metrics.json (METRICS; regret at the largest budget)."""
    models = metrics.get("models", {})
    curves = maj_curves(metrics)
    at_budget = maj_at_equal_tokens(curves)[1] if curves else {}
    out: dict[str, dict[str, float]] = {}
    for label, model in models.items():
        values = {key: model[key] for key in ("accuracy", "first_attempt_accuracy", "mean_tokens") if key in model}
        if model.get("regret"):
            values["regret"] = model["regret"][max(model["regret"], key=float)]
        if label in at_budget:
            values["maj_at_equal_tokens"] = at_budget[label]
        out[label] = values
    return out


def comparisons(rules: Sequence[str]) -> list[tuple[str, str]]:
    """Return the (a, b) pairs to compare as a − b: RULE_PAIRS among `rules`, then every rule − base."""
    return [(a, b) for a, b in RULE_PAIRS if a in rules and b in rules] + [(rule, BASE) for rule in rules]


def summarize(seeds: Sequence[dict[str, Any]], rules: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES,
              bootstrap_seed: int = 0) -> dict[str, Any]:
    """Return the experiment's statistics from per-seed results.

    Each seed is {"metrics": eval's metrics.json, "per_problem": per_problem_accuracy(its rows)}. Returns
    {"models": {label: {metric: t_interval (+ "bootstrap" for accuracy)}},
     "differences": [{"a", "b", "metrics": {metric: t_interval + "positive_seeds" (+ "bootstrap")}}],
     "maj_budgets": the shared maj@k token budget of each seed}.
    """
    values = [seed_values(s["metrics"]) for s in seeds]
    labels = [BASE, *rules]

    def series(label: str, key: str) -> list[float]:
        return [v[label][key] for v in values if key in v.get(label, {})]

    def stats(xs: list[float]) -> dict[str, Any] | None:
        return t_interval(xs) if xs else None

    models: dict[str, dict[str, Any]] = {}
    for label in labels:
        models[label] = {key: s for key in METRICS if (s := stats(series(label, key)))}
        problems = [list(seed["per_problem"][label].values()) for seed in seeds if label in seed.get("per_problem", {})]
        if "accuracy" in models[label] and problems:
            models[label]["accuracy"]["bootstrap"] = bootstrap_interval(problems, resamples, bootstrap_seed)
    differences = []
    for a, b in comparisons(rules):
        entry: dict[str, Any] = {"a": a, "b": b, "metrics": {}}
        for key in METRICS:
            diffs = [v[a][key] - v[b][key] for v in values if key in v.get(a, {}) and key in v.get(b, {})]
            if diffs:
                entry["metrics"][key] = {**t_interval(diffs), "positive_seeds": sum(d > 0 for d in diffs)}
        paired = [paired_problem_differences(s["per_problem"][a], s["per_problem"][b])
                  for s in seeds if a in s.get("per_problem", {}) and b in s.get("per_problem", {})]
        if "accuracy" in entry["metrics"] and any(paired):
            entry["metrics"]["accuracy"]["bootstrap"] = bootstrap_interval(paired, resamples, bootstrap_seed)
        differences.append(entry)
    budgets = [maj_at_equal_tokens(curves)[0] if (curves := maj_curves(s["metrics"])) else None for s in seeds]
    return {"models": models, "differences": differences, "maj_budgets": budgets,
            "bootstrap": {"resamples": resamples, "seed": bootstrap_seed}}
