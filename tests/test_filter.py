"""Filter rules on hand-made scored rows with known picks, and the SFT output format."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mrt_star.errors import UserError
from mrt_star.filter import FilterConfig, run_filter
from mrt_star.filter_rules import equalize, mrt_candidate, pick_equals_shortest, select
from mrt_star.grading.extract import last_boxed
from mrt_star.progress.metrics import progress
from mrt_star.store import Store

PROMPT = [{"role": "user", "content": "[backtrack] 3+4"}]


def _row(pid, idx, episodes, j, correct, answer="7", fmt="backtrack"):
    text = "".join(episodes)
    tokens = [0]
    for e in episodes:
        tokens.append(tokens[-1] + len(e))
    return {"problem_id": pid, "sample_index": idx, "problem": "3+4", "answer": answer, "format": fmt,
            "prompt": PROMPT, "completion": text, "num_tokens": len(text), "correct": correct,
            "episodes": [{"text": e, "num_tokens": len(e)} for e in episodes], "j_tokens": tokens,
            "j_values": j, "progress": progress(j), "cumulative_progress": j[-1] - j[0], "j_end": j[-1],
            "forced_final_correct": j[-1] > 0.5}


E0 = "Line 1: 3+4=8\nCheck Line 1: 3+4=7 wrong\n"
E1 = "Backtrack to Line 1\nLine 1: 3+4=7\n\\boxed{7}\n"
E2 = "Backtrack to beginning\nLine 1: 3+4=7\nCheck Line 1: 3+4=7 ok\n\\boxed{7}"

ROWS = [
    _row("p1", 0, [E0, E1], [0.25, 0.5, 1.0], True),                      # t0: cp .75, 2 episodes
    _row("p1", 1, ["Line 1: 3+4=7\n\\boxed{7}"], [0.25, 1.0], True),      # t1: cp .75, shortest
    _row("p1", 2, ["Line 1: 3+4=8\n\\boxed{8}"], [0.25, 0.0], False),     # t2: wrong
    _row("p1", 3, [E0, E1, E2], [0.25, 0.5, 0.75, 0.625], True),          # t3: ends losing ground
    _row("p2", 0, ["\\boxed{7}"], [0.0, 0.375], True),                    # u0: right, but not after forcing
    _row("p2", 1, [E0, E1], [0.0, 0.5, 1.0], True),                       # u1: cp 1.0
    _row("p2", 2, [E0, E1], [0.0, 0.5, 1.0], False),                      # u2: own answer wrong
    _row("p3", 0, ["\\boxed{9}"], [0.0, 0.0], False),                     # p3: nothing correct
]


def picks(cfg, grader=None):
    return [(r["problem_id"], r["sample_index"]) for r, _ in select(ROWS, cfg, grader)]


@dataclass
class Grade:
    correct: bool
    extracted: str | None


class ExactGrader:
    def grade_many(self, pairs):
        return [Grade(last_boxed(t) == ref, last_boxed(t)) for t, ref in pairs]


def test_star_and_shortest():
    assert picks(FilterConfig(rule="star")) == [("p1", 0), ("p1", 1), ("p1", 3), ("p2", 0), ("p2", 1)]
    assert picks(FilterConfig(rule="shortest")) == [("p1", 1), ("p2", 0)]
    assert picks(FilterConfig(rule="star", max_per_problem=1)) == [("p1", 0), ("p2", 0)]


TRACE = dict(rule="mrt", mrt_level="trace")  # the first, trace-level implementation


def test_mrt_trace_level_most_progress_correct_after_forcing():
    cfg = FilterConfig(**TRACE)
    assert picks(cfg) == [("p1", 1), ("p2", 1)]  # tie on p1 broken by fewer tokens
    assert picks(FilterConfig(**TRACE, tie_break="index")) == [("p1", 0), ("p2", 1)]
    assert picks(FilterConfig(**TRACE, per_problem=3)) == [("p1", 1), ("p1", 0), ("p1", 3), ("p2", 1)]
    assert picks(FilterConfig(**TRACE, per_problem=3, require_correct=False)) == [
        ("p1", 1), ("p1", 0), ("p1", 3), ("p2", 1), ("p2", 2)]
    assert picks(FilterConfig(**TRACE, per_problem=3, min_j_end=0.3))[-1] == ("p2", 0)
    # p1's pick is its shortest correct trace, p2's is not.
    assert pick_equals_shortest(ROWS, select(ROWS, cfg)) == 0.5
    # A problem with a single correct trace agrees with "shortest" under any rule: counted only in the plain share.
    single = [*ROWS, _row("p4", 0, ["Line 1: 3+4=7\n\\boxed{7}"], [0.0, 1.0], True)]
    assert pick_equals_shortest(single, select(single, cfg)) == 2 / 3
    assert pick_equals_shortest(single, select(single, cfg), contested_only=True) == 0.5


def test_mrt_trace_level_can_rank_by_regret_instead_of_cumulative_progress():
    early = _row("p5", 0, ["Line 1: 3+4=7\n", "Check Line 1: 3+4=7 ok\n\\boxed{7}"], [0.0, 1.0, 1.0], True)
    late = _row("p5", 1, ["Line 1: 3+4=7\n\\boxed{7}"], [0.0, 1.0], True)
    # Equal cumulative progress: "progress" falls back to fewer tokens; "regret" sees `early` reach J=1 sooner.
    for row, area in ((early, 14 / 2 + (36 - 14) * 1.0), (late, 24 / 2 + (36 - 24) * 1.0)):
        row["regret"] = [{"budget": 36.0, "value": 1 - area / 36}]
    rows = [late, early]
    assert [r["sample_index"] for r, _ in select(rows, FilterConfig(**TRACE, min_j_end=0.5))] == [1]
    by_regret = FilterConfig(**TRACE, min_j_end=0.5, rank_by="regret")
    assert [r["sample_index"] for r, _ in select(rows, by_regret)] == [0]
    with pytest.raises(UserError, match="regret_budget: 50 was not scored"):
        select(rows, FilterConfig(**TRACE, rank_by="regret", regret_budget=50))
    # The episode level ranks by the area under J itself (no scored regret needed): `early` too.
    assert [r["sample_index"] for r, _ in select(rows, FilterConfig(rule="mrt", max_unrecovered_loss=None))] == [0]


def test_mrt_trace_level_progress_requirements_and_trailing_episodes():
    many = dict(**TRACE, per_problem=3)
    assert ("p1", 3) not in picks(FilterConfig(**many, min_progress=0.0))
    assert ("p1", 3) not in picks(FilterConfig(**many, min_cumulative_progress=0.5))
    assert ("p1", 3) not in picks(FilterConfig(**many, trailing="drop"))
    # Trim: the wasted last check (progress -0.125) is cut; the trace now ends at E1's correct box.
    trimmed = mrt_candidate(ROWS[3], FilterConfig(**many, trailing="trim"), ExactGrader())
    assert trimmed["text"] == E0 + E1 and trimmed["trimmed"] and trimmed["episodes_kept"] == 2
    assert trimmed["cumulative_progress"] == 0.5 and trimmed["j_end"] == 0.75
    assert trimmed["num_tokens"] == len(E0 + E1)
    # A trimmed step-wise trace must end in a correct box; without a grader it is not kept.
    assert mrt_candidate(ROWS[3], FilterConfig(**many, trailing="trim")) is None


def test_trim_open_trace_keeps_its_answer_tail():
    eps = ["<think>\nA.\n\nB.\n\nSo \\boxed{7}.\n\n", "Wait, C.\n\nD.\n\nSo \\boxed{7}.\n</think>\n\n\\boxed{7}"]
    row = _row("p9", 0, eps, [0.5, 1.0, 0.75], True, fmt="open")
    cut = mrt_candidate(row, FilterConfig(**TRACE, trailing="trim"))
    assert cut["text"] == "<think>\nA.\n\nB.\n\nSo \\boxed{7}.\n</think>\n\n\\boxed{7}"
    assert cut["j_end"] == 1.0


def test_equalize_covers_problems_round_robin():
    kept = select(ROWS, FilterConfig(rule="star"))
    two = equalize(kept, 2, seed=0)
    assert sorted(r["problem_id"] for r, _ in two) == ["p1", "p2"]
    assert equalize(kept, 10, seed=0) == kept


def _scored_folder(path, rows, stage="score"):
    store = Store(path, stage, {"model": "toy"}, "fp")
    store.write_shard(0, rows)
    store.finish({})
    return str(path)


def test_run_filter_writes_a_trl_ready_dataset(tmp_path):
    from datasets import load_dataset

    src = _scored_folder(tmp_path / "scored", ROWS)
    out = run_filter(FilterConfig(input=src, output=str(tmp_path / "mrt"), rule="mrt", per_problem=2))
    ds = load_dataset("parquet", data_files=str(out / "shard-*.parquet"), split="train")
    assert ds.num_rows == 3
    row = ds[0]
    assert row["prompt"] == PROMPT and row["completion"] == [{"role": "assistant", "content": ROWS[1]["completion"]}]
    assert row["messages"] == PROMPT + row["completion"] and row["rule"] == "mrt"
    assert set(ds.column_names) >= {"problem_id", "prompt", "completion", "messages", "prefix", "suffix", "rule",
                                    "cumulative_progress", "num_tokens"}
    # A backtracking trace with a revision: the first attempt is the prefix, the revision the suffix.
    two_ep = next(r for r in ds if r["sample_index"] == 0 and r["problem_id"] == "p1")
    assert (two_ep["prefix"], two_ep["suffix"]) == (E0, E1)

    import json

    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["kept_rows"] == 3 and summary["mrt_pick_equals_shortest"] == 0.5
    assert summary["per_rule"]["star"]["rows"] == 5 and summary["per_rule"]["shortest"]["rows"] == 2

    # Equal SFT sizes: STaR cut to MRT's row count, problems round-robin.
    star = run_filter(FilterConfig(input=src, output=str(tmp_path / "star"), rule="star", match_count_of=str(out)))
    star_ds = load_dataset("parquet", data_files=str(star / "shard-*.parquet"), split="train")
    assert star_ds.num_rows == 3 and set(star_ds["problem_id"]) == {"p1", "p2"}
    assert set(star_ds["rule"]) == {"star"}


def test_filter_input_checks(tmp_path):
    gen = _scored_folder(tmp_path / "gen", [{k: v for k, v in r.items() if k in (
        "problem_id", "prompt", "completion", "correct", "num_tokens", "format", "sample_index", "answer")}
        for r in ROWS], stage="generate")
    with pytest.raises(UserError, match="reads the output of `mrt-star score`"):
        run_filter(FilterConfig(input=gen, output=str(tmp_path / "x"), rule="mrt"))
    assert not (tmp_path / "x").exists()  # nothing created before the input is validated
    out = run_filter(FilterConfig(input=gen, output=str(tmp_path / "y"), rule="shortest"))
    assert (out / "shard-00000.parquet").exists()
    with pytest.raises(UserError, match="input"):
        run_filter(FilterConfig(input=None, rule="star"))
    unfinished = Store(tmp_path / "half", "score", {}, "fp")
    unfinished.write_shard(0, ROWS)
    with pytest.raises(UserError, match="unfinished|still being written"):
        run_filter(FilterConfig(input=str(tmp_path / "half"), output=str(tmp_path / "z")))


def test_shortest_dominates_when_its_j_curve_is_never_below_another_correct_trace():
    from mrt_star.filter_rules import shortest_dominates

    groups = {pid: [r for r in ROWS if r["problem_id"] == pid] for pid in ("p1", "p2")}
    # p1: t1 (25 tokens, J 0.25 then 1.0 from token 25) against t0 (J 0.5 from token 38: t1 is already at 1.0 by
    # then) and t3 (0.5, 0.75, 0.625 later on): never above t1, so t1 dominates.
    assert shortest_dominates(groups["p1"])
    # p2: the guess u0 (9 tokens) stays at J 0.375, while u1 reaches 1.0: the shortest does not dominate.
    assert not shortest_dominates(groups["p2"])
    # A trace that is longer but rises sooner: J 1.0 from token 5 beats a 10-token trace at 0.0 until its end.
    early = _row("p6", 0, ["Line\n", "1: 3+4=7\n\\boxed{7}\n\n\n\n"], [0.0, 1.0, 1.0], True)
    late = _row("p6", 1, ["Line 1: \\boxed{7}"], [0.0, 1.0], True)
    assert late["num_tokens"] < early["num_tokens"] and not shortest_dominates([early, late])
    summary_rows = ROWS + [early, late]
    from mrt_star.filter_rules import filter_summary

    summary = filter_summary(summary_rows, select(summary_rows, FilterConfig(rule="mrt")), [], FilterConfig(rule="mrt"))
    assert summary["contested_problems"] == 3 and summary["shortest_dominates_contested"] == pytest.approx(1 / 3)


def test_episode_level_ranks_on_the_scored_budget_so_the_j_a_trace_ends_with_counts():
    # A guess (10 tokens, J 0 → 0.5) against worked lines (24, 48, 74 tokens; J 0, 0.5, 1.0), J(−1) = 0 at t = 0.
    guess = _row("p7", 0, ["Guess: \\boxed{7}"[:10]], [0.0, 0.5], True)
    work = _row("p7", 1, ["Line 1: 3+4=7".ljust(23) + "\n", "Line 2: 7+0=7".ljust(23) + "\n",
                          "Line 3: 7+0=7\n\\boxed{7}".ljust(26)], [0.0, 0.0, 0.5, 1.0], True)
    assert guess["num_tokens"] == 10 and work["j_tokens"] == [0, 24, 48, 74]
    cfg = FilterConfig(rule="mrt", min_j_end=0.25)
    # Horizon = the longest candidate (74, nothing scored): guess area 10·0.25 + 64·0.5 = 34.5 (regret 0.534);
    # work 24·0.25 + 26·0.75 = 25.5 (regret 0.655): the guess wins, work's final J = 1 weighs nothing.
    assert [r["sample_index"] for r, _ in select([guess, work], cfg)] == [0]
    # Scored at budgets up to 300: guess 2.5 + 290·0.5 = 147.5 (regret 0.508); work 25.5 + 226·1.0 = 251.5 (0.162).
    scored = [{**r, "regret": [{"budget": 100.0, "value": 0.0}, {"budget": 300.0, "value": 0.0}]} for r in (guess, work)]
    assert [r["sample_index"] for r, _ in select(scored, cfg)] == [1]
    # An explicit budget still wins over both.
    assert [r["sample_index"] for r, _ in select(scored, FilterConfig(rule="mrt", min_j_end=0.25, regret_budget=74))] == [0]
