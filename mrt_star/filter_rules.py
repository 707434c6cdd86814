"""The filter's rules as functions over scored trace rows: which traces each rule keeps, and what it kept in numbers.

Rules (all group traces by problem): `star` keeps every correct trace, `shortest` the shortest correct one
per problem (the control), `mrt` the correct traces that make progress. `mrt` works at one of two levels:

- `episode` (default, DESIGN.md §1): within a trace, keep the episodes up to the best prefix (where J peaks)
  and close that prefix with the force text and a correct forced answer from the scorer's prover samples,
  as the paper's forced termination does; reject a trace that loses more than `max_unrecovered_loss` of J
  and never wins it back; rank a problem's candidates by the area under their kept J curve (lowest regret).
- `trace`: whole traces that stay correct after forced termination, ranked by cumulative progress (which
  telescopes to J_end − J_start, so it mostly falls to its token tie-break) or by scored regret.

`cfg` is a `FilterConfig` (read for its rule options).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from typing import Any

from mrt_star.errors import UserError
from mrt_star.formats.prompts import THINK_CLOSE

RULES = ("mrt", "star", "shortest")
TRAILING = ("keep", "drop", "trim")
TIE_BREAKS = ("tokens", "index")
RANK_BY = ("auto", "progress", "regret")
MRT_LEVELS = ("episode", "trace")


def by_problem(rows: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Return rows grouped by problem id, in first-seen order."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["problem_id"], []).append(row)
    return groups


def sample_index(row: dict[str, Any]) -> int:
    """Return a row's index among its problem's samples (0 when the row has none)."""
    return int(row.get("sample_index") or 0)


def shortest_correct(traces: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the problem's shortest correct trace (earlier sample on ties), or None."""
    correct = [r for r in traces if r.get("correct")]
    return min(correct, key=lambda r: (r["num_tokens"], sample_index(r))) if correct else None


def trim_trailing(row: dict[str, Any]) -> tuple[int, str] | None:
    """Return (episodes kept, trimmed text) after cutting trailing negative-progress episodes, or None.

    Step-wise traces are cut after the last kept episode. An open trace keeps its thinking up to the
    cut and then its own closing `</think>` and answer (None if the thinking never closed).
    """
    progress = list(row["progress"])
    keep = len(progress)
    while keep > 1 and progress[keep - 1] < 0:
        keep -= 1
    texts = [e["text"] for e in row["episodes"]]
    if keep == len(texts):
        return keep, row["completion"]
    kept = "".join(texts[:keep])
    if row["format"] == "open":
        close = row["completion"].find(THINK_CLOSE)
        if close < 0:
            return None
        return keep, kept.rstrip("\n") + "\n" + row["completion"][close:]
    return keep, kept


def mrt_candidate(row: dict[str, Any], cfg: Any, grader: Any = None) -> dict[str, Any] | None:
    """Return the (possibly trimmed) trace if it passes the MRT rule's per-trace checks, else None.

    The returned dict carries `text`, `cumulative_progress`, `j_end`, `num_tokens` and `trimmed`.
    """
    if cfg.require_correct and not row.get("correct"):
        return None
    j, progress = list(row["j_values"]), list(row["progress"])
    text, keep, trimmed = row["completion"], len(progress), False
    if progress and progress[-1] < 0 and cfg.trailing == "drop":
        return None
    if progress and progress[-1] < 0 and cfg.trailing == "trim":
        cut = trim_trailing(row)
        if cut is None:
            return None
        keep, text = cut
        trimmed = keep < len(progress)
        if trimmed and row["format"] != "open" and not _ends_correct(text, row, grader):
            return None
    j_end = j[keep]
    if j_end <= cfg.min_j_end:
        return None
    kept_progress = progress[:keep]
    if cfg.min_progress is not None and any(p < cfg.min_progress for p in kept_progress):
        return None
    cumulative = j_end - j[0]
    if cfg.min_cumulative_progress is not None and cumulative < cfg.min_cumulative_progress:
        return None
    if trimmed:
        tokens = list(row.get("j_tokens") or [])
        kept_tokens = tokens[keep] if len(tokens) > keep else row["num_tokens"]
        # An open trace keeps its answer tail; count it at the trace's own tokens-per-character rate.
        tail = len(text) - len("".join(e["text"] for e in row["episodes"][:keep]))
        rate = row["num_tokens"] / max(1, len(row["completion"]))
        num_tokens = int(kept_tokens + max(0, round(tail * rate)))
    else:
        num_tokens = int(row["num_tokens"])
    return {"text": text, "cumulative_progress": cumulative, "j_end": j_end, "num_tokens": num_tokens,
            "trimmed": trimmed, "episodes_kept": keep}


def _ends_correct(text: str, row: dict[str, Any], grader: Any) -> bool:
    if grader is None:
        return False
    return bool(grader.grade_many([(text, row["answer"])])[0].correct)


def regret_at(row: dict[str, Any], budget: int | None) -> float:
    """Return the row's scored regret at `budget` (the largest scored budget when None)."""
    points = {float(p["budget"]): float(p["value"]) for p in row.get("regret") or []}
    if not points:
        raise UserError("rank_by regret: the scored rows have no regret; score them with --budgets")
    if budget is None:
        return points[max(points)]
    if float(budget) not in points:
        raise UserError(f"regret_budget: {budget} was not scored; scored budgets: {sorted(int(b) for b in points)}")
    return points[float(budget)]


def _mrt_key(row: dict[str, Any], pick: dict[str, Any], cfg: Any) -> tuple:
    # Rounding keeps float noise (J as shares of K) from overriding the tie-break.
    progress = -round(pick["cumulative_progress"], 9)
    first = (round(regret_at(row, cfg.regret_budget), 9), progress) if rank_by(cfg) == "regret" else (progress,)
    if cfg.tie_break == "tokens":
        return *first, pick["num_tokens"], sample_index(row)
    return *first, sample_index(row)


def rank_by(cfg: Any) -> str:
    """Return the ranking in force: `rank_by`, where `auto` is regret at episode level and progress at trace level."""
    if cfg.rank_by != "auto":
        return cfg.rank_by
    return "regret" if getattr(cfg, "mrt_level", "trace") == "episode" else "progress"


# --- episode-level MRT ----------------------------------------------------------------------------


CUT_AT = ("last-peak", "first-peak", "none")


def best_prefix(j_values: list[float], cut_at: str = "last-peak") -> int:
    """Return the index (1..L) in the J curve where a trace is cut: the last prefix where J peaks (episodes that
    only hold J are kept; what follows never reaches the peak again), the first, or none (the whole trace);
    at least one episode is kept."""
    if cut_at == "none":
        return len(j_values) - 1
    peak = max(j_values[1:])
    at_peak = [i for i in range(1, len(j_values)) if j_values[i] >= peak - 1e-9]
    return at_peak[-1] if cut_at == "last-peak" else at_peak[0]


def unrecovered_loss(j_values: list[float]) -> float:
    """Return the most J lost after some prefix and never won back later: max over i of J(i−1) − max J(i..)."""
    worst, later = 0.0, float("-inf")
    for i in range(len(j_values) - 1, 0, -1):
        later = max(later, j_values[i])
        worst = max(worst, j_values[i - 1] - later)
    return worst


def _boxed_answer(sample: str) -> str | None:
    """Return a step-wise forced answer up to the brace closing the force text's `\\boxed{`, or None."""
    depth = 1
    for i, ch in enumerate(sample):
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return sample[: i + 1]
    return None


def forced_close(row: dict[str, Any], keep: int) -> str | None:
    """Return the text that closes a trace cut after `keep` episodes: the force text and a forced answer, or None.

    The answer is the scorer's shortest correct prover sample at that prefix (step-wise formats: up to the
    box's closing brace). Under the likelihood estimator alone there are no samples; the reference answer is
    written where that estimator scored it (force text, lead, answer, "}").
    """
    from mrt_star.progress.prover import ANSWER_CLOSE, prover_queries

    episodes = [e["text"] for e in row["episodes"]]
    kept = "".join(episodes[:keep])
    query = prover_queries(list(row["prompt"]), episodes, row["format"], row["answer"])[keep]
    if row["format"] == "open":  # an open prefix loses its trailing newlines before the stop text
        kept = kept.rstrip("\n")
    force = query.forced[len(kept):]
    answers = list((row.get("prover_answers") or [[]] * (keep + 1))[keep] or [])
    if not answers:
        return force + query.lead + str(row["answer"]) + ANSWER_CLOSE
    usable = []
    for i, a in enumerate(answers):
        text = a["text"] if row["format"] == "open" else _boxed_answer(a["text"])
        if a.get("correct") and text:
            usable.append((int(a.get("num_tokens") or 0), i, text))
    return force + min(usable)[2] if usable else None


def episode_candidate(row: dict[str, Any], cfg: Any) -> dict[str, Any] | None:
    """Return the trace cut at its best prefix and closed with a forced answer, or None if the rule rejects it.

    The returned dict carries `text`, `cumulative_progress`, `j_end` (J at the cut), `num_tokens`, `trimmed`,
    `episodes_kept` and `kept_curve` ((tokens, J) up to the cut, for ranking by area).
    """
    if cfg.require_correct and not row.get("correct"):
        return None
    j = [float(x) for x in row["j_values"]]
    if len(j) < 2:
        return None
    if cfg.max_unrecovered_loss is not None and unrecovered_loss(j) > cfg.max_unrecovered_loss + 1e-9:
        return None
    keep = best_prefix(j, getattr(cfg, "cut_at", "last-peak"))
    closed = forced_close(row, keep) if keep < len(j) - 1 else None
    if closed is None:  # the peak is the end, or no correct forced answer to close a cut with: the whole trace
        keep = len(j) - 1
    if j[keep] <= cfg.min_j_end:
        return None
    progress = list(row["progress"])[:keep]
    if cfg.min_progress is not None and any(p < cfg.min_progress for p in progress):
        return None
    cumulative = j[keep] - j[0]
    if cfg.min_cumulative_progress is not None and cumulative < cfg.min_cumulative_progress:
        return None
    tokens = list(row.get("j_tokens") or [])
    kept_tokens = tokens[: keep + 1] if len(tokens) == len(j) else [0] * (keep + 1)
    if closed is None:
        text, num_tokens, trimmed = row["completion"], int(row["num_tokens"]), False
    else:
        kept = "".join(e["text"] for e in row["episodes"][:keep])
        if row["format"] == "open":
            kept = kept.rstrip("\n")  # joined to the stop text by one blank line, as the prover saw it
        text = kept + closed
        # The force text and the answer are not in the trace: count them at its tokens-per-character rate.
        rate = row["num_tokens"] / max(1, len(row["completion"]))
        num_tokens = int(kept_tokens[-1] + round(len(closed) * rate))
        trimmed = True
    return {"text": text, "cumulative_progress": cumulative, "j_end": j[keep], "num_tokens": num_tokens,
            "trimmed": trimmed, "episodes_kept": keep, "kept_curve": (kept_tokens, j[: keep + 1])}


def kept_regret(pick: dict[str, Any], budget: float) -> float:
    """Return the regret of a pick's kept J curve at `budget` (J held at the cut's value after it)."""
    from mrt_star.progress.regret import normalized_regret

    tokens, values = pick["kept_curve"]
    return normalized_regret(tokens, values, budget)  # J(−1) sits at t=0 and is dropped, as when scoring


def episode_ranked(traces: list[dict[str, Any]], cfg: Any) -> list[tuple[dict, dict]]:
    """Return a problem's episode-level candidates, best first.

    Ranked by regret of the kept J curve (area under J, J high early) at `regret_budget`, or, when that is
    none, at the largest budget the rows were scored at (`score --budgets`) or the problem's longest kept
    candidate if that is longer, so every candidate is measured on the same horizon and the J a trace ends
    with counts (on the longest candidate's own horizon its final J would weigh nothing, which favours short
    traces whatever they end with); then most cumulative progress, then the tie-break. `rank_by: progress`
    ranks by cumulative progress only.
    """
    picks = [(r, p) for r in traces if (p := episode_candidate(r, cfg)) is not None]
    if not picks:
        return []
    scored = [float(x["budget"]) for r in traces for x in r.get("regret") or []]
    budget = cfg.regret_budget or max([*(max(p["kept_curve"][0][-1], 1) for _, p in picks), *scored])

    def key(rp: tuple[dict, dict]) -> tuple:
        row, pick = rp
        progress = -round(pick["cumulative_progress"], 9)
        first = (round(kept_regret(pick, budget), 9), progress) if rank_by(cfg) == "regret" else (progress,)
        last = (pick["num_tokens"], sample_index(row)) if cfg.tie_break == "tokens" else (sample_index(row),)
        return *first, *last

    return sorted(picks, key=key)


def select(rows: list[dict[str, Any]], cfg: Any, grader: Any = None) -> list[tuple[dict, dict]]:
    """Return the kept (trace row, pick) pairs for the rule, problems in input order, best first within one."""
    kept = []
    for traces in by_problem(rows).values():
        if cfg.rule == "star":
            picks = [(r, _plain_pick(r)) for r in traces if r.get("correct")]
        elif cfg.rule == "shortest":
            best = shortest_correct(traces)
            picks = [(best, _plain_pick(best))] if best else []
        else:
            if getattr(cfg, "mrt_level", "trace") == "episode":
                scored = episode_ranked(traces, cfg)
            else:
                scored = [(r, p) for r in traces if (p := mrt_candidate(r, cfg, grader)) is not None]
                scored.sort(key=lambda rp: _mrt_key(rp[0], rp[1], cfg))
            picks = scored[: cfg.per_problem]
        if cfg.max_per_problem is not None:
            picks = picks[: cfg.max_per_problem]
        kept.extend(picks)
    return kept


def _plain_pick(row: dict[str, Any]) -> dict[str, Any]:
    return {"text": row["completion"], "cumulative_progress": row.get("cumulative_progress"),
            "j_end": row.get("j_end"), "num_tokens": int(row["num_tokens"]), "trimmed": False,
            "episodes_kept": len(row.get("episodes") or [])}


def equalize(kept: list[tuple[dict, dict]], target: int, seed: int) -> list[tuple[dict, dict]]:
    """Return `target` of the kept pairs: problems round-robin (each problem's best row first), problem order
    shuffled with `seed`, so a smaller set still covers as many problems as it can."""
    if target >= len(kept):
        return kept
    groups: dict[Any, list[tuple[dict, dict]]] = {}
    for pair in kept:
        groups.setdefault(pair[0]["problem_id"], []).append(pair)
    order = list(groups)
    random.Random(seed).shuffle(order)
    chosen: list[tuple[dict, dict]] = []
    depth = 0
    while len(chosen) < target:
        for pid in order:
            if depth < len(groups[pid]) and len(chosen) < target:
                chosen.append(groups[pid][depth])
        depth += 1
    keep_ids = {id(p[1]) for p in chosen}
    return [p for p in kept if id(p[1]) in keep_ids]  # input order, not round-robin order



# --- statistics ----------------------------------------------------------------------------------


def _quantiles(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]  # noqa: E731
    return {"min": xs[0], "p25": at(0.25), "median": at(0.5), "p75": at(0.75), "max": xs[-1],
            "mean": statistics.fmean(xs)}


def rule_statistics(rows: list[dict[str, Any]], cfg: Any, grader: Any = None) -> dict[str, Any]:
    """Return, for every rule on the same input, rows kept, problems covered and mean tokens (a comparison)."""
    from dataclasses import replace

    scored = "j_values" in (rows[0] if rows else {})
    out = {}
    for rule in RULES if scored else ("star", "shortest"):
        kept = select(rows, replace(cfg, rule=rule), grader)
        out[rule] = {"rows": len(kept), "problems": len({r["problem_id"] for r, _ in kept}),
                     "mean_tokens": statistics.fmean([p["num_tokens"] for _, p in kept]) if kept else None}
    return out


def contested(traces: list[dict[str, Any]]) -> bool:
    """Return True when a problem's correct traces differ in length, so "shortest" is a real choice."""
    return len({r["num_tokens"] for r in traces if r.get("correct")}) > 1


def pick_equals_shortest(rows: list[dict[str, Any]], kept: list[tuple[dict, dict]],
                         contested_only: bool = False) -> float | None:
    """Return the share of problems whose best kept trace is the problem's shortest correct trace.

    With `contested_only`, count only problems whose correct traces differ in length: a problem with one
    correct trace (or several of one length) agrees with "shortest" whatever the rule, which says nothing.
    """
    groups = by_problem(rows)
    firsts: dict[Any, dict] = {}
    for row, _ in kept:
        firsts.setdefault(row["problem_id"], row)
    same = [shortest_correct(groups[pid]) is row for pid, row in firsts.items()
            if not contested_only or contested(groups[pid])]
    return sum(same) / len(same) if same else None


def _j_at(row: dict[str, Any], t: float) -> float:
    # J as a step function of tokens: the value of the last prefix at or before t (held after the trace ends).
    tokens, values = list(row.get("j_tokens") or []), list(row["j_values"])
    return next((v for x, v in zip(reversed(tokens), reversed(values), strict=True) if x <= t), values[0])


def shortest_dominates(traces: list[dict[str, Any]]) -> bool:
    """Return True when the shortest correct trace's J curve is at or above every other correct trace's at every
    token: then any ranking by area under J picks it too, and "most progress" cannot differ from "shortest"."""
    best = shortest_correct(traces)
    others = [r for r in traces if r.get("correct") and r is not best]
    if best is None or len(best.get("j_tokens") or []) != len(best["j_values"]):
        return False
    for other in others:
        points = {float(x) for x in list(best["j_tokens"]) + list(other.get("j_tokens") or [])}
        if any(_j_at(best, t) < _j_at(other, t) - 1e-9 for t in points):
            return False
    return True


def filter_summary(rows: list[dict[str, Any]], kept: list[tuple[dict, dict]], out_rows: list[dict[str, Any]],
                   cfg: Any, grader: Any = None) -> dict[str, Any]:
    """Return the closing numbers: kept share, tokens, progress distribution, per-rule comparison."""
    problems = by_problem(rows)
    tokens = [r["num_tokens"] for r in out_rows]
    progress = [r["cumulative_progress"] for r in out_rows if r["cumulative_progress"] is not None]
    summary: dict[str, Any] = {
        "rule": cfg.rule,
        "input_traces": len(rows),
        "input_problems": len(problems),
        "kept_rows": len(out_rows),
        "kept_share": len(out_rows) / len(rows) if rows else 0.0,
        "problems_covered": len({r["problem_id"] for r in out_rows}),
        "kept_tokens": sum(tokens),
        "mean_tokens": statistics.fmean(tokens) if tokens else None,
        "mean_tokens_all_correct": statistics.fmean([r["num_tokens"] for r in rows if r.get("correct")])
        if any(r.get("correct") for r in rows) else None,
        "trimmed_rows": sum(bool(r["trimmed"]) for r in out_rows),
        "formats": dict(Counter(r["format"] for r in out_rows)),
        "cumulative_progress": _quantiles(progress),
        "per_rule": rule_statistics(rows, cfg, grader),
    }
    if cfg.rule == "mrt":
        summary["mrt_pick_equals_shortest"] = pick_equals_shortest(rows, kept)
        summary["contested_problems"] = sum(contested(traces) for traces in problems.values())
        summary["mrt_pick_equals_shortest_contested"] = pick_equals_shortest(rows, kept, contested_only=True)
        fought = [traces for traces in problems.values() if contested(traces)]
        summary["shortest_dominates_contested"] = (sum(map(shortest_dominates, fought)) / len(fought)
                                                   if fought and "j_values" in rows[0] else None)
    return summary


