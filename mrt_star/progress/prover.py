"""The prover μ: stop a trace after each episode, force an answer, and estimate J (DESIGN.md §3, §6).

For every prefix j = −1..L−1 of a trace the prover continues the assistant turn `prompt + prefix +
force text` and answers. Two estimators of J(j):

- `sample` (parity default): K sampled forced answers from one prefill, graded; J = share correct.
- `likelihood` (ours): J = exp(log P(reference answer | prefix + force text + answer lead)), the
  teacher-forced probability of the reference written where the answer goes — one forward pass per
  prefix and no sampling noise, but a proxy (an equivalent form of the answer counts as wrong).
- `adaptive` (ours): sampled forced answers asked a few at a time (`adaptive_batch`), a prefix stopping
  once its J is known as well as K samples would know it (Wilson interval within ±0.5/√K) or the sign of
  its progress over the previous prefix is settled (disjoint intervals), and never past K. Most prefixes
  of a trace are clear-cut (J near 0 or 1), so most stop after the first batch.

For an `open` trace the forced text follows the reference exactly (`formats.prompts.forced_prefix`): the
prefix through episode i, one blank line, then the stop text; the empty prefix is the trace's opening
`<think>\n` followed directly by the stop text. The last prefix is the whole trace. Step-wise formats force it like any prefix; an `open` trace is
closed with just "\\n</think>" (reference semantics), or, if its thinking already closed, the prover
continues right after the trace's own `</think>`.

All prefixes of many traces go to the engine in ONE `generate` call with n=K (the engine shares each
prefill across its K samples); identical forced prefixes (the empty prefix of every trace of a
problem, duplicate traces) are asked once and their answers shared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from mrt_star.engines.base import Completion, Request, SamplingParams
from mrt_star.formats.episodes import episode_prefixes
from mrt_star.formats.prompts import (
    THINK_CLOSE,
    THINK_CLOSE_TEXT,
    forced_completion_text,
    forced_prefix,
    think_opening,
)
from mrt_star.progress.metrics import j_from_logprob, j_from_samples

ESTIMATORS = ("sample", "likelihood", "adaptive")

# Likelihood estimator: what is written between the force text and the answer, per format and
# position. The step-wise force text already ends inside "\boxed{"; after the open force text ("1. **")
# and after a closed thinking block the answer is led in the way the toy model writes it. For a real
# thinking model these leads are a choice, which is one reason the likelihood J is only a proxy.
LIKELIHOOD_LEAD = {"backtrack": "", "linearized": "", "open": "Answer:** \\boxed{"}
LIKELIHOOD_LEAD_CLOSED = {"open": "\n\n\\boxed{"}
ANSWER_CLOSE = "}"


class GraderLike(Protocol):
    def grade_many(self, pairs: Sequence[tuple[str, str]]) -> list[Any]: ...


@dataclass(frozen=True)
class ProverOptions:
    """How the prover answers and how J is estimated (parity: K=8, temperature 0.6–0.7)."""

    k: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 64
    estimators: tuple[str, ...] = ("sample",)
    grade_prefix_too: bool = False  # parity flag: grade prefix + force text + completion
    share_prefixes: bool = True  # ask each distinct forced prefix once
    seed: int | None = None
    adaptive_batch: int = 2  # adaptive: forced answers asked per prefix and round
    adaptive_z: float = 1.0  # adaptive: Wilson interval half-width in standard errors
    adaptive_epsilon: float | None = None  # adaptive: stop when J is within ±this; None: 0.5/√k (K's worst case)


@dataclass(frozen=True)
class ProverQuery:
    """One prefix of one trace, ready to force: the prompt and the assistant text the prover continues."""

    prompt: tuple[tuple[tuple[str, str], ...], ...]  # chat messages, frozen so queries hash
    fmt: str
    forced: str  # prefix + force text (or the closed thinking for an open trace's end)
    lead: str  # likelihood estimator: written after `forced`, before the answer
    answer: str  # the reference answer
    position: int = field(default=0, compare=False)  # 0: the empty prefix; i: through episode i-1 (not hashed)

    def messages(self, extra: str = "") -> list[dict[str, str]]:
        """Return the chat messages ending in the prefilled assistant turn (`forced` + `extra`)."""
        return [*(dict(m) for m in self.prompt), {"role": "assistant", "content": self.forced + extra}]


@dataclass
class ProverResult:
    """What the prover gave for one query: K graded answers and/or the reference log-prob."""

    answers: list[dict[str, Any]] = field(default_factory=list)  # {text, answer, correct, num_tokens}
    prompt_tokens: int = 0  # rendered prompt tokens of the prefill (sample estimator)
    logprob: float | None = None
    charged: bool = False  # the first query that asked this prefix pays for it
    skipped: bool = False  # the forced prefix does not fit the model's context: no J here

    @property
    def j_sample(self) -> float | None:
        return j_from_samples([a["correct"] for a in self.answers]) if self.answers else None

    @property
    def j_likelihood(self) -> float | None:
        return None if self.logprob is None else j_from_logprob(self.logprob)


def freeze_messages(messages: Sequence[dict[str, str]]) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Return chat messages as nested tuples (hashable, order kept)."""
    return tuple(tuple((k, str(v)) for k, v in m.items()) for m in messages)


def end_forced_text(trace: str, fmt: str) -> str:
    """Return what the prover continues after the WHOLE trace (the forced answer at the end)."""
    if fmt == "open":
        close = trace.find(THINK_CLOSE)
        if close >= 0:  # the thinking already closed: answer right after the trace's own </think>
            return trace[: close + len(THINK_CLOSE)]
        return trace + THINK_CLOSE_TEXT
    return forced_prefix(trace, fmt)


def prover_queries(prompt: Sequence[dict[str, str]], episodes: Sequence[str], fmt: str,
                   answer: str) -> list[ProverQuery]:
    """Return the L+1 queries of a trace: the empty prefix, then the prefix through each episode."""
    frozen = freeze_messages(prompt)
    out = []
    # The empty prefix of an open trace is its opening "<think>\n" (what the template's generation
    # prompt opened): the stop text follows it directly (DESIGN.md §3).
    opening = think_opening(episodes[0]) if fmt == "open" and episodes else ""
    # An open trace that never opened <think> (a template without thinking): nothing to close, so every
    # prefix, the whole trace too, is forced with the stop text less its "</think>".
    thinking = fmt != "open" or bool(opening)
    prefixes = [opening, *episode_prefixes(list(episodes))[1:]]
    for i, prefix in enumerate(prefixes):
        if i == len(prefixes) - 1 and i > 0 and thinking:  # the whole trace: the forced answer at the end
            forced = end_forced_text(prefix, fmt)
            lead = LIKELIHOOD_LEAD_CLOSED.get(fmt, LIKELIHOOD_LEAD.get(fmt, ""))
        else:
            forced, lead = forced_prefix(prefix, fmt, thinking), LIKELIHOOD_LEAD.get(fmt, "")
        out.append(ProverQuery(frozen, fmt, forced, lead, str(answer), position=i))
    return out


def graded_text(query: ProverQuery, completion: str, grade_prefix_too: bool) -> str:
    """Return the text graded for one forced answer: the forced completion only, or (parity flag) all of it."""
    if grade_prefix_too:
        return query.forced + completion
    if query.forced.endswith(THINK_CLOSE):  # an open trace's end: the completion is the whole answer
        return completion
    return forced_completion_text(query.fmt, completion)


def _unique(queries: Sequence[ProverQuery], share: bool) -> tuple[list[ProverQuery], list[int]]:
    """Return (distinct queries to ask, index of each input query among them)."""
    if not share:
        return list(queries), list(range(len(queries)))
    seen: dict[ProverQuery, int] = {}
    index = []
    for q in queries:
        index.append(seen.setdefault(q, len(seen)))
    return list(seen), index


def sample_answers(engine: Any, grader: GraderLike, queries: Sequence[ProverQuery],
                   options: ProverOptions) -> list[ProverResult]:
    """Return K graded forced answers per query from one batched `generate` call."""
    if not queries:
        return []
    params = SamplingParams(n=options.k, temperature=options.temperature, top_p=options.top_p,
                            max_new_tokens=options.max_new_tokens, seed=options.seed)
    outputs: list[list[Completion]] = engine.generate([Request(q.messages()) for q in queries], params)
    pairs = [(graded_text(q, c.text, options.grade_prefix_too), q.answer) for q, outs in zip(queries, outputs, strict=True)
             for c in outs]
    # Forced answers repeat a lot (short answers, K samples); grade each distinct one once.
    distinct = list(dict.fromkeys(pairs))
    grades = dict(zip(distinct, grader.grade_many(distinct), strict=True))
    results, flat = [], iter(pairs)
    for outs in outputs:
        answers = []
        for c in outs:
            g = grades[next(flat)]
            answers.append({"text": c.text, "answer": getattr(g, "extracted", None),
                            "correct": bool(g.correct), "num_tokens": int(c.completion_tokens)})
        results.append(ProverResult(answers=answers, prompt_tokens=outs[0].prompt_tokens if outs else 0))
    return results


def likelihood_logprobs(engine: Any, queries: Sequence[ProverQuery]) -> list[float]:
    """Return log P(reference answer | forced prefix + lead) per query (one teacher-forced pass each)."""
    if not queries:
        return []
    requests = [Request(q.messages(q.lead)) for q in queries]
    return [float(x) for x in engine.continuation_logprobs(requests, [q.answer + ANSWER_CLOSE for q in queries])]


def fitting(engine: Any, queries: Sequence[ProverQuery]) -> list[bool]:
    """Return, per query, whether its forced prefix (and the likelihood continuation) fits the context.

    One prefix too long for the model would fail the whole batched call, so those are left out first.
    Engines without `max_context`/`render` (test fakes) are taken to fit everything.
    """
    limit = getattr(engine, "max_context", None)
    if not limit or not hasattr(engine, "render"):
        return [True] * len(queries)
    texts = [engine.render(Request(q.messages(q.lead))) for q in queries]
    extra = engine.count_tokens([q.answer + ANSWER_CLOSE for q in queries])
    return [n + e + 1 <= limit for n, e in zip(engine.count_tokens(texts), extra, strict=True)]


def run_prover(engine: Any, grader: GraderLike | None, queries: Sequence[ProverQuery],
               options: ProverOptions) -> list[ProverResult]:
    """Return one ProverResult per query, asking each distinct forced prefix once per estimator.

    A prefix that does not fit the model's context comes back `skipped` (no answers, no log-prob).
    """
    unknown = set(options.estimators) - set(ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown estimator {sorted(unknown)[0]!r}; choose from {', '.join(ESTIMATORS)}")
    unique, index = _unique(queries, options.share_prefixes)
    results = [ProverResult() for _ in unique]
    fits = fitting(engine, unique)
    asked = [q for q, ok in zip(unique, fits, strict=True) if ok]
    answered = [r for r, ok in zip(results, fits, strict=True) if ok]
    for r, ok in zip(results, fits, strict=True):
        r.skipped = not ok
    if {"sample", "adaptive"} & set(options.estimators):
        if grader is None:
            raise ValueError("the sample and adaptive estimators need a grader")
        if "sample" in options.estimators:  # both asked (comparing estimators): fixed K answers both
            sampled = sample_answers(engine, grader, asked, options)
        else:
            sampled = adaptive_answers(engine, grader, asked, options, _predecessors(queries, index, fits))
        for r, s in zip(answered, sampled, strict=True):
            r.answers, r.prompt_tokens = s.answers, s.prompt_tokens
    if "likelihood" in options.estimators:
        for r, lp in zip(answered, likelihood_logprobs(engine, asked), strict=True):
            r.logprob = lp
    out, charged = [], set()
    for i in index:
        r = results[i]
        out.append(ProverResult(r.answers, r.prompt_tokens, r.logprob, charged=i not in charged, skipped=r.skipped))
        charged.add(i)
    return out


# --- adaptive estimator -------------------------------------------------------------------------------


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Return the Wilson score interval of a share (successes of n) at z standard errors."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _predecessors(queries: Sequence[ProverQuery], index: list[int], fits: list[bool]) -> list[set[int]]:
    """Return, per asked distinct query, the asked distinct queries of the prefixes just before it.

    `queries` come trace by trace (what `prover_queries` returns, concatenated); `position` says where a
    trace starts. Indices are among the asked queries (those that fit), the order `adaptive_answers` sees.
    """
    asked_at, count = {}, 0
    for u, ok in enumerate(fits):
        if ok:
            asked_at[u] = count
            count += 1
    before: list[set[int]] = [set() for _ in range(count)]
    for i in range(1, len(queries)):
        here, prev = index[i], index[i - 1]
        if queries[i].position > 0 and here in asked_at and prev in asked_at and here != prev:
            before[asked_at[here]].add(asked_at[prev])
    return before


def adaptive_answers(engine: Any, grader: GraderLike, queries: Sequence[ProverQuery], options: ProverOptions,
                     before: Sequence[set[int]] | None = None) -> list[ProverResult]:
    """Return graded forced answers per query, asked `adaptive_batch` at a time until J is settled (≤ K each).

    A query stops when its Wilson interval is within ±epsilon, when its interval is apart from that of every
    prefix before it (`before`: the sign of its progress is clear), or at K answers. Round r samples with
    seed + r, so the result is deterministic with the seed.
    """
    before = list(before) if before is not None else [set() for _ in queries]
    eps = options.adaptive_epsilon if options.adaptive_epsilon is not None else 0.5 / math.sqrt(options.k)
    results = [ProverResult() for _ in queries]
    interval = [(0.0, 1.0)] * len(queries)
    active, round_index = set(range(len(queries))), 0
    while active:
        size = {i: min(options.adaptive_batch, options.k - len(results[i].answers)) for i in active}
        seed = None if options.seed is None else options.seed + round_index
        for n in sorted(set(size.values())):
            ids = sorted(i for i in active if size[i] == n)
            got = sample_answers(engine, grader, [queries[i] for i in ids], replace(options, k=n, seed=seed))
            for i, g in zip(ids, got, strict=True):
                results[i].answers += g.answers
                results[i].prompt_tokens += g.prompt_tokens
        for i in active:
            answers = results[i].answers
            interval[i] = wilson(sum(a["correct"] for a in answers), len(answers), options.adaptive_z)
        settled = set()
        for i in active:
            lo, hi = interval[i]
            apart = bool(before[i]) and all(hi < interval[p][0] or lo > interval[p][1] for p in before[i])
            if len(results[i].answers) >= options.k or (hi - lo) / 2 <= eps + 1e-12 or apart:
                settled.add(i)
        active -= settled
        round_index += 1
    return results
