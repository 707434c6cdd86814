"""Grading modes, `grade` / `grade_detail`, and the batch `Grader` that runs symbolic checks in workers.

Modes:
  symbolic   the answer kinds of `kinds.plan` first (choice letters, number bases, yes/no, clock times, words,
             assignments and roots, free-form references, percent policy) after the named rewrites of
             `rewrite.py` (unicode, repeating decimals, scientific notation, mixed numbers, vectors, degrees,
             units); then math-verify's parse/verify (latex2sympy2_extended): equivalent forms are equal
             (0.5 = \\frac12, 2\\sqrt2 = \\sqrt8, x=3 = 3, intervals, sets, matrices). GradeResult.rule names both.
  hendrycks  Hendrycks-MATH string normalisation then exact match, for parity with the reference MRT code.

Model output is untrusted: nothing here evaluates text; symbolic parsing happens in worker processes that
are killed when an answer takes longer than `timeout_s`, and answers longer than `max_chars` are refused.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from mrt_star.grading import hendrycks
from mrt_star.grading.extract import MAX_SCAN_CHARS, extract_answer_detail
from mrt_star.grading.kinds import PERCENT_POLICIES, Plan, plan

GRADING_MODES: tuple[str, ...] = ("symbolic", "hendrycks")
REASONS: tuple[str, ...] = ("ok", "wrong", "no-answer", "timeout", "unparseable", "too-long", "error")

MAX_ANSWER_CHARS = 1000
# A reference comes from the data set, not the model: allow longer ones (big matrices), but not unbounded.
MAX_REFERENCE_FACTOR = 10

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACING = re.compile(r"\\[!,;: ]|\\(?:left|right)(?![A-Za-z])")
# A command name keeps one space before a letter (\pi r is not \pir); every other whitespace goes.
_WHITESPACE = re.compile(r"(\\[A-Za-z]+) (?=[A-Za-z])|\s")
_INTEGER = re.compile(r"[+-]?[0-9]+")
# An exact rational written plainly: 7, -3, \frac{2}{3}, -\frac{2}{3}, \frac{-2}{3}, 2/3 (no decimals: math-verify
# compares those with rounding, so they go to the workers).
_RATIONAL = re.compile(r"([+-]?)(?:\\frac\{([+-]?[0-9]{1,50})\}\{([0-9]{1,50})\}|([0-9]{1,50})/([0-9]{1,50})|([0-9]{1,50}))")

_SCIENTIFIC = re.compile(r"([+-]?[0-9]{1,50}(?:\.[0-9]{1,50})?)(?:\\times10\^\{([+-]?[0-9]{1,4})\})?")


@dataclass(frozen=True)
class GradeResult:
    """One graded answer: whether it is correct, the answer extracted from the completion, and why.

    `rule` says how: "<extraction>/<kind>", e.g. "boxed/repeating-decimal", "next-line/choice",
    "final-sentence/yes-no" (extraction: boxed, answer-phrase, next-line, final-sentence, none; kinds: see
    `kinds.plan` and `rewrite.REWRITES`). It is diagnostic, so results compare equal on the verdict alone.
    """

    correct: bool
    extracted: str | None
    reason: str
    rule: str = field(default="", compare=False)


def check_mode(mode: str) -> str:
    """Return `mode` if it is a grading mode, else raise ValueError naming the valid ones."""
    if mode not in GRADING_MODES:
        raise ValueError(f"unknown grading mode {mode!r}; valid modes: {', '.join(GRADING_MODES)}")
    return mode


class Grader:
    """Grade (completion, reference) pairs in batches, with a hard per-answer timeout and a result cache.

    Symbolic checks run in `workers` processes started on first use and reused; a worker whose answer
    overruns `timeout_s` is killed and replaced, and that answer gets reason "timeout". Safe to call from
    any thread (calls are serialised). Use as a context manager or call `close()` to stop the workers.
    `fallbacks` (answers without a box, see `extract_answer`) defaults to on in symbolic mode, off in
    hendrycks mode. Raises WorkerStartError when workers cannot start at all (a broken install).
    `percent` is the policy for a percent on one side only: "strict" (default) matches 25\\% with 25 only;
    "lenient" also with the ratio 0.25 or \\frac14 (see `kinds.percent`).
    """

    def __init__(self, mode: str = "symbolic", timeout_s: float = 5.0, workers: int | None = None,
                 max_chars: int = MAX_ANSWER_CHARS, max_scan_chars: int = MAX_SCAN_CHARS,
                 chunk_size: int = 32, cache_size: int = 100_000, memory_mb: int = 4096,
                 fallbacks: bool | None = None, percent: str = "strict"):
        self.mode = check_mode(mode)
        if percent not in PERCENT_POLICIES:
            raise ValueError(f"unknown percent policy {percent!r}; valid policies: {', '.join(PERCENT_POLICIES)}")
        self.percent = percent
        if not 0 < float(timeout_s) < 1e6:
            raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        # Hendrycks parity: the reference code only reads boxes, so no "final answer is" fallbacks there.
        self.fallbacks = self.mode == "symbolic" if fallbacks is None else bool(fallbacks)
        self.workers = int(workers) if workers else min(2, os.cpu_count() or 1)
        self.max_chars = int(max_chars)
        self.max_scan_chars = int(max_scan_chars)
        self.chunk_size = int(chunk_size)
        self.cache_size = int(cache_size)
        self.memory_mb = int(memory_mb)
        # computed: answers sent to a worker; fast_path: decided without one; cache_hits: reused results.
        self.stats = {"computed": 0, "fast_path": 0, "cache_hits": 0, "timeouts": 0}
        self._cache: OrderedDict[tuple[str, str, str], tuple[bool, str]] = OrderedDict()
        self._pool: Any = None
        self._lock = threading.Lock()

    def grade(self, completion: str, reference: str) -> GradeResult:
        """Return the GradeResult of one completion against its reference."""
        return self.grade_many([(completion, reference)])[0]

    def grade_many(self, pairs: Sequence[tuple[str, str]]) -> list[GradeResult]:
        """Return one GradeResult per (completion, reference) pair, in order; no single pair can fail the batch."""
        with self._lock:
            results: list[GradeResult | None] = [None] * len(pairs)
            pending: dict[int, tuple[str | None, Plan, str, list[tuple[bool, str] | None]]] = {}
            todo: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
            for i, pair in enumerate(pairs):
                decided, answer, how, grading = self._prepare_safely(pair)
                if decided is not None:
                    results[i] = decided
                    self.stats["fast_path"] += 1
                    continue
                outcomes: list[tuple[bool, str] | None] = [None] * len(grading.checks)
                fast_only = True
                for j, (a, r) in enumerate(grading.checks):
                    key = (a, r, self.mode)
                    fast = _symbolic_fast_path(a, r)
                    fast_only = fast_only and fast is not None
                    if fast is not None:
                        outcomes[j] = fast
                    elif key in self._cache:
                        self._cache.move_to_end(key)
                        outcomes[j] = self._cache[key]
                        self.stats["cache_hits"] += 1
                    else:
                        todo.setdefault(key, []).append((i, j))
                self.stats["fast_path"] += fast_only
                pending[i] = (answer, grading, how, outcomes)
            if todo:
                self._run_workers(todo, pending)
            for i, (answer, grading, how, outcomes) in pending.items():
                correct, reason = _combine(outcomes, grading.combine)  # type: ignore[arg-type]
                results[i] = GradeResult(correct, answer, reason, f"{how}/{grading.rule}")
            return results  # type: ignore[return-value]

    def cache_info(self) -> dict[str, int]:
        """Return the cache size and the counters (computed, fast_path, cache_hits, timeouts, restarts)."""
        restarts = self._pool.restarts if self._pool is not None else 0
        return {"size": len(self._cache), **self.stats, "restarts": restarts}

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare_safely(self, pair: Any) -> tuple[GradeResult | None, str | None, str, Plan]:
        """Return `_prepare` of one pair, or an "error" result if the pair is malformed."""
        try:
            completion, reference = pair
            return self._prepare(completion, reference)
        except Exception:  # noqa: BLE001 - one bad pair must not fail the batch
            return GradeResult(False, None, "error", "none/error"), None, "none", _NOTHING

    def _prepare(self, completion: Any, reference: Any) -> tuple[GradeResult | None, str | None, str, Plan]:
        """Return (a result decided without a worker or None, the extracted answer, how it was found, the plan)."""
        if not isinstance(reference, (str, int, float)):  # a number from a data set is fine, None is not
            return GradeResult(False, None, "error", "none/error"), None, "none", _NOTHING
        ref = str(reference).strip()
        if completion is None:
            return GradeResult(False, None, "no-answer", "none"), None, "none", _NOTHING
        if not isinstance(completion, str):
            return GradeResult(False, None, "error", "none/error"), None, "none", _NOTHING
        answer, how = extract_answer_detail(completion, fallbacks=self.fallbacks, max_scan_chars=self.max_scan_chars)
        if answer is None or not answer.strip():
            return GradeResult(False, answer, "no-answer", how), answer, how, _NOTHING
        answer = answer.strip()
        if len(answer) > self.max_chars or len(ref) > self.max_chars * MAX_REFERENCE_FACTOR:
            return GradeResult(False, answer, "too-long", how), answer, how, _NOTHING
        if _CONTROL.search(answer):
            return GradeResult(False, answer, "unparseable", how), answer, how, _NOTHING
        if self.mode == "hendrycks":
            correct = hendrycks.equivalent(answer, ref)
            return GradeResult(correct, answer, "ok" if correct else "wrong", f"{how}/hendrycks"), answer, how, _NOTHING
        grading = plan(answer, ref, self.percent)
        if grading.decided is not None:
            reason = "ok" if grading.decided else "wrong"
            return GradeResult(grading.decided, answer, reason, f"{how}/{grading.rule}"), answer, how, grading
        if not _balanced(answer):
            return GradeResult(False, answer, "unparseable", f"{how}/{grading.rule}"), answer, how, grading
        return None, answer, how, grading

    def _run_workers(self, todo: dict[tuple[str, str, str], list[tuple[int, int]]],
                     pending: dict[int, tuple[str | None, Plan, str, list[tuple[bool, str] | None]]]) -> None:
        if self._pool is None:
            from mrt_star.grading._pool import WorkerPool

            self._pool = WorkerPool(self.workers, self.timeout_s, self.memory_mb)
        keys = list(todo)
        outcomes = self._pool.run([(answer, ref) for answer, ref, _ in keys], self.chunk_size)
        for key, (correct, reason) in zip(keys, outcomes, strict=True):
            self._remember(key, (correct, reason))
            self.stats["computed"] += 1
            self.stats["timeouts"] += reason == "timeout"
            for i, j in todo[key]:
                pending[i][3][j] = (correct, reason)

    def _remember(self, key: tuple[str, str, str], outcome: tuple[bool, str]) -> None:
        # Timeouts and crashes are cached too: the same answer would only burn the same time again.
        if self.cache_size <= 0:
            return
        self._cache[key] = outcome
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


_NOTHING = Plan(False, rule="none")


def _combine(outcomes: list[tuple[bool, str]], combine: str) -> tuple[bool, str]:
    """Return one (correct, reason) from a plan's checks: all must hold, or any one may."""
    if combine == "any":
        if any(c for c, _ in outcomes):
            return True, "ok"
        reasons = [r for _, r in outcomes]
        return False, "wrong" if "wrong" in reasons else reasons[0]
    for correct, reason in outcomes:
        if not correct:
            return False, reason
    return True, "ok"


def _light(latex: str) -> str:
    """Return `latex` without spacing commands, \\left/\\right, whitespace; \\dfrac and \\tfrac as \\frac."""
    latex = _SPACING.sub("", latex.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))
    return _WHITESPACE.sub(lambda m: m.group(1) + " " if m.group(1) else "", " ".join(latex.split()))


def _rational(latex: str) -> Fraction | None:
    """Return the value of a plainly written rational (`-7`, `\\frac{2}{3}`, `4/6`), None for anything else."""
    m = _RATIONAL.fullmatch(latex)
    if m is None:
        return None
    sign, num, den, slash_num, slash_den, integer = m.groups()
    try:
        value = Fraction(int(num), int(den)) if num else Fraction(int(slash_num), int(slash_den)) if slash_num \
            else Fraction(int(integer))
    except ZeroDivisionError:
        return None
    return -value if sign == "-" else value


def _symbolic_fast_path(answer: str, reference: str) -> tuple[bool, str] | None:
    """Return (correct, reason) when no symbolic work is needed (same text, or two plain rationals), else None."""
    a, r = _light(answer), _light(reference)
    if a == r:
        return True, "ok"
    if _INTEGER.fullmatch(a) and _INTEGER.fullmatch(r):
        return (True, "ok") if int(a) == int(r) else (False, "wrong")
    a_value, r_value = _rational(a), _rational(r)
    if a_value is not None and r_value is not None:
        return (True, "ok") if a_value == r_value else (False, "wrong")
    if "\\times10^" in a + r:  # scientific notation (rewrite.scientific): exact, math-verify's floats overflow
        a_value, r_value = _scientific(a), _scientific(r)
        if a_value is not None and r_value is not None:
            return (True, "ok") if a_value == r_value else (False, "wrong")
    if not _balanced(answer):
        return False, "unparseable"
    return None


def _scientific(latex: str) -> Fraction | None:
    """Return the exact value of `6.02\\times10^{23}`, `0.0015` or `42` (plain decimals), None for anything else."""
    m = _SCIENTIFIC.fullmatch(latex)
    if m is None or abs(int(m.group(2) or 0)) > 400:
        return None
    return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2) or 0)


def _balanced(latex: str) -> bool:
    """Return True when the unescaped braces of `latex` pair up."""
    depth = 0
    for m in re.finditer(r"\\.|[{}]", latex, re.S):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


_SHARED: dict[tuple[str, float, str], Grader] = {}
_SHARED_LOCK = threading.Lock()


def _shared_grader(mode: str, timeout_s: float, percent: str = "strict") -> Grader:
    """Return the process-wide Grader for (mode, timeout_s, percent), so one-off calls reuse warm workers."""
    check_mode(mode)
    key = (mode, float(timeout_s), percent)
    with _SHARED_LOCK:
        grader = _SHARED.get(key)
        if grader is None:
            grader = _SHARED[key] = Grader(mode, timeout_s=timeout_s, percent=percent)
        return grader


def grade_detail(completion: str, reference: str, mode: str = "symbolic", timeout_s: float = 5.0,
                 percent: str = "strict") -> GradeResult:
    """Return the GradeResult (correct, extracted answer, reason, rule) of one completion against a bare reference."""
    return _shared_grader(mode, timeout_s, percent).grade(completion, reference)


def grade(completion: str, reference: str, mode: str = "symbolic", timeout_s: float = 5.0,
          percent: str = "strict") -> bool:
    """Return True when the completion's final answer matches the reference under `mode`."""
    return grade_detail(completion, reference, mode, timeout_s, percent).correct
