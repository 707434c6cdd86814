"""The toy build's report: held-out accuracy per format, backtrack rate and the prover on the empty prefix.

Sampled with plain `model.generate` (no engine) right after training, before the folder is published.
"""

from __future__ import annotations

from typing import Any

from mrt_star.formats.prompts import FORMATS
from mrt_star.toy.problems import FAMILIES, generate_problems

EVAL_SEED_OFFSET = 7919  # held-out problems come from a different stream than training problems


def sample_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                       batch_size: int = 64) -> list[str]:
    """Return one temperature-1 sample per rendered prompt (batched `generate`, left padding)."""
    import torch

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], add_special_tokens=False, padding=True,
                        return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def evaluate(model, tokenizer, recipe: Any) -> dict[str, Any]:
    """Return held-out numbers: per format first-attempt and final accuracy, backtrack rate, prover J(-1)."""
    from mrt_star.formats.chat import render_chat
    from mrt_star.formats.episodes import split_episodes
    from mrt_star.formats.prompts import BACKTRACK_RE, THINK_OPEN, forced_prefix, user_prompt
    from mrt_star.grading.extract import last_boxed
    from mrt_star.toy.traces import TOY_TEMPLATE, toy_value

    problems = eval_problems(recipe)
    report: dict[str, Any] = {"per_format": {}}
    for i, fmt in enumerate(FORMATS):
        users = [{"role": "user", "content": user_prompt(p["problem"], TOY_TEMPLATE[fmt])} for p in problems]
        texts = sample_completions(model, tokenizer, [render_chat(tokenizer, [u]) for u in users],
                                   recipe.max_new_tokens, recipe.seed + i)
        refs = [toy_value(p["answer"]) for p in problems]
        final = [toy_value(last_boxed(t)) == r for t, r in zip(texts, refs, strict=True)]
        first = [toy_value(last_boxed(split_episodes(t, fmt)[0])) == r for t, r in zip(texts, refs, strict=True)]
        # The prover on the empty prefix: how often a forced answer with no work is right (J(-1)).
        empty_prefix = forced_prefix(THINK_OPEN + "\n" if fmt == "open" else "", fmt)
        forced = [render_chat(tokenizer, [u, {"role": "assistant", "content": empty_prefix}]) for u in users]
        answers = sample_completions(model, tokenizer, forced, 24, recipe.seed + 10 + i)
        if fmt != "open":
            answers = ["\\boxed{" + a for a in answers]
        empty = [toy_value(last_boxed(a)) == r for a, r in zip(answers, refs, strict=True)]
        row = {
            "first_attempt_accuracy": _mean(first),
            "final_accuracy": _mean(final),
            "boxed_rate": _mean([last_boxed(t) is not None for t in texts]),
            "mean_chars": _mean([len(t) for t in texts]),
            "prover_empty_prefix_accuracy": _mean(empty),
            "final_accuracy_by_family": {
                fam: _mean([ok for ok, p in zip(final, problems, strict=True) if p["family"] == fam]) for fam in FAMILIES
            },
            "example": texts[0],
        }
        if fmt == "backtrack":
            row["backtrack_rate"] = _mean([bool(BACKTRACK_RE.search(t)) for t in texts])
        report["per_format"][fmt] = row
    rows = report["per_format"].values()
    report["first_attempt_accuracy"] = _mean([r["first_attempt_accuracy"] for r in rows])
    report["final_accuracy"] = _mean([r["final_accuracy"] for r in rows])
    report["backtrack_rate"] = report["per_format"]["backtrack"]["backtrack_rate"]
    report["eval_problems"] = len(problems)
    return report


def eval_problems(recipe: Any) -> list[dict]:
    """Return the held-out problems of a build (the same for every format)."""
    return generate_problems(recipe.eval_problems, seed=recipe.seed + EVAL_SEED_OFFSET, difficulty=recipe.difficulty)


def _mean(xs) -> float:
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else 0.0


