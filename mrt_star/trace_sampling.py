"""How each trace format is sampled (DESIGN.md §2): backtrack, linearized and open, batched over problems.

Per format:
- backtrack: a first attempt in numbered steps (stopped before any backtrack line the model starts), a
  backtrack point (random, or where the model itself began to backtrack), the backtrack line, then a
  revision sampled with the attempt, the line and (shared_prefix) the kept steps prefilled. With
  `explicit_backtrack` the model writes the whole trace, backtracks included, in one call.
- linearized: up to `max_attempts` complete attempts, each sampled with all earlier attempts and the
  attempt separator prefilled, optionally ending a chain at its first correct attempt.
- open: one free generation; a `<think>` the chat template opens is put back in front of the trace.

Seeds are derived from the problem and sample (`derive_seed`), never from a worker or batch.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from mrt_star.formats.prompts import ATTEMPT_SEPARATOR, BACKTRACK_RE, STEP_RE, THINK_OPEN, backtrack_line

BACKTRACK_POINTS = ("random", "marked")
BACKTRACK_VARIANTS = ("shared_prefix", "no_shared_prefix", "restart")
# The first attempt stops where the model starts a backtrack line of its own.
BACKTRACK_STOP = "\nBacktrack to"
MARK_TOKENS = 16  # enough to finish "Backtrack to Line 123" / "... beginning"


@dataclass
class Trace:
    """One sampled trace before grading: its problem item, sample index, text and finish reason."""

    item: dict[str, Any]
    sample_index: int
    text: str
    finish_reason: str


def derive_seed(*parts: Any) -> int:
    """Return a 31-bit seed from parts (run seed, shard, call), so no two engine calls share a stream."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


# --- sampling ------------------------------------------------------------------------------------------


def _params(cfg: Any, seed: int, n: int = 1, stop: tuple[str, ...] = (), max_new_tokens: int | None = None):
    from mrt_star.engines.base import SamplingParams

    return SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, stop=stop, seed=seed,
                          max_new_tokens=max_new_tokens or cfg.max_new_tokens)


def _request(item: dict[str, Any], assistant: str = ""):
    from mrt_star.engines.base import Request

    prompt = list(item["prompt"])
    return Request([*prompt, {"role": "assistant", "content": assistant}] if assistant else prompt)


def _fits(engine: Any, requests: list) -> list[bool]:
    """Return, per request, whether its rendered prompt leaves room for at least one new token."""
    counts = engine.count_tokens([engine.render(r) for r in requests]) if requests else []
    return [c + 1 <= engine.max_context for c in counts]


def sample_open(engine: Any, grader: Any, cfg: Any, items: list[dict], seed: int) -> list[Trace]:
    """Return n free-generation traces per item (a template-opened `<think>` written back in front)."""
    from mrt_star.formats.chat import template_opens_think

    opening = ""
    if items and template_opens_think(engine.tokenizer):
        rendered = engine.render(_request(items[0]))
        opening = rendered[rendered.rfind(THINK_OPEN):]  # e.g. "<think>\n", exactly as the template wrote it
    outputs = engine.generate([_request(it) for it in items], _params(cfg, derive_seed(seed, "open"), n=cfg.n))
    traces = []
    for it, samples in zip(items, outputs, strict=True):
        for s, c in enumerate(samples):
            text = c.text if not opening or c.text.lstrip().startswith(THINK_OPEN) else opening + c.text
            traces.append(Trace(it, s, text, c.finish_reason))
    return traces


def sample_linearized(engine: Any, grader: Any, cfg: Any, items: list[dict], seed: int) -> list[Trace]:
    """Return n chains of attempts per item; attempt k+1 is sampled with attempts 1..k prefilled."""
    sep = ATTEMPT_SEPARATOR
    firsts = engine.generate([_request(it) for it in items],
                             _params(cfg, derive_seed(seed, "attempt", 0), n=cfg.n, stop=(sep,)))
    chains = [{"item": it, "s": s, "attempts": [c.text], "last": c, "finish": c.finish_reason, "open": True}
              for it, samples in zip(items, firsts, strict=True) for s, c in enumerate(samples)]
    for attempt in range(1, cfg.max_attempts):
        for ch in chains:
            last = ch["last"]
            wants_more = last.finish_reason == "stop" and (last.stop_reason == sep or cfg.continue_after_eos)
            ch["open"] = ch["open"] and wants_more
        active = [ch for ch in chains if ch["open"]]
        if cfg.stop_at_first_correct and active:
            grades = grader.grade_many([(ch["attempts"][-1], ch["item"]["answer"]) for ch in active])
            for ch, g in zip(active, grades, strict=True):
                ch["open"] = not g.correct
            active = [ch for ch in active if ch["open"]]
        requests = [_request(ch["item"], sep.join(ch["attempts"]) + sep) for ch in active]
        fits = _fits(engine, requests)
        for ch, ok in zip(active, fits, strict=True):
            if not ok:  # the chain filled the context: it ends here, cut short
                ch["open"], ch["finish"] = False, "length"
        todo = [(ch, r) for ch, r, ok in zip(active, requests, fits, strict=True) if ok]
        if not todo:
            break
        outputs = engine.generate([r for _, r in todo], _params(cfg, derive_seed(seed, "attempt", attempt), stop=(sep,)))
        for (ch, _), (c,) in zip(todo, outputs, strict=True):
            ch["attempts"].append(c.text)
            ch["last"], ch["finish"] = c, c.finish_reason
    return [Trace(ch["item"], ch["s"], sep.join(ch["attempts"]), ch["finish"]) for ch in chains]


def backtrack_prefix(attempt: str, variant: str, rng: random.Random, mark: int | None = None) -> str:
    """Return the assistant text a revision continues: the attempt, the backtrack line, and the kept steps.

    `mark` is the step the model itself asked to go back to (0: the beginning); None or a step the attempt
    does not have means a step drawn at random. `shared_prefix` copies the steps before the point after
    the backtrack line; `no_shared_prefix` leaves them in the attempt above; `restart` goes back to the
    beginning.
    """
    body = attempt if not attempt or attempt.endswith("\n") else attempt + "\n"
    steps = list(STEP_RE.finditer(attempt))
    if variant == "restart" or not steps or mark == 0:
        return body + backtrack_line(None) + "\n"
    point = next((m for m in steps if int(m.group(1)) == mark), None) if mark else None
    point = point or rng.choice(steps)
    kept = attempt[steps[0].start() : point.start()] if variant == "shared_prefix" else ""
    return body + backtrack_line(int(point.group(1))) + "\n" + kept


def _marks(engine: Any, cfg: Any, attempts: list[tuple[dict, int, Any]], seed: int) -> dict[int, int]:
    """Return {attempt index: step it asked to go back to (0 = beginning)} for attempts that began a
    backtrack line, by letting the model finish that line."""
    asked = [j for j, (_, _, c) in enumerate(attempts) if c.stop_reason == BACKTRACK_STOP]
    requests = [_request(attempts[j][0], attempts[j][2].text + BACKTRACK_STOP) for j in asked]
    fits = _fits(engine, requests)
    asked = [j for j, ok in zip(asked, fits, strict=True) if ok]
    requests = [r for r, ok in zip(requests, fits, strict=True) if ok]
    if not requests:
        return {}
    outputs = engine.generate(requests, _params(cfg, derive_seed(seed, "mark"), stop=("\n",),
                                                max_new_tokens=MARK_TOKENS))
    marks = {}
    for j, (c,) in zip(asked, outputs, strict=True):
        m = BACKTRACK_RE.match(BACKTRACK_STOP.lstrip("\n") + c.text.rstrip(" \t"))
        if m:
            marks[j] = int(m.group(1)) if m.group(1) else 0
    return marks


def sample_backtrack(engine: Any, grader: Any, cfg: Any, items: list[dict], seed: int) -> list[Trace]:
    """Return n backtracking traces per item: attempt, backtrack line, revision (or one explicit call)."""
    requests = [_request(it) for it in items]
    if cfg.explicit_backtrack:
        outputs = engine.generate(requests, _params(cfg, derive_seed(seed, "explicit"), n=cfg.n))
        return [Trace(it, s, c.text, c.finish_reason)
                for it, samples in zip(items, outputs, strict=True) for s, c in enumerate(samples)]
    firsts = engine.generate(requests, _params(cfg, derive_seed(seed, "attempt"), n=cfg.n, stop=(BACKTRACK_STOP,)))
    attempts = [(it, s, c) for it, samples in zip(items, firsts, strict=True) for s, c in enumerate(samples)]
    marks = {}
    if cfg.backtrack_point == "marked" and cfg.backtrack_variant != "restart":
        marks = _marks(engine, cfg, attempts, seed)
    rng = random.Random(derive_seed(seed, "point"))
    prefixes = [backtrack_prefix(c.text, cfg.backtrack_variant, rng, marks.get(j))
                for j, (_, _, c) in enumerate(attempts)]
    revisions = [_request(it, p) for (it, _, _), p in zip(attempts, prefixes, strict=True)]
    fits = _fits(engine, revisions)
    todo = [j for j, ok in enumerate(fits) if ok]
    outputs = engine.generate([revisions[j] for j in todo], _params(cfg, derive_seed(seed, "revision"))) if todo else []
    revised = {j: c for j, (c,) in zip(todo, outputs, strict=True)}
    traces = []
    for j, (it, s, c) in enumerate(attempts):
        if j in revised:
            traces.append(Trace(it, s, prefixes[j] + revised[j].text, revised[j].finish_reason))
        else:  # no room left for a revision: the attempt alone, cut short
            traces.append(Trace(it, s, c.text, "length"))
    return traces


SAMPLERS = {"backtrack": sample_backtrack, "linearized": sample_linearized, "open": sample_open}


