"""Synthetic warm-start traces for the toy world in the three formats, and prover-forcing examples.

The writer solves a problem line by line and sometimes slips (a line shows a wrong value; later lines
build on it). Slips are detectable: recomputing a line in a check exposes it, so a check followed by a
backtrack really raises the chance of ending right. Partial work reveals sub-results, so a prover
forced after a detected slip only has the remaining lines to do in its head, and after a finished
attempt it copies the attempt's answer. Some traces end right by luck after a wrong intermediate, and
some checks and restarts are pure waste: progress and length come apart.

Some traces are guesses: an answer boxed at once, with no work. A guess is the shortest trace there is
and sometimes right, but it shows nothing a prover can build on, so a prover forced after it answers
from scratch (its mental answer, as on the empty prefix): a correct guess is correct without progress,
the case where "shortest correct" and "most progress" disagree.

Each `WarmTrace` carries its episodes (exactly as `split_episodes` cuts the text) and, for every
episode boundary, the answer the prefix supports: the target of a forced prover there. `cuts` holds the
same for every step boundary (`--backtrack-unit step` cuts a backtracking trace there), so the prover
learns to finish half-done work: after k of n lines it has n − k lines left to do in its head, and J
rises line by line instead of jumping at the last one.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from fractions import Fraction

from mrt_star.formats.prompts import (
    ATTEMPT_SEPARATOR,
    BACKTRACK_RE,
    FORMATS,
    PARAGRAPH_SEPARATOR,
    THINK_CLOSE_TEXT,
    THINK_OPEN,
    backtrack_line,
    forced_prefix,
    think_opening,
    user_prompt,
)
from mrt_star.toy.problems import (
    Step,
    Value,
    latex_number,
    next_step,
    plain_value,
    solution_steps,
    value_number,
)

TOY_TEMPLATE = {fmt: f"toy-{fmt}" for fmt in FORMATS}
# How a guess opens: a hedge a prover can learn not to trust (a real model's "I think it is ...").
GUESS_LEAD = "Guess: "
# What a forced prover writes after the open format's force text (which ends in "1. **").
OPEN_FORCED_ANSWER = "Answer:** \\boxed{{{answer}}}"


@dataclass(frozen=True)
class TraceStyle:
    """How the synthetic writer errs, checks and revises (probabilities)."""

    slip: float = 0.12  # a first-attempt line shows a wrong value
    revision_slip: float = 0.05  # a line written after a backtrack / in a later attempt does
    check_after_slip: float = 0.8  # the writer rechecks a line right after slipping on it
    check_after_ok: float = 0.08  # ... or after a right line (a wasted check)
    end_check: float = 0.4  # open format: after a wrong conclusion, "Wait" and recheck the faulty line
    check_slip: float = 0.04  # a check itself miscomputes (a spurious "wrong", J dips)
    restart: float = 0.15  # after an undetected wrong answer, start over without a check
    lucky: float = 0.2  # a wrong intermediate still lands on the right final value
    to_beginning: float = 0.5  # a backtrack for a faulty Line 1 says "Backtrack to beginning"
    stop_if_right: float = 0.8  # linearized: stop after a right attempt
    stop_if_wrong: float = 0.2  # linearized: stop after a wrong attempt
    guess: float = 0.06  # a trace boxes an answer at once, with no work
    guess_right: float = 0.05  # ... and the guess is the true answer (rarely: a prover learns not to copy guesses)
    max_episodes: int = 4


CLEAN = TraceStyle(slip=0.0, revision_slip=0.0, check_after_ok=0.0, check_slip=0.0, lucky=0.0,
                   stop_if_wrong=1.0, stop_if_right=1.0, guess=0.0)


@dataclass
class WarmTrace:
    """A synthetic trace: its episodes and the answer each prefix supports."""

    problem: str
    answer: str  # the reference (LaTeX)
    fmt: str
    episodes: list[str]
    # supported[0]: the empty prefix (a mental guess: the true answer); supported[j+1]: after episode j
    supported: list[str]
    injected_error: bool = False  # the writer slipped somewhere (the trace may still end right)
    final_answer: str = ""
    # (offset in text, answer the prefix text[:offset] supports) at every step boundary, episode
    # boundaries included; the first is the empty prefix, the last the whole trace
    cuts: list[tuple[int, str]] = field(default_factory=list)
    guess: bool = False  # the trace boxes an answer with no work

    @property
    def text(self) -> str:
        """Return the whole trace."""
        return "".join(self.episodes)


@dataclass
class _Writer:
    """Shared state while writing one trace: the problem, its rng and style, what is shown so far."""

    problem: str
    rng: random.Random
    style: TraceStyle
    true_values: list[Value] = field(default_factory=list)
    injected: bool = False

    def __post_init__(self) -> None:
        self.true_values = [s.value for s in solution_steps(self.problem)]

    def write(self, shown: list[Value], slip_p: float, forced: Value | None = None) -> tuple[Step, Value]:
        """Return (the next step, the value shown for it); a slip may make the shown value wrong."""
        step = next_step(self.problem, shown)
        value = step.value if forced is None else forced
        if forced is None and self.rng.random() < slip_p:
            value = self.slip(step.value)
        last = len(shown) == len(self.true_values) - 1
        if last and value != self.true_values[-1] and shown != self.true_values[:-1]:
            # An earlier slip: sometimes the last line still lands on the true answer (luck).
            if self.rng.random() < self.style.lucky:
                value = self.true_values[-1]
        if value != step.value:
            self.injected = True
        return step, value

    def slip(self, value: Value) -> Value:
        """Return a nearby wrong value (a units or tens slip; a fraction's numerator is off)."""
        if isinstance(value, tuple):
            return value[0] + self.rng.choice((-2, -1, 1, 2)), value[1]
        return value + self.rng.choice((-10, -2, -1, 1, 2, 10))

    def finish(self, shown: list[Value]) -> str:
        """Return the answer (LaTeX) reached by completing `shown` without further slips."""
        values = list(shown)
        while (step := next_step(self.problem, values)) is not None:
            values.append(step.value)
        return latex_number(value_number(values[-1]))

    def first_wrong(self, shown: list[Value]) -> int | None:
        """Return the index of the first line whose shown value is wrong given the lines before it."""
        for k, v in enumerate(shown):
            if v != next_step(self.problem, shown[:k]).value:
                return k
        return None

    def check_value(self, correct: Value) -> Value:
        """Return what a recheck computes (usually the correct value)."""
        if self.rng.random() < self.style.check_slip:
            self.injected = True
            return self.slip(correct)
        return correct


# --- backtracking ---------------------------------------------------------------------------------


def _backtrack_trace(w: _Writer) -> tuple[list[str], list[str], list[tuple[int, str]]]:
    # A check recomputes the line just written ("Check Line k: ..."), so it only has to copy the
    # operation from the line above; after a wrong boxed answer the writer may restart blindly.
    # `cuts` follows `split_episodes(..., backtrack_unit="step")`: before every step line (or the
    # backtrack line that opens its episode) and at the end.
    style, rng = w.style, w.rng
    episodes: list[str] = []
    supported = [w.finish([])]
    cuts = [(0, supported[0])]
    text, shown, slip_p, forced = "", [], style.slip, None
    n = len(w.true_values)

    def offset() -> int:
        return sum(map(len, episodes)) + len(text)

    def can_branch() -> bool:
        return len(episodes) + 1 < style.max_episodes

    def close(answer: str, piece: str) -> None:
        episodes.append(piece)
        supported.append(answer)
        cuts.append((sum(map(len, episodes)), answer))

    def backtrack(k: int, value: Value, forced_value: Value | None) -> None:
        # Close the episode at a failed check of line k (0-based) and open the revision.
        nonlocal text, shown, slip_p, forced
        close(w.finish(shown[:k] + [value]), text)
        to_start = k == 0 and rng.random() < style.to_beginning
        text = backtrack_line(None if to_start else k + 1) + "\n"
        shown, slip_p, forced = shown[:k], style.revision_slip, forced_value

    while True:
        k = len(shown)
        if k == n:
            answer = latex_number(value_number(shown[-1]))
            text += f"\\boxed{{{answer}}}"
            if answer != w.finish([]) and can_branch() and rng.random() < style.restart:
                # Start over without knowing what went wrong; the redo may or may not be right.
                close(answer, text + "\n")
                text, shown, slip_p, forced = backtrack_line(None) + "\n", [], style.revision_slip, None
                continue
            close(answer, text)
            return episodes, supported, cuts
        if text and not BACKTRACK_RE.fullmatch(text.rstrip("\n")):
            cuts.append((offset(), w.finish(shown)))  # a step boundary inside the episode
        step, value = w.write(shown, slip_p, forced)
        forced = None
        shown.append(value)
        text += f"Line {k + 1}: {step.line(value)}\n"
        p_check = style.check_after_slip if value != step.value else style.check_after_ok
        if can_branch() and rng.random() < p_check:
            seen = w.check_value(step.value)
            verdict = "ok" if seen == value else "wrong"
            text += f"Check Line {k + 1}: {step.check}={plain_value(seen)} {verdict}\n"
            if verdict == "wrong":
                backtrack(k, seen, seen)


# --- linearized -----------------------------------------------------------------------------------


def _attempt_lines(w: _Writer, slip_p: float, sep: str, end: str) -> tuple[str, list[Value]]:
    shown: list[Value] = []
    out = []
    while len(shown) < len(w.true_values):
        step, value = w.write(shown, slip_p)
        shown.append(value)
        out.append(step.line(value) + end)
    return sep.join(out), shown


def _linearized_trace(w: _Writer) -> tuple[list[str], list[str]]:
    style, rng = w.style, w.rng
    episodes, supported = [], [w.finish([])]
    for i in range(style.max_episodes):
        # Later attempts see the earlier ones and slip less.
        slip_p = style.slip if i == 0 else style.revision_slip
        lines, shown = _attempt_lines(w, slip_p, "\n", "")
        answer = latex_number(value_number(shown[-1]))
        episodes.append(("" if i == 0 else ATTEMPT_SEPARATOR) + f"{lines}\n\\boxed{{{answer}}}")
        supported.append(answer)
        stop = style.stop_if_right if answer == w.finish([]) else style.stop_if_wrong
        if rng.random() < stop:
            break
    return episodes, supported


# --- open-ended thinking --------------------------------------------------------------------------


def _conclusion(answer: str) -> str:
    return f"So the answer is \\boxed{{{answer}}}."


def _open_trace(w: _Writer) -> tuple[list[str], list[str]]:
    # Episodes are paragraph groups that end with a conclusion; every reconsideration episode has at
    # least three paragraphs (marker, check or redo, conclusion), so the default segmentation
    # (min_paragraphs=3) cuts exactly here.
    style, rng, par = w.style, w.rng, PARAGRAPH_SEPARATOR
    lines, shown = _attempt_lines(w, style.slip, par, ".")
    answer = latex_number(value_number(shown[-1]))
    episodes = [f"{THINK_OPEN}\n{lines}{par}{_conclusion(answer)}"]
    supported = [w.finish([]), answer]
    while len(episodes) < style.max_episodes:
        wrong = w.first_wrong(shown)
        roll = rng.random()
        if wrong is not None and roll < style.end_check + style.restart:
            if roll < style.end_check:
                step = next_step(w.problem, shown[:wrong])
                seen = w.check_value(step.value)
                marker = rng.choice(("Wait", "But wait"))
                head = f"{marker}, let me check {step.check}."
                if seen == shown[wrong]:
                    body = [f"{step.check}={plain_value(seen)}, yes."]
                else:
                    body = [f"{step.check}={plain_value(seen)}, not {plain_value(shown[wrong])}."]
                    shown = shown[:wrong] + [seen]
                    while len(shown) < len(w.true_values):
                        step, value = w.write(shown, style.revision_slip)
                        shown.append(value)
                        body.append(step.line(value) + ".")
            else:
                head = "Alternatively, let me redo it."
                redo, shown = _attempt_lines(w, style.revision_slip, par, ".")
                body = [redo]
        elif wrong is None and roll < style.check_after_ok:
            j = rng.randrange(len(shown))
            step = next_step(w.problem, shown[:j])
            head, body = f"Wait, let me check {step.check}.", [f"{step.check}={plain_value(step.value)}, yes."]
        else:
            break
        answer = latex_number(value_number(shown[-1]))
        episodes[-1] += par
        episodes.append(par.join([head, *body, _conclusion(answer)]))
        supported.append(answer)
    episodes[-1] += f"{THINK_CLOSE_TEXT}{par}\\boxed{{{answer}}}"
    return episodes, supported


_WRITERS = {"backtrack": _backtrack_trace, "linearized": _linearized_trace, "open": _open_trace}


def _guess_trace(w: _Writer, fmt: str) -> tuple[list[str], list[str], str]:
    # No work: the prover after it has only the mental answer, as on the empty prefix.
    truth = w.true_values[-1]
    value = truth if w.rng.random() < w.style.guess_right else w.slip(truth)
    w.injected = value != truth
    answer = latex_number(value_number(value))
    if fmt == "open":
        text = f"{THINK_OPEN}\n{GUESS_LEAD}\\boxed{{{answer}}}.{THINK_CLOSE_TEXT}{PARAGRAPH_SEPARATOR}\\boxed{{{answer}}}"
    else:
        text = f"{GUESS_LEAD}\\boxed{{{answer}}}"
    mental = w.finish([])
    return [text], [mental, mental], answer


def make_trace(problem: str, fmt: str, rng: random.Random, style: TraceStyle = TraceStyle()) -> WarmTrace:
    """Return a synthetic trace of `problem` in format `fmt`, written with the given error style."""
    if fmt not in _WRITERS:
        raise ValueError(f"unknown trace format {fmt!r}; choose one of {', '.join(FORMATS)}")
    w = _Writer(problem, rng, style)
    if rng.random() < style.guess:
        episodes, supported, final = _guess_trace(w, fmt)
        return WarmTrace(problem, supported[0], fmt, episodes, supported, w.injected, final,
                         [(0, supported[0]), (len(episodes[0]), supported[0])], guess=True)
    written = _WRITERS[fmt](w)
    episodes, supported = written[0], written[1]
    if len(written) == 3:
        cuts = written[2]
    else:  # step boundaries are the episode boundaries
        ends = [sum(map(len, episodes[:j])) for j in range(len(episodes) + 1)]
        cuts = list(zip(ends, supported, strict=True))
    return WarmTrace(problem, w.finish([]), fmt, episodes, supported, w.injected, supported[-1], cuts)


# --- arithmetic drills ----------------------------------------------------------------------------


def arithmetic_facts(rng: random.Random, difficulty: int, n: int) -> list[tuple[str, str]]:
    """Return `n` (operation, result) pairs such as ("49+5", "54"), drawn from real solution lines.

    Drills are the toy model's stand-in for pretraining: a tiny model reading only traces sees each
    arithmetic fact a handful of times, far too few to learn it in a few minutes of CPU.
    """
    from mrt_star.toy.problems import FAMILIES, sample_problem

    facts: list[tuple[str, str]] = []
    while len(facts) < n:
        problem = sample_problem(rng, rng.choice(FAMILIES), difficulty)
        facts += [(s.lhs, plain_value(s.value)) for s in solution_steps(problem) if s.standalone]
    rng.shuffle(facts)
    return facts[:n]


# --- training examples ----------------------------------------------------------------------------


def forced_answer_text(fmt: str, answer: str) -> str:
    """Return what a forced prover writes after the format's force text (LaTeX `answer` inside)."""
    if fmt == "open":
        return OPEN_FORCED_ANSWER.format(answer=answer)
    return answer + "}"  # the step-wise force text already opened \boxed{


def trace_messages(trace: WarmTrace) -> tuple[list[dict[str, str]], str]:
    """Return (prompt messages, assistant target) for training on the whole trace."""
    return [{"role": "user", "content": user_prompt(trace.problem, TOY_TEMPLATE[trace.fmt])}], trace.text


def prover_prefix(trace: WarmTrace, j: int) -> str:
    """Return the trace text the prover continues from at prefix j (the thinking opening for an empty open one)."""
    prefix = "".join(trace.episodes[:j])
    return prefix or (think_opening(trace.text) if trace.fmt == "open" else "")


def prefix_at_cut(trace: WarmTrace, c: int) -> str:
    """Return the trace text the prover continues from at step cut c (the thinking opening for an empty open one)."""
    prefix = trace.text[: trace.cuts[c][0]]
    return prefix or (think_opening(trace.text) if trace.fmt == "open" else "")


def forced_messages(trace: WarmTrace, j: int) -> tuple[list[dict[str, str]], str]:
    """Return (messages ending in the prefilled prefix + force text, target answer) for prefix j.

    j=0 is the empty prefix, j=i+1 the prefix through episode i.
    """
    prompt = [
        {"role": "user", "content": user_prompt(trace.problem, TOY_TEMPLATE[trace.fmt])},
        {"role": "assistant", "content": forced_prefix(prover_prefix(trace, j), trace.fmt)},
    ]
    return prompt, forced_answer_text(trace.fmt, trace.supported[j])


_TOY_NUMBER = re.compile(r"^(-?)(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)(?:/(\d+))?)$")


def toy_value(answer: str | None) -> Fraction | None:
    """Return the number a toy answer (`7`, `-\\frac{2}{3}`, `4/6`) stands for, or None if unreadable.

    A fast exact check for the toy world's own numbers; the pipeline grades with `mrt_star.grading`.
    """
    m = _TOY_NUMBER.match((answer or "").replace(" ", ""))
    if not m:
        return None
    sign, fnum, fden, num, den = m.groups()
    try:
        value = Fraction(int(fnum), int(fden)) if fnum else Fraction(int(num), int(den or 1))
    except ZeroDivisionError:
        return None
    return -value if sign else value
