"""Sampling and grading for `mrt-star eval`: standard and linearized samples, J at every episode end, budget forcing.

Functions take the eval config and an engine; the J curve of a sample is the prover-free one described
in `mrt_star.eval.stage`.
"""

from __future__ import annotations

from typing import Any

from mrt_star.eval import metrics as M
from mrt_star.eval.summary import eval_budgets


def _params(cfg: Any, n: int, seed: int, stop: tuple[str, ...] = (), max_new_tokens: int | None = None):
    from mrt_star.engines.base import SamplingParams

    return SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed, stop=stop,
                          max_new_tokens=max_new_tokens or cfg.max_new_tokens)


def _prover_params(cfg: Any, seed: int):
    from mrt_star.engines.base import SamplingParams

    return SamplingParams(n=cfg.prover_k, temperature=cfg.prover_temperature, top_p=cfg.prover_top_p, seed=seed,
                          max_new_tokens=cfg.prover_max_new_tokens)


def _assistant(prompt: list[dict[str, str]], text: str):
    from mrt_star.engines.base import Request

    return Request([*prompt, {"role": "assistant", "content": text}] if text else list(prompt))


def sample_standard(engine: Any, cfg: Any, items: list[dict], seed: int) -> list[dict[str, Any]]:
    """Return one raw sample per (item, sample index): n independent traces per problem (or continuations)."""
    requests = [_assistant(it["prompt"], it.get("given") or "") for it in items]
    outputs = engine.generate(requests, _params(cfg, cfg.n, seed))
    raw = []
    for it, completions in zip(items, outputs, strict=True):
        given = it.get("given") or ""
        for s, c in enumerate(completions):
            raw.append({"item": it, "sample_index": s, "completion": given + c.text, "attempts": None,
                        "generated_tokens": c.completion_tokens, "finish_reason": c.finish_reason})
    return raw


def sample_linearized(engine: Any, cfg: Any, items: list[dict], seed: int) -> list[dict[str, Any]]:
    """Return one raw sample per (problem, sample index): a chain of attempts with a sliding context window."""
    from mrt_star.formats.prompts import ATTEMPT_SEPARATOR as SEP

    chains = [{"item": it, "sample_index": s, "attempts": [], "tokens": [], "finish_reason": "stop", "open": True}
              for it in items for s in range(cfg.n)]
    for attempt in range(cfg.max_attempts):
        active = [ch for ch in chains if ch["open"]]
        if not active:
            break
        requests = []
        for ch in active:
            recent = ch["attempts"][-cfg.window :] if cfg.window > 0 else []
            requests.append(_assistant(ch["item"]["prompt"], SEP.join(recent) + SEP if recent else ""))
        outputs = engine.generate(requests, _params(cfg, 1, seed + attempt, stop=(SEP,)))
        for ch, (c,) in zip(active, outputs, strict=True):
            ch["attempts"].append(c.text)
            ch["tokens"].append(c.completion_tokens)
            ch["finish_reason"] = c.finish_reason
            # Another attempt only when the model asked for one by writing the separator.
            wants_more = c.finish_reason == "stop" and (c.stop_reason == SEP or SEP in (c.stop_reason or ""))
            ch["open"] = wants_more
    return [{"item": ch["item"], "sample_index": ch["sample_index"], "completion": SEP.join(ch["attempts"]),
             "attempts": ch["tokens"], "generated_tokens": sum(ch["tokens"]), "finish_reason": ch["finish_reason"]}
            for ch in chains]


def _episode_token_counts(engine: Any, raw: dict[str, Any], episodes: list[str]) -> list[int]:
    if raw["attempts"] is not None and len(raw["attempts"]) == len(episodes):
        return list(raw["attempts"])  # linearized: what each attempt's call generated
    counts = engine.count_tokens(episodes)
    given_tokens = raw["item"].get("given_tokens")
    if given_tokens is not None and counts:
        counts[0] = int(given_tokens)
    return counts


def _writes_answer(text: str) -> bool:
    """Return True when an episode may contain an answer (so the prefix ending with it is graded)."""
    try:
        from mrt_star.grading import extract_answer
    except ImportError:  # no extractor: grade every prefix
        return True
    return extract_answer(text) is not None


def _grading_plan(r: dict[str, Any], episodes: list[str], whole: bool) -> tuple[list[str], str]:
    """Return the text graded after each episode and the text graded as the final answer.

    Continued traces grade the continuation only (an answer in the given prefix does not count), except
    the given prefix itself (episode 0) and when `whole` (the parity flag `grade_given_too`).
    """
    given = r["item"].get("given") or ""
    texts, acc = [], ""
    for j, piece in enumerate(episodes):
        acc += piece
        texts.append(acc if not given or whole or j == 0 else acc[len(given):])
    return texts, (r["completion"] if not given or whole else r["completion"][len(given):])


def _prompt_tokens(engine: Any, items: list[dict[str, Any]]) -> dict[str, int]:
    """Return the rendered prompt's token count per item id (where the parity regret axis starts)."""
    from mrt_star.engines.base import Request

    unique = {it["item_id"]: it["prompt"] for it in items}
    rendered = [engine.render(Request(list(p))) for p in unique.values()]
    return dict(zip(unique, engine.count_tokens(rendered), strict=True))


def grade_samples(engine: Any, grader: Any, cfg: Any, raw: list[dict[str, Any]], label: str,
                  model_path: str) -> list[dict[str, Any]]:
    """Return the per-sample rows: episodes, J at every episode end, final and first-attempt correctness."""
    from mrt_star.formats.episodes import split_episodes
    from mrt_star.options import episode_options

    def fmt_of(r: dict[str, Any]) -> str:
        return "linearized" if cfg.mode == "linearized" else r["item"].get("format") or cfg.format

    cut = episode_options(cfg) if hasattr(cfg, "paragraph_parity") else None
    split = []
    for r in raw:
        given = r["item"].get("given") or ""
        rest = r["completion"][len(given):]
        pieces = split_episodes(rest, fmt_of(r), cut) if rest else []
        split.append([given, *pieces] if given else (pieces or [""]))
    # A prefix's answer is the last one written, so only prefixes whose newest episode writes an answer
    # (and the whole trace) are graded; the others repeat the previous prefix's result.
    whole = bool(getattr(cfg, "grade_given_too", False))
    pairs, plans = [], []
    for r, episodes in zip(raw, split, strict=True):
        texts, final_text = _grading_plan(r, episodes, whole)
        plan = []
        for j, piece in enumerate(episodes):
            if j == len(episodes) - 1 or j == 0 or _writes_answer(piece) or texts[j] != texts[j - 1] + piece:
                plan.append(len(pairs))
                pairs.append((texts[j], r["item"]["answer"]))
            else:
                plan.append(plan[-1])
        if final_text != texts[-1]:
            pairs.append((final_text, r["item"]["answer"]))
        plans.append((plan, len(pairs) - 1))
    results = grader.grade_many(pairs)
    prompt_tokens = _prompt_tokens(engine, [r["item"] for r in raw])
    rows = []
    for r, episodes, (plan, final_at) in zip(raw, split, plans, strict=True):
        graded = [results[i] for i in plan]
        counts = _episode_token_counts(engine, r, episodes)
        j_tokens, j_values = M.episode_curve(counts, [1.0 if g.correct else 0.0 for g in graded])
        final, first = results[final_at], graded[0]
        item = r["item"]
        given_tokens = int(item.get("given_tokens") or (counts[0] if item.get("given") else 0))
        rows.append({
            "model": label, "model_path": model_path, "mode": cfg.mode, "format": fmt_of(r),
            "item_id": item["item_id"], "problem_id": item["problem_id"], "problem": item["problem"],
            "answer": item["answer"], "sample_index": r["sample_index"], "prompt": item["prompt"],
            "completion": r["completion"],
            "episodes": [{"text": e, "num_tokens": int(t), "answer": g.extracted, "correct": bool(g.correct)}
                         for e, t, g in zip(episodes, counts, graded, strict=True)],
            "num_tokens": int(r["generated_tokens"]) + (given_tokens if item.get("given") else 0),
            "given_tokens": given_tokens if item.get("given") else 0,
            "finish_reason": r["finish_reason"], "final_answer": final.extracted, "correct": bool(final.correct),
            "first_attempt_correct": None if first.extracted is None else bool(first.correct),
            "j_tokens": j_tokens, "j_values": j_values, "prompt_tokens": prompt_tokens[item["item_id"]],
            "history_variant": item.get("history_variant"),
        })
    return rows


def add_budget_forcing(engine: Any, grader: Any, cfg: Any, rows: list[dict[str, Any]], seed: int) -> None:
    """Add `forced_tokens`/`forced_values` to each row: J at each budget cut from forced answers."""
    from mrt_star.formats.prompts import FORCE_TEXT, forced_completion_text, forced_prefix

    tokenizer = engine.tokenizer
    requests, where = [], []
    for i, row in enumerate(rows):
        ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        cuts = M.budget_cuts(len(ids), eval_budgets(cfg))
        row["forced_tokens"] = cuts
        for c in cuts:
            prefix = tokenizer.decode(ids[:c]) if c < len(ids) else row["completion"]
            requests.append(_assistant(row["prompt"], forced_prefix(prefix, row["format"])))
            where.append(i)
    if not requests:
        return
    outputs = engine.generate(requests, _prover_params(cfg, seed))
    pairs = [(forced_completion_text(rows[i]["format"], c.text), rows[i]["answer"])
             for i, group in zip(where, outputs, strict=True) for c in group]
    flat = iter(grader.grade_many(pairs))
    flags_of: dict[int, list[list[bool]]] = {i: [] for i in range(len(rows))}
    for i, group in zip(where, outputs, strict=True):
        flags_of[i].append([bool(next(flat).correct) for _ in group])
    answer_tokens: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for i, group in zip(where, outputs, strict=True):
        answer_tokens[i].append(sum(c.completion_tokens for c in group) / len(group) if group else 0.0)
    for i, row in enumerate(rows):
        row["forced_tokens"], row["forced_values"] = M.forced_curve(row["forced_tokens"], flags_of[i])
        row["forced_answer_tokens"] = answer_tokens[i]
        row["stop_tokens"] = engine.count_tokens([FORCE_TEXT[row["format"]]])[0]


