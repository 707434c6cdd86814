"""Symbolic grading worker: a separate process the parent kills when an answer takes too long.

Protocol (ASCII JSON lines): the worker writes "ready" once math-verify is loaded, then reads one chunk
per line, `[[answer, reference], ...]`, and writes one `[correct, reason]` line per item as soon as that
item is done, so the parent can time every item separately while paying one message per chunk.

Run as `python -c "from mrt_star.grading._worker import main; main()" TIMEOUT_S MEMORY_MB`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from functools import lru_cache
from typing import Any

_TIMEOUT_S = 5.0


def main() -> None:
    """Serve chunks from stdin until it closes (the parent went away or closed the pool)."""
    global _TIMEOUT_S
    _TIMEOUT_S = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    memory_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="ascii")
    os.dup2(2, 1)
    _limit_memory(memory_mb)
    _load()
    channel.write('"ready"\n')
    for line in sys.stdin.buffer:
        for answer, reference in json.loads(line):
            _limit_cpu()
            channel.write(json.dumps(check(answer, reference)) + "\n")


def check(answer: str, reference: str) -> list[Any]:
    """Return [correct, reason] for one extracted answer against a reference (math-verify, no own timeout)."""
    try:
        gold = _parse(reference)
        pred = _parse(answer)
        if not gold or not pred:
            return [False, "unparseable"]
        if _equal(gold, pred) or _equal_without_percent(answer, reference):
            return [True, "ok"]
        # A prediction math-verify could only keep as a raw string was never understood as math.
        return [False, "wrong" if any(not isinstance(p, str) for p in pred) else "unparseable"]
    except Exception:  # noqa: BLE001 - one bad answer must not take the worker down
        return [False, "error"]


def _equal(gold: tuple[Any, ...], pred: tuple[Any, ...]) -> bool:
    from math_verify import verify

    # Set-relation comparison lets "1 < x < 3" match the interval (1,3), as a human grader would.
    return verify(list(gold), list(pred), allow_set_relation_comp=True, timeout_seconds=None)


def _equal_without_percent(answer: str, reference: str) -> bool:
    """Return True when only one side carries a percent sign and the numbers match without it (12.5% vs 12.5).

    math-verify equates 25% with 25 but not 12.5% with 12.5; a "what percent" answer is either way right.
    """
    a, r = answer.rstrip(), reference.rstrip()
    if a.endswith("\\%") == r.endswith("\\%"):
        return False
    a, r = a.removesuffix("\\%"), r.removesuffix("\\%")
    gold, pred = _parse(r), _parse(a)
    return bool(gold and pred) and _equal(gold, pred)


@lru_cache(maxsize=4096)
def _parse(latex: str) -> tuple[Any, ...]:
    """Return math-verify's parses of one bare LaTeX answer (cached: references repeat across samples)."""
    from math_verify import LatexExtractionConfig, parse

    # Boxing makes math-verify take the whole answer as one expression. Only the LaTeX path is used:
    # math-verify's plain-expression path runs sympy's parse_expr (an eval) on the text.
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    return tuple(parse("\\boxed{" + latex + "}", extraction_config=config, parsing_timeout=None))


def _load() -> None:
    """Import math-verify and parse once, so no item pays the start-up cost inside its time limit."""
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # "timeout disabled" notices: we time items here
    check("\\frac{1}{2}", "0.5")
    _parse.cache_clear()


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space, so a hostile answer hits MemoryError instead of swapping the machine."""
    if memory_mb <= 0:
        return
    import resource

    limit = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _limit_cpu() -> None:
    """Let the kernel kill this worker if one item runs far past its limit (e.g. the parent died mid-item)."""
    import resource

    soft = int(time.process_time() + 4 * _TIMEOUT_S + 30)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


if __name__ == "__main__":
    main()
