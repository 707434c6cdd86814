"""One model's evaluation metrics from its per-sample rows (accuracy, pass@k, maj@k vs tokens, regret)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mrt_star.errors import UserError
from mrt_star.eval import metrics as M


def eval_budgets(cfg: Any) -> list[int]:
    """Return the regret budgets: the given ones, else 1/4, 1/2 and all of the token cap."""
    if cfg.budgets:
        return sorted(set(cfg.budgets))
    cap = cfg.max_new_tokens * (cfg.max_attempts if cfg.mode == "linearized" else 1)
    return sorted({max(1, cap // 4), max(1, cap // 2), cap})


def metric_key(value: float) -> str:
    """Return a budget or k as a metrics.json key (integers without a decimal point)."""
    return str(int(value)) if float(value).is_integer() else str(value)


def compute_metrics(rows: list[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Return one model's metrics from its per-sample rows (J and regret as in `mrt_star.eval.stage`)."""
    if not rows:
        raise UserError("no samples to score")
    budgets = eval_budgets(cfg)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["item_id"]].append(row)
    for g in groups.values():
        g.sort(key=lambda r: r["sample_index"])
    n = min(len(g) for g in groups.values())
    problems = []
    for g in groups.values():
        g = g[:n]
        flags = [r["correct"] for r in g]
        problems.append((M.vote_keys([r["final_answer"] for r in g], flags), flags, [r["num_tokens"] for r in g]))
    curves = [(r["j_tokens"], r["j_values"]) for r in rows]
    # The plot's token axis reaches the largest budget or the longest trace, whichever is longer.
    horizon = max([max(budgets), *[r["j_tokens"][-1] for r in rows if r["j_tokens"]]])
    grid = M.token_grid(horizon, 64)
    ks = list(range(1, n + 1))
    maj_points = M.maj_vs_tokens(problems, ks, cfg.maj_mode)
    longest = max(len(r["j_values"]) for r in rows)
    j_by_episode = [sum(r["j_values"][min(j, len(r["j_values"]) - 1)] for r in rows) / len(rows) for j in range(longest)]
    out: dict[str, Any] = {
        "model": rows[0]["model_path"], "mode": cfg.mode, "format": rows[0]["format"], "problems": len(groups),
        "samples": len(rows), "n": n,
        "accuracy": sum(r["correct"] for r in rows) / len(rows),
        "first_attempt_accuracy": sum(bool(r["first_attempt_correct"]) for r in rows) / len(rows),
        "mean_tokens": sum(r["num_tokens"] for r in rows) / len(rows),
        "mean_episodes": sum(len(r["j_values"]) for r in rows) / len(rows),
        "no_answer_rate": sum(r["final_answer"] is None for r in rows) / len(rows),
        "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows),
        "pass@k": {str(k): M.mean_pass_at_k([(n, sum(f)) for _, f, _ in problems], k) for k in cfg.k_values if 1 <= k <= n},
        "maj@k": {str(p["k"]): p["maj"] for p in maj_points},
        "maj_vs_tokens": maj_points,
        "accuracy_vs_tokens": {"tokens": grid, "accuracy": M.mean_curve(curves, grid)},
        "accuracy_at_budget": {metric_key(b): M.mean_curve(curves, [b])[0] for b in budgets},
        "j_by_episode": j_by_episode,
        "regret": {metric_key(b): v for b, v in M.mean_regret(curves, budgets).items()},
        "maj_regret": {metric_key(b): v for b, v in M.maj_curve_regret(maj_points, budgets).items()},
        "episode_regret_vs_maj": M.episode_regret(j_by_episode, [p["maj"] for p in maj_points]),
    }
    if rows[0].get("forced_tokens") is not None:
        forced = [(r["forced_tokens"], r["forced_values"]) for r in rows if r.get("forced_tokens")]
        out["forced_regret"] = {metric_key(b): v for b, v in M.mean_regret(forced, budgets).items()} if forced else {}
        out["forced_accuracy_at_budget"] = {metric_key(b): M.mean_curve(forced, [b])[0] for b in budgets} if forced else {}
    return out


