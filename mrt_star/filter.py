"""`mrt-star filter`: keep traces by rule and write them as an SFT dataset (TRL prompt/completion format).

Rules (all group traces by problem):
- `star`: every trace whose own final answer is correct (the outcome-only STaR baseline).
- `shortest`: the shortest correct trace of each problem (a control: "most progress" must beat it).
- `mrt`, `mrt_level: episode` (default): correct traces cut at their best prefix (J's last peak) and closed with
  the force text and a correct forced answer, traces that lose more than `max_unrecovered_loss` of J for
  good rejected, a problem's candidates ranked by the area under their kept J curve (lowest regret).
- `mrt`, `mrt_level: trace`: whole traces correct after forced termination at the end (J_end above
  `min_j_end`), ranked by cumulative progress — which telescopes to J_end − J_start, so among correct
  traces it mostly falls to its tie-break (fewer tokens) — or by scored regret (`rank_by: regret`); what to
  do with trailing episodes of negative progress (keep, drop the trace, trim them off).
  Both levels: the best `per_problem` are kept; optional minimum per-episode and cumulative progress.

To compare rules at equal SFT sizes, `match_count_of` (another SFT output) or `max_rows` cuts the kept
rows to a target count, taking problems round-robin (every problem's best row before any second one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.config import check_config, config_to_dict, option
from mrt_star.errors import UserError
from mrt_star.filter_rules import (
    CUT_AT,
    MRT_LEVELS,
    RANK_BY,
    RULES,
    TIE_BREAKS,
    TRAILING,
    equalize,
    filter_summary,
    sample_index,
    select,
)
from mrt_star.formats.episodes import split_episodes
from mrt_star.options import GradingOptions, StageIO

SUFFIX_SPLITS = ("first-episode", "none")


@dataclass
class FilterConfig(StageIO, GradingOptions):
    """Options of `mrt-star filter`."""

    rule: str = option("mrt", "which traces to keep: mrt (most progress), star (every correct trace), shortest "
                       "(shortest correct trace per problem)", choices=RULES)
    mrt_level: str = option("episode", "mrt: episode (cut each trace at its best prefix, close it with a forced "
                            "answer, rank by area under J; DESIGN.md §1) or trace (whole traces ranked by cumulative "
                            "progress, the first implementation)", choices=MRT_LEVELS)
    per_problem: int = option(1, "mrt: traces kept per problem, best first", at_least=1)
    min_j_end: float = option(0.5, "mrt: keep traces whose J after the whole trace (episode level: at the cut) "
                              "exceeds this (correct after forced termination; parity 0.5)")
    cut_at: str = option("last-peak", "mrt episode level: cut a trace after the last episode at J's peak (episodes "
                         "that only hold J stay) or the first (a tail that adds nothing is replaced by the force text "
                         "and a forced answer; on the toy world that taught the model to write the force text into "
                         "its lines) or none (whole traces, ranked by area under J)", choices=CUT_AT)
    max_unrecovered_loss: float | None = option(0.25, "mrt episode level: reject a trace that loses more than this "
                                                "much J after some prefix and never wins it back (ours: above one "
                                                "K=4 sampling step; 0: any unrecovered loss; none: off)", at_least=0)
    require_correct: bool = option(True, "mrt: the trace's own final answer must be correct too")
    min_progress: float | None = option(None, "mrt: drop traces with an episode whose progress is below this "
                                        "(e.g. 0: never lose ground); none: no per-episode requirement")
    min_cumulative_progress: float | None = option(None, "mrt: drop traces whose cumulative progress is below this")
    trailing: str = option("keep", "mrt trace level: trailing episodes with negative progress: keep them, drop the trace, or "
                           "trim them off (the trimmed trace must still end correct)", choices=TRAILING)
    rank_by: str = option("auto", "mrt: order a problem's candidates by most cumulative progress (J end − J "
                          "start) or by lowest regret at `regret_budget` (J high early on the token axis); auto: "
                          "regret at episode level, progress at trace level", choices=RANK_BY)
    regret_budget: int | None = option(None, "mrt, ranking by regret: the budget to rank at (trace level: a scored "
                                       "one); none: the largest budget scored (episode level: or the problem's "
                                       "longest kept candidate, if longer)", at_least=1)
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
        "sample_index": sample_index(row),
        "answer": row.get("answer"),
        "j_end": pick["j_end"],
        "trimmed": pick["trimmed"],
    }


def sft_schema() -> Any:
    """Return the arrow schema of SFT rows (`mrt_star.schemas.SFT`)."""
    from mrt_star.schemas import SFT, arrow_schema

    return arrow_schema(SFT)


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
    if not store.is_done(0):  # a resumed run never rewrites a finished shard
        store.write_shard(0, out_rows, schema=sft_schema())
    summary = filter_summary(rows, kept, out_rows, cfg, grader)
    # The traces' model, for the dataset card.
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
