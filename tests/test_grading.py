"""Grading: labelled agreement, answer extraction, Hendrycks normalisation, hostile inputs, timeouts, cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mrt_star.grading import (
    GRADING_MODES,
    Grader,
    GradeResult,
    WorkerStartError,
    extract_answer,
    grade,
    grade_detail,
)
from mrt_star.grading.hendrycks import normalize

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "grading_cases.jsonl").open()]
CATEGORIES = {"integers", "decimals", "fractions", "radicals", "pi", "intervals", "sets/tuples", "matrices",
              "percentages", "units", "expressions", "equations", "multiple choice", "degrees", "malformed"}
REASONS = {"ok", "wrong", "no-answer", "timeout", "unparseable", "too-long", "error"}
# sympy never finishes this one: it tries to build the integer 9^(9^387420489).
HANG = "9^{9^{9^{9}}}"


@pytest.fixture(scope="module")
def grader():
    """One symbolic grader (two warm workers) shared by the tests that only need ordinary grading."""
    with Grader("symbolic", timeout_s=10.0) as g:
        yield g


# --- (a) agreement with the labelled cases ------------------------------------------------------------


def test_labelled_cases_are_varied_and_balanced():
    assert len(CASES) >= 150
    assert CATEGORIES <= {c["category"] for c in CASES}
    assert sum(not c["correct"] for c in CASES) / len(CASES) >= 0.4
    assert all(isinstance(c["correct"], bool) and c["completion"] and c["reference"] for c in CASES)


def test_symbolic_mode_agrees_with_the_labels(grader):
    results = grader.grade_many([(c["completion"], c["reference"]) for c in CASES])
    wrong = [(c, r) for c, r in zip(CASES, results, strict=True) if r.correct != c["correct"]]
    for c, r in wrong:
        print(f"disagree [{c['category']}] extracted={r.extracted!r} reference={c['reference']!r} "
              f"label={c['correct']} reason={r.reason}")
    assert all(r.reason in REASONS for r in results)
    assert all((r.reason == "ok") == r.correct for r in results)
    assert 1 - len(wrong) / len(CASES) >= 0.97


# --- (b) answer extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("so \\boxed{5}.", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),  # nested braces
    ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last box wins
    ("\\fbox{7}", "7"),
    ("\\boxed{1} and later \\fbox{3}", "3"),
    ("\\boxed 5", "5"),
    ("so the answer is $\\boxed 42$.", "42"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are not grouping braces
    ("\\boxed {  x = 3 }", "x = 3"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\boxed{3} then a truncated \\boxed{\\frac{1}{2", "3"),  # an unclosed box does not count
    ("\\boxed{\\boxed{4}}", "4"),
    ("\\boxedx{3}", None),
    ("no box here at all", None),
    ("", None),
    ("\\boxed{}", ""),
])
def test_extract_answer_boxes(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("Thus the final answer is 12.", "12"),
    ("Answer: (1, 2)", "(1, 2)"),
    ("The answer is **7**.", "7"),
    ("the answer is \\(x = 3\\) because", "x = 3"),
    ("answer: 3\nfinal answer: 4\nanswer: 5", "4"),  # "final answer" outranks a later "answer:"
    ("\\boxed{9} and the answer is 8", "9"),  # a box always wins over a fallback phrase
])
def test_extract_answer_fallbacks(text, expected):
    assert extract_answer(text) == expected
    assert extract_answer(text, fallbacks=False) == ("9" if "boxed" in text else None)


def test_extract_answer_custom_fallbacks_and_scan_cap():
    assert extract_answer("Result => 17\n", fallbacks=[r"Result\s*=>"]) == "17"
    assert extract_answer("The final answer is 3", fallbacks=[r"Result\s*=>"]) is None
    # Only the tail of a huge completion is scanned: a box before it is out of reach.
    assert extract_answer("\\boxed{1}" + "x" * 300_000) is None
    assert extract_answer("x" * 300_000 + "\\boxed{2}") == "2"


# --- (c) Hendrycks normalisation -----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "normalized"), [
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\tfrac12", "\\frac{1}{2}"),
    ("\\frac1{72}", "\\frac{1}{72}"),
    ("0.5", "\\frac{1}{2}"),
    (".5", "\\frac{1}{2}"),
    ("3/4", "\\frac{3}{4}"),
    ("x = 5", "5"),
    ("xy = 5", "xy=5"),
    ("10\\%", "10"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("\\$5", "5"),
    ("5 \\text{ cm}", "5"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("\\sqrt3", "\\sqrt{3}"),
    ("2\\sqrt 2", "2\\sqrt{2}"),
    ("a\\!b", "ab"),
    ("1\n2", "12"),
    ("\\\\frac{1}{2}", "\\frac{1}{2}"),
    ("{.5}", "{0.5}"),
    ("", ""),
])
def test_hendrycks_normalize(raw, normalized):
    assert normalize(raw) == normalized


@pytest.mark.parametrize(("answer", "reference", "correct"), [
    ("\\dfrac{1}{2}", "0.5", True),
    ("x = 3", "3", True),
    ("10\\%", "10", True),
    ("5 \\text{ cm}", "5", True),
    ("90^\\circ", "90", True),
    ("\\frac34", "3/4", True),
    ("2\\sqrt2", "\\sqrt8", False),  # string mode: no symbolic equivalence
    ("0.50", "0.5", False),
    ("4", "5", False),
])
def test_hendrycks_mode_grades_by_normalised_string(answer, reference, correct):
    with Grader("hendrycks") as g:
        result = g.grade(f"So we get \\boxed{{{answer}}}.", reference)
        assert result.correct is correct and result.reason == ("ok" if correct else "wrong")
        assert g._pool is None  # string mode never starts a worker
    assert grade(f"\\boxed{{{answer}}}", reference, mode="hendrycks") is correct


def test_unknown_mode_names_the_valid_ones():
    assert GRADING_MODES == ("symbolic", "hendrycks")
    with pytest.raises(ValueError, match="symbolic, hendrycks"):
        Grader("exact")
    with pytest.raises(ValueError, match="symbolic, hendrycks"):
        grade("\\boxed{1}", "1", mode="sympy")


def test_module_level_grade_and_detail():
    assert grade("Thus \\boxed{\\frac{2}{4}}.", "0.5") is True
    detail = grade_detail("Thus \\boxed{3}.", "4")
    assert detail == GradeResult(False, "3", "wrong")
    assert grade_detail("no answer", "4").reason == "no-answer"


# --- (d) hostile inputs --------------------------------------------------------------------------------


def test_hostile_inputs_fail_safely_within_the_timeout(tmp_path):
    pwned = tmp_path / "pwned"
    code = f"__import__('os').system('touch {pwned}')"
    hostile = [
        ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1"),  # deep nesting
        ("\\boxed{" + "{" * 5000, "1"),  # deep nesting, never closed
        ("\\boxed{" + "1+" * 99_000 + "1}", "99001"),  # 200k characters (just under the scan cap)
        ("x" * 2_000_000 + " so \\boxed{" + "9" * 5000 + "}", "9"),  # a huge completion and answer
        (f"\\boxed{{{HANG}}}", "5"),
        (f"\\boxed{{{code}}}", "0"),
        (f"The final answer is {code}", "0"),
        ("\\boxed{\\input{/etc/passwd}}", "root"),
        ("\\boxed{\\include{/etc/passwd}\\def\\x{\\x}\\x}", "1"),
        ("\\boxed{5\x00}", "5"),
        ("\x00\x01\x02 \\boxed{\x00}", "0"),
    ]
    normal = ("A plain one after all that: \\boxed{\\frac{6}{8}}", "0.75")
    timeout_s = 1.0
    with Grader("symbolic", timeout_s=timeout_s) as g:
        g.grade("\\boxed{1}", "2")  # warm: start-up time is not what this test measures
        start = time.monotonic()
        results = g.grade_many([*hostile, normal])
        elapsed = time.monotonic() - start
    with Grader("hendrycks") as h:  # string mode sees the same hostile text
        assert not any(r.correct for r in h.grade_many(hostile))
    print([r.reason for r in results], f"{elapsed:.1f}s")
    assert [r.correct for r in results] == [False] * len(hostile) + [True]
    assert all(r.reason in REASONS - {"ok"} for r in results[:-1])
    assert results[0].reason == "too-long" and results[1].reason == "no-answer"
    assert results[2].reason == "too-long" and results[3].reason == "too-long"
    assert results[4].reason == "timeout"
    assert results[9].reason == "unparseable"
    # The items run in parallel and only one of them can time out: one timeout plus slack for the restart.
    assert elapsed < timeout_s + 8
    assert not pwned.exists()


def test_a_worker_that_dies_fails_only_its_item():
    with Grader("symbolic", timeout_s=60.0, workers=1) as g:
        out: list = []
        thread = threading.Thread(target=lambda: out.extend(g.grade_many([(f"\\boxed{{{HANG}}}", "5"),
                                                                            ("\\boxed{2^3}", "8.0")])))
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (g._pool and g._pool._workers and g._pool._workers[0].chunk):
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(g._pool._workers[0].proc.pid, signal.SIGKILL)
        thread.join(60)
    assert not thread.is_alive()
    assert [(r.correct, r.reason) for r in out] == [(False, "error"), (True, "ok")]


# --- (e) the timeout holds off the main thread ---------------------------------------------------------


def test_timeout_holds_when_called_from_a_thread():
    with Grader("symbolic", timeout_s=0.05, workers=1) as g:
        g.grade("\\boxed{1}", "2")  # warm
        out: list = []

        def work():
            start = time.monotonic()
            out.extend(g.grade_many([(f"\\boxed{{{HANG}}}", "5"), ("\\boxed{\\sqrt{4}}", "2")]))
            out.append(time.monotonic() - start)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
    hang, easy, elapsed = out
    assert hang.reason == "timeout" and not hang.correct
    assert easy.reason == "ok"
    assert elapsed < 10  # 0.05 s for the hostile item, then a worker restart for the easy one


# --- (f) cache -----------------------------------------------------------------------------------------


def test_repeated_pairs_are_not_recomputed(grader):
    pair = ("We find \\boxed{\\sqrt{8}}.", "2\\sqrt{2}")  # needs math-verify (plain rationals never reach it)
    before = grader.cache_info()
    first = grader.grade_many([pair, pair, ("other words, same answer: \\boxed{\\sqrt{8}}", "2\\sqrt{2}")])
    middle = grader.cache_info()
    again = grader.grade(*pair)
    after = grader.cache_info()
    assert [r.correct for r in first] == [True, True, True] and again.correct
    assert middle["computed"] - before["computed"] == 1  # one distinct (answer, reference) → one computation
    assert after["computed"] == middle["computed"]
    assert after["cache_hits"] == middle["cache_hits"] + 1
    assert after["size"] >= 1


def test_fast_paths_need_no_worker():
    with Grader("symbolic") as g:
        results = g.grade_many([("\\boxed{ 12 }", "12"), ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
                                ("\\boxed{13}", "12"), ("nothing", "1"), ("\\boxed{" + "1" * 2000 + "}", "1")])
        assert [r.reason for r in results] == ["ok", "ok", "wrong", "no-answer", "too-long"]
        assert g._pool is None and g.cache_info()["fast_path"] == 5


RATIONALS = [("\\boxed{\\frac{4}{6}}", "\\frac{2}{3}", True), ("\\boxed{2/3}", "\\frac{2}{3}", True),
             ("\\boxed{-\\frac{2}{3}}", "\\frac{-2}{3}", True), ("\\boxed{\\frac{6}{2}}", "3", True),
             ("\\boxed{\\frac{2}{3}}", "\\frac{3}{2}", False), ("\\boxed{-7}", "7", False),
             ("\\boxed{\\frac{-1}{3}}", "-\\frac{2}{6}", True), ("\\boxed{\\frac{1}{3}}", "-\\frac{1}{3}", False)]


def test_plain_rationals_take_the_fast_path_and_agree_with_math_verify():
    from mrt_star.grading._worker import check

    with Grader("symbolic") as g:
        results = g.grade_many([(c, r) for c, r, _ in RATIONALS])
        assert g._pool is None and g.cache_info()["fast_path"] == len(RATIONALS)
    assert [r.correct for r in results] == [label for _, _, label in RATIONALS]
    # The same verdicts from math-verify itself (run here, in the main thread, without the fast path).
    assert [check(r.extracted, ref)[0] for r, (_, ref, _) in zip(results, RATIONALS, strict=True)] == [
        label for _, _, label in RATIONALS]


def test_odd_inputs_do_not_raise(grader):
    results = grader.grade_many([(None, "1"), ("\\boxed{3}", 3), (b"\\boxed{3}", "3"), ("\\boxed{3}", None),
                                 ("\\boxed{3}",), ("\\boxed{2}", "2")])
    assert [(r.correct, r.reason) for r in results] == [(False, "no-answer"), (True, "ok"), (False, "error"),
                                                         (False, "error"), (False, "error"), (True, "ok")]
    assert grader.grade_many([]) == []


def test_broken_workers_raise_instead_of_grading_everything_wrong(monkeypatch):
    import mrt_star.grading._pool as pool

    monkeypatch.setattr(pool, "_WORKER_CODE", "import sys; sys.exit(3)")
    with Grader("symbolic") as g, pytest.raises(WorkerStartError, match="died before they were ready"):
        g.grade("\\boxed{x+1}", "1+x")


def test_options_are_checked_and_hendrycks_reads_boxes_only():
    with pytest.raises(ValueError, match="timeout_s"):
        Grader(timeout_s=0)
    with pytest.raises(ValueError, match="timeout_s"):
        Grader(timeout_s=float("inf"))
    text = "The final answer is 7."
    assert Grader("symbolic").grade(text, "7").correct
    assert Grader("hendrycks").grade(text, "7").reason == "no-answer"
    assert Grader("hendrycks", fallbacks=True).grade(text, "7").correct


def test_import_is_cheap():
    code = "import sys, mrt_star.grading; assert not {'sympy', 'math_verify'} & set(sys.modules), sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reasons_cover_the_labelled_outcomes(grader):
    reasons = Counter(r.reason for r in grader.grade_many([(c["completion"], c["reference"]) for c in CASES]))
    assert {"ok", "wrong", "no-answer"} <= set(reasons)
