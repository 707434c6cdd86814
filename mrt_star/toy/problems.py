"""Procedural toy problems with LaTeX answers: addition/subtraction chains, fractions, linear equations.

Problem texts are short (the toy model reads one token per character) and written in plain ASCII
(`2/3+1/4`); answers are LaTeX (`\\frac{11}{12}`, `-3`) so the real grader checks them. Each family
knows how to solve its problems step by step (`solution_steps`), which the warm-start traces use.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from pathlib import Path
from typing import ClassVar

from mrt_star.config import option

FAMILIES = ("chain", "fraction", "linear")
DIFFICULTIES = (1, 2, 3)

# A fraction shown in a step is kept unreduced (numerator, denominator): reducing is itself a step.
Value = int | tuple[int, int]


@dataclass
class Step:
    """One solution line: `lhs` is what is computed, `value` its (correct) result given earlier lines.

    A chain line also restates what is left (`49+5=54, so 54-9+8`), so the next line copies its
    operands from this one instead of hunting for them in the problem. `standalone` is False when the
    value does not follow from the line alone (a fraction rewritten over a denominator chosen from
    both fractions); arithmetic drills skip those.
    """

    lhs: str
    value: Value
    rest: str = ""
    standalone: bool = True

    def line(self, shown: Value | None = None) -> str:
        """Return the line as written with `shown` in place of the value (default: the correct one)."""
        v = plain_value(self.value if shown is None else shown)
        return f"{self.lhs}={v}, so {v}{self.rest}" if self.rest else f"{self.lhs}={v}"

    @property
    def check(self) -> str:
        """Return what a check of this line recomputes (the operation, without the restatement)."""
        return self.lhs


@dataclass(frozen=True)
class _Family:
    make: Callable[[random.Random, int], str]  # rng, difficulty -> problem text
    # problem text, values shown on earlier lines -> the next step (None when solved)
    next_step: Callable[[str, list], Step | None]
    answer: Callable[[str], Fraction]


# --- rendering ------------------------------------------------------------------------------------


def latex_number(x: Fraction | int) -> str:
    """Return a number as LaTeX: `7`, `-3`, `\\frac{2}{3}`, `-\\frac{5}{12}` (always reduced)."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def plain_value(v: Value) -> str:
    """Return a step value as the trace writes it: `132`, `8/12`, `-5/12`."""
    if isinstance(v, tuple):
        num, den = v
        return str(num) if den == 1 else f"{num}/{den}"
    return str(v)


def value_number(v: Value) -> Fraction:
    """Return the number a step value stands for."""
    return Fraction(v[0], v[1]) if isinstance(v, tuple) else Fraction(v)


def reduced(num: int, den: int) -> tuple[int, int]:
    """Return num/den in lowest terms with a positive denominator."""
    g = gcd(num, den) or 1
    num, den = num // g, den // g
    return (-num, -den) if den < 0 else (num, den)


# --- chain: 47+85-29+61 ------------------------------------------------------------------------------

# difficulty -> (terms, first-term range, other-terms range, cap on the running total). Small numbers
# keep the arithmetic facts few enough for a tiny model to learn in minutes; d3 is fully two-digit.
_CHAIN_TERMS = {1: (3, (1, 9), (1, 9), 19), 2: (4, (1, 9), (1, 9), 19), 3: (4, (10, 99), (10, 99), 999)}
_CHAIN_RE = re.compile(r"^(\d+(?:[+-]\d+)+)$")
_TERM_RE = re.compile(r"[+-]?\d+")


def _make_chain(rng: random.Random, difficulty: int) -> str:
    terms, first, rest, cap = _CHAIN_TERMS[difficulty]
    total = rng.randint(*first)
    text = str(total)
    for _ in range(terms - 1):
        t = rng.randint(*rest)
        # Running totals stay in [0, cap] so every line is a plain school sum.
        minus = total - t >= 0 and (total + t > cap or rng.random() < 0.5)
        text, total = (f"{text}-{t}", total - t) if minus else (f"{text}+{t}", total + t)
    return text


def _chain_terms(problem: str) -> list[int]:
    m = _CHAIN_RE.match(problem)
    if not m:
        raise ValueError(f"not a chain problem: {problem!r}")
    return [int(t) for t in _TERM_RE.findall(m.group(1))]


def _chain_next(problem: str, shown: list) -> Step | None:
    terms = _chain_terms(problem)
    k = len(shown)
    if k >= len(terms) - 1:
        return None
    left = terms[0] if k == 0 else shown[-1]
    rest = "".join(_signed(t) for t in terms[k + 2 :])
    return Step(f"{left}{_signed(terms[k + 1])}", left + terms[k + 1], rest=rest)


def _signed(t: int) -> str:
    return f"-{-t}" if t < 0 else f"+{t}"


def _chain_answer(problem: str) -> Fraction:
    return Fraction(sum(_chain_terms(problem)))


# --- fraction: 2/3+1/4 ------------------------------------------------------------------------------

_FRACTION_DEN = {1: 5, 2: 6, 3: 9}  # largest denominator
_FRACTION_RE = re.compile(r"^(\d+)/(\d+)([+-])(\d+)/(\d+)$")


def _make_fraction(rng: random.Random, difficulty: int) -> str:
    top = _FRACTION_DEN[difficulty]
    b, d = rng.randint(2, top), rng.randint(2, top)
    a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
    op = rng.choice("+-")
    return f"{a}/{b}{op}{c}/{d}"


def _fraction_parts(problem: str) -> tuple[int, int, str, int, int]:
    m = _FRACTION_RE.match(problem)
    if not m:
        raise ValueError(f"not a fraction problem: {problem!r}")
    a, b, op, c, d = m.groups()
    return int(a), int(b), op, int(c), int(d)


def _lcm(x: int, y: int) -> int:
    return x * y // gcd(x, y)


def _fraction_next(problem: str, shown: list) -> Step | None:
    # Lines: rewrite each fraction over the common denominator (skipped when already there), combine
    # the numerators, reduce. Later lines read earlier *shown* values, so a slip propagates.
    a, b, op, c, d = _fraction_parts(problem)
    common = _lcm(b, d)
    plan = [("scale", 0)] if b != common else []
    plan += [("scale", 1)] if d != common else []
    plan += [("combine", None), ("reduce", None)]
    k = len(shown)
    if k >= len(plan):
        return None
    kind, which = plan[k]
    if kind == "scale":
        num, den = (a, b) if which == 0 else (c, d)
        return Step(f"{num}/{den}", (num * (common // den), common), standalone=False)
    if kind == "combine":
        scaled = shown[: len(plan) - 2]
        left = scaled[0] if b != common else (a, b)
        right = scaled[-1] if d != common else (c, d)
        num = left[0] + right[0] if op == "+" else left[0] - right[0]
        return Step(f"{plain_value(left)}{op}{plain_value(right)}", (num, left[1]))
    return Step(plain_value(shown[-1]), reduced(*shown[-1]))


def _fraction_answer(problem: str) -> Fraction:
    a, b, op, c, d = _fraction_parts(problem)
    return Fraction(a, b) + Fraction(c, d) if op == "+" else Fraction(a, b) - Fraction(c, d)


# --- linear: 3x+5=17 --------------------------------------------------------------------------------

# difficulty -> (largest coefficient, largest |constant| on the left, range of the right side)
_LINEAR_RANGE = {1: (4, 9, None), 2: (4, 9, (0, 9)), 3: (9, 20, (-20, 20))}
_LINEAR_RE = re.compile(r"^(\d+)x([+-]\d+)=(-?\d+)$")


def _make_linear(rng: random.Random, difficulty: int) -> str:
    top_a, top_b, right = _LINEAR_RANGE[difficulty]
    a = rng.randint(2, top_a)
    b = rng.choice([i for i in range(-top_b, top_b + 1) if i != 0])
    # Easy equations have whole-number solutions; harder ones may have fractions.
    c = a * rng.randint(-3, 9) + b if right is None else rng.randint(*right)
    return f"{a}x{b:+d}={c}"


def _linear_parts(problem: str) -> tuple[int, int, int]:
    m = _LINEAR_RE.match(problem)
    if not m:
        raise ValueError(f"not a linear problem: {problem!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _linear_next(problem: str, shown: list) -> Step | None:
    a, b, c = _linear_parts(problem)
    if not shown:
        op = "-" if b > 0 else "+"
        return Step(f"{a}x={c}{op}{abs(b)}", c - b)
    if len(shown) == 1:
        rhs = shown[0]
        return Step(f"x={rhs}/{a}", reduced(rhs, a))
    return None


def _linear_answer(problem: str) -> Fraction:
    a, b, c = _linear_parts(problem)
    return Fraction(c - b, a)


_REGISTRY: dict[str, _Family] = {
    "chain": _Family(_make_chain, _chain_next, _chain_answer),
    "fraction": _Family(_make_fraction, _fraction_next, _fraction_answer),
    "linear": _Family(_make_linear, _linear_next, _linear_answer),
}


# --- public API -------------------------------------------------------------------------------------


def family_of(problem: str) -> str:
    """Return the family whose grammar `problem` follows (raises ValueError if none)."""
    for name, pattern in (("chain", _CHAIN_RE), ("fraction", _FRACTION_RE), ("linear", _LINEAR_RE)):
        if pattern.match(problem):
            return name
    raise ValueError(f"not a toy problem: {problem!r}")


def next_step(problem: str, shown: list[Value]) -> Step | None:
    """Return the correct next solution line given the values shown so far (None when solved)."""
    return _REGISTRY[family_of(problem)].next_step(problem, shown)


def solution_steps(problem: str) -> list[Step]:
    """Return the error-free solution lines of `problem`."""
    steps: list[Step] = []
    while (step := next_step(problem, [s.value for s in steps])) is not None:
        steps.append(step)
    return steps


def true_answer(problem: str) -> Fraction:
    """Return the exact answer of `problem`."""
    return _REGISTRY[family_of(problem)].answer(problem)


def sample_problem(rng: random.Random, family: str, difficulty: int = 2) -> str:
    """Return one random problem text of `family` (drawn with replacement, for training streams)."""
    return _REGISTRY[family].make(rng, difficulty)


def problem_id(family: str, problem: str) -> str:
    """Return a stable id: the family and a short content hash of the problem text."""
    return f"toy-{family}-{hashlib.sha1(problem.encode()).hexdigest()[:10]}"


def parse_families(families: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Return the family names selected by `families` ("all", a comma list, or a list)."""
    if families is None or families == "all":
        return list(FAMILIES)
    names = [f.strip() for f in families.split(",")] if isinstance(families, str) else list(families)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown toy families {unknown}; choose from {', '.join(FAMILIES)} or 'all'")
    return names


def generate_problems(
    n: int,
    seed: int = 0,
    families: str | list[str] | None = None,
    difficulty: int = 2,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[dict]:
    """Return `n` distinct problems (problem_id, problem, answer, family, difficulty), deterministic by seed.

    Families take turns so every family gets an equal share; `exclude` holds problem texts to skip
    (e.g. the training problems when drawing a held-out set).
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty}")
    names = parse_families(families)
    rng = random.Random(f"mrt-star-toy:{seed}:{difficulty}:{','.join(names)}")
    seen, out = set(exclude), []
    for i in range(n):
        family = names[i % len(names)]
        for _ in range(1000):
            text = _REGISTRY[family].make(rng, difficulty)
            if text not in seen:
                break
        else:
            raise ValueError(f"family {family!r} at difficulty {difficulty} has too few distinct problems for n={n}")
        seen.add(text)
        out.append(
            {
                "problem_id": problem_id(family, text),
                "problem": text,
                "answer": latex_number(true_answer(text)),
                "family": family,
                "difficulty": difficulty,
            }
        )
    return out


# --- command ----------------------------------------------------------------------------------------


@dataclass
class ToyProblemsConfig:
    """Generate procedural toy problems (`mrt-star toy problems`)."""

    RENAMED: ClassVar[dict[str, str]] = {"n": "count"}

    count: int = option(500, "number of problems to write", at_least=1)
    seed: int = option(0, "random seed (the same seed gives the same problems)")
    output: str | None = option(None, "write to this .jsonl or .parquet file; omitted: print a few to stdout")
    families: str = option("all", f"comma-separated families ({', '.join(FAMILIES)}) or 'all'")
    difficulty: int = option(2, "problem difficulty: 1 (small numbers) to 3 (more terms, larger numbers)",
                            choices=DIFFICULTIES)


def write_problems(rows: list[dict], path: str | Path) -> Path:
    """Return the path written: rows as JSON lines (.jsonl) or a parquet file (.parquet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path, index=False)
    elif path.suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        raise ValueError(f"output must end in .jsonl or .parquet, got {path.name!r}")
    return path


def run_toy_problems(cfg: ToyProblemsConfig) -> Path | None:
    """Return the file written (None when printing a sample to stdout)."""
    rows = generate_problems(cfg.count, seed=cfg.seed, families=cfg.families, difficulty=cfg.difficulty)
    if cfg.output:
        path = write_problems(rows, cfg.output)
        print(f"wrote {len(rows)} toy problems to {path}")
        return path
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"toy problems (first {min(len(rows), 10)} of {len(rows)}; pass --output to save)")
    for col in ("problem_id", "family", "problem", "answer"):
        table.add_column(col)
    for r in rows[:10]:
        table.add_row(r["problem_id"], r["family"], r["problem"], r["answer"])
    Console().print(table)
    return None
