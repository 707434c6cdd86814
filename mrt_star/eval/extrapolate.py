"""Budget-forcing extrapolation (the paper's "Wait" extension): thinking past a trace's own end.

A trace that stops before the largest budget is reopened: its thinking (before `</think>` for open traces) gets
the extension word ("Wait") appended and the model continues, up to `max_extensions` times or until the largest
budget is spent. At every budget — past the training length (`--max-new-tokens`) too — the extended thinking is
cut there and the prover is forced to answer (DESIGN.md §3), so accuracy and regret are measured per budget.
"""

from __future__ import annotations

from typing import Any

from mrt_star.eval.sampling import _assistant, _params, _prover_params

EXTENSION_SEPARATOR = {"open": "\n\n", "backtrack": "\n", "linearized": "\n"}


def extrapolation_budgets(cfg: Any) -> list[int]:
    """Return the budgets to force answers at: the given ones, else 1/2, 1, 2 and 4 times the training length."""
    if cfg.extrapolation_budgets:
        return sorted(set(cfg.extrapolation_budgets))
    cap = cfg.max_new_tokens
    return sorted({max(1, cap // 2), cap, 2 * cap, 4 * cap})


def thinking_of(completion: str, fmt: str) -> str:
    """Return the part of a trace that extension continues: open traces' thinking before `</think>`."""
    from mrt_star.formats.prompts import THINK_CLOSE

    if fmt == "open" and THINK_CLOSE in completion:
        return completion[: completion.index(THINK_CLOSE)].rstrip("\n")
    return completion.rstrip("\n")


def extend_thinking(engine: Any, cfg: Any, rows: list[dict[str, Any]], seed: int) -> list[tuple[str, int]]:
    """Return (extended thinking, times extended) per row: "Wait" appended until the largest budget is spent."""
    from mrt_star.formats.prompts import THINK_CLOSE

    top = max(extrapolation_budgets(cfg))
    room = getattr(engine, "max_context", None)
    state = [{"text": thinking_of(r["completion"], r["format"]), "ext": 0} for r in rows]
    for s in state:
        s["tokens"] = engine.count_tokens([s["text"]])[0]
    for round_ in range(cfg.max_extensions):
        active = [(s, r) for s, r in zip(state, rows, strict=True) if s["tokens"] < top
                  and (room is None or (r.get("prompt_tokens") or 0) + s["tokens"] + 16 < room)]
        if not active:
            break
        texts = [s["text"] + EXTENSION_SEPARATOR[r["format"]] + cfg.extension_word for s, r in active]
        stop = (THINK_CLOSE,) if any(r["format"] == "open" for _, r in active) else ()
        outputs = engine.generate([_assistant(r["prompt"], t) for (_, r), t in zip(active, texts, strict=True)],
                                  _params(cfg, 1, seed + 7919 * (round_ + 1), stop=stop))
        for (s, _), text, (c,) in zip(active, texts, outputs, strict=True):
            s["text"] = text + c.text.split(THINK_CLOSE)[0]
            s["ext"] += 1
        counts = engine.count_tokens([s["text"] for s, _ in active])
        for (s, _), n in zip(active, counts, strict=True):
            s["tokens"] = n
    return [(s["text"], s["ext"]) for s in state]


def add_extrapolation(engine: Any, grader: Any, cfg: Any, rows: list[dict[str, Any]], seed: int) -> None:
    """Add `extensions`, `extension_tokens`/`_values`/`_answer_tokens` and `stop_tokens` to each row."""
    from mrt_star.formats.prompts import FORCE_TEXT, forced_completion_text, forced_prefix

    budgets = extrapolation_budgets(cfg)
    tokenizer = engine.tokenizer
    room = getattr(engine, "max_context", None)
    requests, where = [], []
    for row, (text, ext) in zip(rows, extend_thinking(engine, cfg, rows, seed), strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        row["extensions"], row["extension_tokens"] = ext, [float(b) for b in budgets]
        row["stop_tokens"] = engine.count_tokens([FORCE_TEXT[row["format"]]])[0]
        limit = len(ids)
        if room is not None:  # a cut must leave the prompt, stop text and forced answer inside the context
            limit = min(limit, room - (row.get("prompt_tokens") or 0) - row["stop_tokens"] - cfg.prover_max_new_tokens)
        for b in budgets:
            cut = max(0, min(b, limit))
            prefix = text if cut >= len(ids) else tokenizer.decode(ids[:cut])
            requests.append(_assistant(row["prompt"], forced_prefix(prefix, row["format"])))
            where.append(row)
    outputs = engine.generate(requests, _prover_params(cfg, seed + 1)) if requests else []
    graded = iter(grader.grade_many([(forced_completion_text(row["format"], c.text), row["answer"])
                                     for row, group in zip(where, outputs, strict=True) for c in group]))
    for row in rows:
        row["extension_values"], row["extension_answer_tokens"] = [], []
    for row, group in zip(where, outputs, strict=True):
        flags = [bool(next(graded).correct) for _ in group]
        row["extension_values"].append(sum(flags) / len(flags) if flags else 0.0)
        row["extension_answer_tokens"].append(sum(c.completion_tokens for c in group) / len(group) if group else 0.0)
