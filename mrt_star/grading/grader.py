"""Grading modes, `grade` / `grade_detail`, and the batch `Grader` that runs symbolic checks in workers.

Modes:
  symbolic   math-verify's parse/verify (latex2sympy2_extended): equivalent forms are equal (0.5 = \\frac12,
             2\\sqrt2 = \\sqrt8, x=3 = 3, intervals, sets, matrices, units, \\text{(B)} = B).
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
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from mrt_star.grading import hendrycks
from mrt_star.grading.extract import MAX_SCAN_CHARS, extract_answer

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


@dataclass(frozen=True)
class GradeResult:
    """One graded answer: whether it is correct, the answer extracted from the completion, and why."""

    correct: bool
    extracted: str | None
    reason: str


class WorkerStartError(RuntimeError):
    """Grading workers die before they are ready (a broken install): nothing can be graded symbolically."""


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
    """

    def __init__(self, mode: str = "symbolic", timeout_s: float = 5.0, workers: int | None = None,
                 max_chars: int = MAX_ANSWER_CHARS, max_scan_chars: int = MAX_SCAN_CHARS,
                 chunk_size: int = 32, cache_size: int = 100_000, memory_mb: int = 4096,
                 fallbacks: bool | None = None):
        self.mode = check_mode(mode)
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
            todo: dict[tuple[str, str, str], list[int]] = {}
            extracted: list[str | None] = [None] * len(pairs)
            for i, pair in enumerate(pairs):
                decided, answer, ref = self._prepare_safely(pair)
                extracted[i] = answer
                if decided is not None:
                    results[i] = decided
                    self.stats["fast_path"] += 1
                    continue
                key = (answer, ref, self.mode)
                if key in self._cache:
                    self._cache.move_to_end(key)
                    correct, reason = self._cache[key]
                    results[i] = GradeResult(correct, answer, reason)
                    self.stats["cache_hits"] += 1
                else:
                    todo.setdefault(key, []).append(i)
            if todo:
                self._run_workers(todo, extracted, results)
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

    def _prepare_safely(self, pair: Any) -> tuple[GradeResult | None, str | None, str]:
        """Return `_prepare` of one pair, or an "error" result if the pair is malformed."""
        try:
            completion, reference = pair
            return self._prepare(completion, reference)
        except Exception:  # noqa: BLE001 - one bad pair must not fail the batch
            return GradeResult(False, None, "error"), None, ""

    def _prepare(self, completion: Any, reference: Any) -> tuple[GradeResult | None, str | None, str]:
        """Return (a result decided without a worker or None, the extracted answer, the clean reference)."""
        if not isinstance(reference, (str, int, float)):  # a number from a data set is fine, None is not
            return GradeResult(False, None, "error"), None, ""
        ref = str(reference).strip()
        if completion is None:
            return GradeResult(False, None, "no-answer"), None, ref
        if not isinstance(completion, str):
            return GradeResult(False, None, "error"), None, ref
        answer = extract_answer(completion, fallbacks=self.fallbacks, max_scan_chars=self.max_scan_chars)
        if answer is None or not answer.strip():
            return GradeResult(False, answer, "no-answer"), answer, ref
        answer = answer.strip()
        if len(answer) > self.max_chars or len(ref) > self.max_chars * MAX_REFERENCE_FACTOR:
            return GradeResult(False, answer, "too-long"), answer, ref
        if _CONTROL.search(answer):
            return GradeResult(False, answer, "unparseable"), answer, ref
        if self.mode == "hendrycks":
            return _verdict(hendrycks.equivalent(answer, ref), answer), answer, ref
        return _symbolic_fast_path(answer, ref), answer, ref

    def _run_workers(self, todo: dict[tuple[str, str, str], list[int]], extracted: list[str | None],
                     results: list[GradeResult | None]) -> None:
        if self._pool is None:
            from mrt_star.grading._pool import WorkerPool

            self._pool = WorkerPool(self.workers, self.timeout_s, self.memory_mb)
        keys = list(todo)
        outcomes = self._pool.run([(answer, ref) for answer, ref, _ in keys], self.chunk_size)
        for key, (correct, reason) in zip(keys, outcomes, strict=True):
            self._remember(key, (correct, reason))
            self.stats["computed"] += 1
            self.stats["timeouts"] += reason == "timeout"
            for i in todo[key]:
                results[i] = GradeResult(correct, extracted[i], reason)

    def _remember(self, key: tuple[str, str, str], outcome: tuple[bool, str]) -> None:
        # Timeouts and crashes are cached too: the same answer would only burn the same time again.
        if self.cache_size <= 0:
            return
        self._cache[key] = outcome
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _verdict(correct: bool, answer: str | None) -> GradeResult:
    return GradeResult(correct, answer, "ok" if correct else "wrong")


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


def _symbolic_fast_path(answer: str, reference: str) -> GradeResult | None:
    """Return a result when no symbolic work is needed (same text, or two plain rationals), else None."""
    a, r = _light(answer), _light(reference)
    if a == r:
        return _verdict(True, answer)
    if _INTEGER.fullmatch(a) and _INTEGER.fullmatch(r):
        return _verdict(int(a) == int(r), answer)
    a_value, r_value = _rational(a), _rational(r)
    if a_value is not None and r_value is not None:
        return _verdict(a_value == r_value, answer)
    if not _balanced(answer):
        return GradeResult(False, answer, "unparseable")
    return None


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


_SHARED: dict[tuple[str, float], Grader] = {}
_SHARED_LOCK = threading.Lock()


def _shared_grader(mode: str, timeout_s: float) -> Grader:
    """Return the process-wide Grader for (mode, timeout_s), so one-off calls reuse warm workers."""
    check_mode(mode)
    with _SHARED_LOCK:
        grader = _SHARED.get((mode, float(timeout_s)))
        if grader is None:
            grader = _SHARED[(mode, float(timeout_s))] = Grader(mode, timeout_s=timeout_s)
        return grader


def grade_detail(completion: str, reference: str, mode: str = "symbolic", timeout_s: float = 5.0) -> GradeResult:
    """Return the GradeResult (correct, extracted answer, reason) of one completion against a bare reference."""
    return _shared_grader(mode, timeout_s).grade(completion, reference)


def grade(completion: str, reference: str, mode: str = "symbolic", timeout_s: float = 5.0) -> bool:
    """Return True when the completion's final answer matches the reference under `mode`."""
    return grade_detail(completion, reference, mode, timeout_s).correct
