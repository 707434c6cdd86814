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
    axis = getattr(cfg, "regret_axis", "thinking")
    curves = [(regret_positions(r, axis), r["j_values"]) for r in rows]
    # The plot's token axis reaches the largest budget or the longest trace, whichever is longer.
    horizon = max([max(budgets), *[tok[-1] for tok, _ in curves if tok]])
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
        "regret_axis": axis,
    }
    comparator = M.episode_comparator(j_by_episode, [p["maj"] for p in maj_points])
    out["episode_comparator"] = comparator
    out["episode_regret"] = M.episode_regret_curve(j_by_episode, comparator)
    if rows[0].get("history_variant"):
        out["by_history_variant"] = history_breakdown(rows)
    if rows[0].get("forced_tokens") is not None:
        forced = [(regret_positions(r, axis, "forced"), r["forced_values"]) for r in rows if r.get("forced_tokens")]
        out["forced_regret"] = {metric_key(b): v for b, v in M.mean_regret(forced, budgets).items()} if forced else {}
        out["forced_accuracy_at_budget"] = {metric_key(b): M.mean_curve(forced, [b])[0] for b in budgets} if forced else {}
    if rows[0].get("extension_tokens") is not None:
        out.update(extrapolation_metrics(rows, cfg, axis))
    return out


def regret_positions(row: dict[str, Any], axis: str, curve: str = "j") -> list[float]:
    """Return the token positions of one row's J curve (`j`, `forced` or `extension`) on the regret axis.

    Parity puts each point after the rendered prompt; a forced curve's point also after the stop text
    and the mean tokens of its forced answers (the reference analysis's token count).
    """
    from mrt_star.progress.regret import token_axis

    tokens = row[f"{curve}_tokens"]
    if curve == "j":
        return token_axis(tokens, axis, prompt_tokens=row.get("prompt_tokens") or 0)
    return token_axis(tokens, axis, prompt_tokens=row.get("prompt_tokens") or 0, stop_tokens=row.get("stop_tokens") or 0,
                      answer_tokens=row.get(f"{curve}_answer_tokens") or [0.0] * len(tokens))


def history_breakdown(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Return {variant: {samples, accuracy, no_answer_rate, mean_tokens}} of history-mode rows."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["history_variant"]].append(r)
    return {v: {"samples": len(g), "accuracy": sum(r["correct"] for r in g) / len(g),
                "no_answer_rate": sum(r["final_answer"] is None for r in g) / len(g),
                "mean_tokens": sum(r["num_tokens"] for r in g) / len(g)} for v, g in by.items()}


def extrapolation_metrics(rows: list[dict[str, Any]], cfg: Any, axis: str) -> dict[str, Any]:
    """Return forced-answer accuracy and regret at each extrapolation budget (past the training length too)."""
    from mrt_star.eval.extrapolate import extrapolation_budgets

    curves = [(regret_positions(r, axis, "extension"), r["extension_values"]) for r in rows if r.get("extension_tokens")]
    budgets = extrapolation_budgets(cfg)
    if not curves:
        return {"training_length": cfg.max_new_tokens, "extrapolation_accuracy": {}, "extrapolation_regret": {},
                "mean_extensions": 0.0}
    # Accuracy at a budget is read at the budget's own cut (thinking tokens), regret on the chosen axis.
    at = {b: [r["extension_values"][r["extension_tokens"].index(float(b))] for r in rows
              if r.get("extension_tokens") and float(b) in r["extension_tokens"]] for b in budgets}
    return {"training_length": cfg.max_new_tokens,
            "extrapolation_accuracy": {metric_key(b): sum(v) / len(v) for b, v in at.items() if v},
            "extrapolation_regret": {metric_key(b): v for b, v in M.mean_regret(curves, budgets).items()},
            "mean_extensions": sum(r.get("extensions") or 0 for r in rows) / len(rows)}


