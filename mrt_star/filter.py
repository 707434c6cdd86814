"""`mrt-star filter`: keep traces by rule and write them as an SFT dataset (TRL prompt/completion format).

Rules (all group traces by problem):
- `star`: every trace whose own final answer is correct (the outcome-only STaR baseline).
- `shortest`: the shortest correct trace of each problem (a control: "most progress" must beat it).
- `mrt`: traces that are correct (their own final answer) and correct after forced termination at the
  end (J_end above `min_j_end`), ranked by cumulative progress; the best `per_problem` are kept.
  Cumulative progress telescopes to J_end − J_start, and J_end is near 1 for any trace whose boxed answer
  is right, so among correct traces this ranking mostly falls to its tie-break (fewer tokens).
  `rank_by: regret` ranks by the shape of the J curve instead (lowest regret: J high early). Optional: a minimum per-episode progress, and what to do with trailing episodes of negative progress
  (keep them, drop the trace, or trim them off).

To compare rules at equal SFT sizes, `match_count_of` (another SFT output) or `max_rows` cuts the kept
rows to a target count, taking problems round-robin (every problem's best row before any second one).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.config import check_config, config_to_dict, option
from mrt_star.errors import UserError
from mrt_star.formats.episodes import split_episodes
from mrt_star.formats.prompts import THINK_CLOSE
from mrt_star.options import GradingOptions, StageIO

RULES = ("mrt", "star", "shortest")
TRAILING = ("keep", "drop", "trim")
TIE_BREAKS = ("tokens", "index")
RANK_BY = ("progress", "regret")
SUFFIX_SPLITS = ("first-episode", "none")


@dataclass
class FilterConfig(StageIO, GradingOptions):
    """Options of `mrt-star filter`."""

    rule: str = option("mrt", "which traces to keep: mrt (most progress), star (every correct trace), shortest "
                       "(shortest correct trace per problem)", choices=RULES)
    per_problem: int = option(1, "mrt: traces kept per problem, most cumulative progress first", at_least=1)
    min_j_end: float = option(0.5, "mrt: keep traces whose J after the whole trace exceeds this (correct after "
                              "forced termination)")
    require_correct: bool = option(True, "mrt: the trace's own final answer must be correct too")
    min_progress: float | None = option(None, "mrt: drop traces with an episode whose progress is below this "
                                        "(e.g. 0: never lose ground); none: no per-episode requirement")
    min_cumulative_progress: float | None = option(None, "mrt: drop traces whose cumulative progress is below this")
    trailing: str = option("keep", "mrt: trailing episodes with negative progress: keep them, drop the trace, or "
                           "trim them off (the trimmed trace must still end correct)", choices=TRAILING)
    rank_by: str = option("progress", "mrt: order a problem's candidates by most cumulative progress (J end − J "
                          "start) or by lowest regret at `regret_budget` (J high early on the token axis)",
                          choices=RANK_BY)
    regret_budget: int | None = option(None, "mrt with rank_by regret: the scored budget to rank at; none: the "
                                       "largest one scored")
    tie_break: str = option("tokens", "mrt: among equal progress prefer fewer tokens (tokens) or the earlier sample "
                            "(index)", choices=TIE_BREAKS)
    max_per_problem: int | None = option(None, "any rule: keep at most this many rows per problem", at_least=0)
    match_count_of: str | None = option(None, "another SFT output folder: cut this output to its row count (compare "
                                        "rules at equal SFT sizes)")
    max_rows: int | None = option(None, "keep at most this many rows (problems taken round-robin)", at_least=0)
    suffix_split: str = option("first-episode", "prefix/suffix columns for suffix-only SFT: first-episode (a "
                               "backtracking trace's first attempt is the prefix, its revisions the suffix) or none "
                               "(empty prefix)", choices=SUFFIX_SPLITS)


# --- input ------------------------------------------------------------------------------------------

SCORED_NEEDED = ("j_values", "progress", "cumulative_progress", "j_end", "episodes")
TRACE_NEEDED = ("problem_id", "prompt", "completion", "correct", "num_tokens", "format")


def check_input(cfg: FilterConfig) -> dict[str, Any]:
    """Return the input manifest after checking it is a finished score (or, for star/shortest, generate) output."""
    from mrt_star.store import read_manifest, read_stage_input

    check_config(cfg)
    allowed = ("score",) if cfg.rule == "mrt" else ("score", "generate")
    manifest = read_stage_input(cfg.input, allowed, f"filter --rule {cfg.rule}",
                                {"score": TRACE_NEEDED + SCORED_NEEDED, "generate": TRACE_NEEDED})
    if cfg.match_count_of:
        other = read_manifest(cfg.match_count_of)
        if other.get("stage") != "filter" or other.get("status") != "complete":
            raise UserError(f"match_count_of: {cfg.match_count_of} is not a finished filter output")
    return manifest


# --- rules ------------------------------------------------------------------------------------------


def by_problem(rows: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Return rows grouped by problem id, in first-seen order."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["problem_id"], []).append(row)
    return groups


def _index(row: dict[str, Any]) -> int:
    return int(row.get("sample_index") or 0)


def shortest_correct(traces: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the problem's shortest correct trace (earlier sample on ties), or None."""
    correct = [r for r in traces if r.get("correct")]
    return min(correct, key=lambda r: (r["num_tokens"], _index(r))) if correct else None


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


def mrt_candidate(row: dict[str, Any], cfg: FilterConfig, grader: Any = None) -> dict[str, Any] | None:
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


def _mrt_key(row: dict[str, Any], pick: dict[str, Any], cfg: FilterConfig) -> tuple:
    # Rounding keeps float noise (J as shares of K) from overriding the tie-break.
    progress = -round(pick["cumulative_progress"], 9)
    first = (round(regret_at(row, cfg.regret_budget), 9), progress) if cfg.rank_by == "regret" else (progress,)
    if cfg.tie_break == "tokens":
        return *first, pick["num_tokens"], _index(row)
    return *first, _index(row)


def select(rows: list[dict[str, Any]], cfg: FilterConfig, grader: Any = None) -> list[tuple[dict, dict]]:
    """Return the kept (trace row, pick) pairs for the rule, problems in input order, best first within one."""
    kept = []
    for traces in by_problem(rows).values():
        if cfg.rule == "star":
            picks = [(r, _plain_pick(r)) for r in traces if r.get("correct")]
        elif cfg.rule == "shortest":
            best = shortest_correct(traces)
            picks = [(best, _plain_pick(best))] if best else []
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


# --- SFT rows ---------------------------------------------------------------------------------------


def prefix_suffix(text: str, row: dict[str, Any], how: str) -> tuple[str, str]:
    """Return (prefix, suffix) of the assistant text for suffix-only SFT.

    A backtracking trace with a revision gives its first attempt as the prefix and trains on what
    follows (the backtrack line and the revisions); any other trace trains on all of it.
    """
    # Attempt-level cut whatever unit the scorer used (step episodes would make Line 1 the prefix).
    episodes = split_episodes(text, "backtrack") if row.get("format") == "backtrack" else []
    if how == "first-episode" and len(episodes) > 1:
        first = episodes[0]
        if text.startswith(first) and len(text) > len(first):
            return first, text[len(first):]
    return "", text


def sft_row(row: dict[str, Any], pick: dict[str, Any], rule: str, how: str) -> dict[str, Any]:
    """Return one SFT row (schemas.SFT): TRL conversational prompt/completion plus messages and provenance."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
    completion = [{"role": "assistant", "content": pick["text"]}]
    prefix, suffix = prefix_suffix(pick["text"], row, how)
    return {
        "problem_id": str(row["problem_id"]),
        "prompt": prompt,
        "completion": completion,
        "messages": prompt + completion,
        "prefix": prefix,
        "suffix": suffix,
        "rule": rule,
        "cumulative_progress": pick["cumulative_progress"],
        "num_tokens": pick["num_tokens"],
        "format": row.get("format"),
        "sample_index": _index(row),
        "answer": row.get("answer"),
        "j_end": pick["j_end"],
        "trimmed": pick["trimmed"],
    }


def sft_schema() -> Any:
    """Return the arrow schema of SFT rows (`mrt_star.schemas.SFT`)."""
    from mrt_star.schemas import SFT, arrow_schema

    return arrow_schema(SFT)


# --- statistics -------------------------------------------------------------------------------------


def _quantiles(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]  # noqa: E731
    return {"min": xs[0], "p25": at(0.25), "median": at(0.5), "p75": at(0.75), "max": xs[-1],
            "mean": statistics.fmean(xs)}


def rule_statistics(rows: list[dict[str, Any]], cfg: FilterConfig, grader: Any = None) -> dict[str, Any]:
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


def filter_summary(rows: list[dict[str, Any]], kept: list[tuple[dict, dict]], out_rows: list[dict[str, Any]],
                   cfg: FilterConfig, grader: Any = None) -> dict[str, Any]:
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
    return summary


# --- stage ------------------------------------------------------------------------------------------


def _target_count(cfg: FilterConfig) -> int | None:
    from mrt_star.store import read_manifest

    targets = []
    if cfg.match_count_of:
        targets.append(int(read_manifest(cfg.match_count_of).get("counts", {}).get("rows", 0)))
    if cfg.max_rows is not None:
        targets.append(cfg.max_rows)
    return min(targets) if targets else None


def run_filter(cfg: FilterConfig) -> Path:
    """Return the SFT folder holding the traces `cfg.rule` keeps from `cfg.input`."""
    from mrt_star.console import console, summary_table
    from mrt_star.store import Store, fingerprint, read_rows

    source = check_input(cfg)
    output = Path(cfg.output) if cfg.output else Path(f"{str(cfg.input).rstrip('/')}-sft-{cfg.rule}")
    fp = fingerprint({"input": fingerprint(cfg.input),
                      "match": fingerprint(cfg.match_count_of) if cfg.match_count_of else None})
    store = Store(output, "filter", config_to_dict(cfg), fp, cfg.overwrite)
    if store.complete:
        console.print(f"filter: {output} is already complete (pass --overwrite to redo it)")
        return output
    rows = read_rows(cfg.input)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    grader = None
    if cfg.trailing == "trim":
        from mrt_star.grading import Grader

        grader = Grader(**cfg.grader_kwargs())
    kept = select(rows, cfg, grader)
    target = _target_count(cfg)
    before = len(kept)
    if target is not None:
        kept = equalize(kept, target, cfg.seed)
    out_rows = [sft_row(r, p, cfg.rule, cfg.suffix_split) for r, p in kept]
    store.write_shard(0, out_rows, schema=sft_schema())
    summary = filter_summary(rows, kept, out_rows, cfg, grader)
    # The traces' model, for the dataset card (this stage's own `model` option is unused).
    summary["model"] = source.get("config", {}).get("resolved_model") or source.get("config", {}).get("model")
    if target is not None:
        summary.update({"target_rows": target, "rows_before_equalizing": before})
        if before < target:
            console.print(f"[yellow]filter: only {before} rows pass rule {cfg.rule!r}, fewer than the target {target}")
    if not out_rows:
        console.print(f"[yellow]filter: rule {cfg.rule!r} kept no rows from {cfg.input}; the SFT set is empty")
    if grader is not None:
        grader.close()
    path = store.finish(summary, counts={"input_traces": len(rows)})
    summary_table(f"filter ({cfg.rule}): {len(out_rows)} of {len(rows)} traces → {output}",
                  {k: v for k, v in summary.items() if not isinstance(v, dict)})
    return path
