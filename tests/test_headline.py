"""Tests that protect the headline numbers: what a round samples from, the metrics, the MRT rule, the prover's cost.

Every expected value below is worked out by hand in the comments. The multi-round run uses the real micro
toy model (slow); the rest runs on hand-made rows and a scripted prover engine (a table of forced answers:
a real model's answers cannot be chosen in advance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from mrt_star.engines.base import Completion
from mrt_star.eval.summary import compute_metrics
from mrt_star.filter import FilterConfig
from mrt_star.filter_rules import filter_summary, select
from mrt_star.formats.prompts import ANSWER_FORCE_TEXT, ATTEMPT_SEPARATOR
from mrt_star.grading.extract import last_boxed
from mrt_star.progress.metrics import progress
from mrt_star.progress.prover import ProverOptions, adaptive_answers, prover_queries, run_prover, wilson

# --- two rounds on the micro model ----------------------------------------------------------------------


@pytest.mark.slow
def test_round_two_samples_from_round_one_model_and_an_empty_filter_carries_the_model_over(micro_model, tmp_path,
                                                                                          one_torch_thread):
    from mrt_star.config import build_config
    from mrt_star.loop import RunConfig, run_loop
    from mrt_star.store import read_rows

    # Two rules from shared round-1 samples: star keeps the correct traces; mrt (episode level) needs J at the
    # cut above 1.0, which no J reaches, so it keeps nothing and round 2 must sample from the base model again.
    cfg = build_config(RunConfig, {
        "model": "toy-micro", "input": "toy", "limit": 16, "rounds": 2, "rules": ["star", "mrt"],
        "resample_problems": True, "output": str(tmp_path / "run"),
        "generate": {"format": "backtrack", "n": 8, "max_new_tokens": 120},
        "score": {"prover_k": 2, "prover_max_new_tokens": 8, "budgets": [64]},
        "filter": {"max_per_problem": 1, "min_j_end": 1.0},
        "finetune": {"learning_rate": 1.0e-3, "num_train_epochs": 1, "per_device_train_batch_size": 8,
                     "probe_examples": 2},
    }, source="test")
    run = run_loop(cfg)
    summary = json.loads((run / "run_summary.json").read_text())
    by = {(r["rule"], r["round"]): r for r in summary}
    base = str(micro_model)
    star1, mrt1 = by[("star", 1)], by[("mrt", 1)]
    assert star1["filter"]["kept_rows"] > 0, "the micro model solved none of the 16 problems: nothing to train on"
    assert star1["model_out"] == str(run / "star" / "round-1" / "model")
    # Round 2 of star sampled with round 1's fine-tuned model: every trace names that folder.
    star2_models = {r["model"] for r in read_rows(run / "star" / "round-2" / "traces")}
    assert star2_models == {star1["model_out"]}
    # The mrt filter kept nothing: no model was trained, and round 2 sampled from the base model.
    assert mrt1["filter"]["kept_rows"] == 0 and mrt1["model_out"] == mrt1["model_in"] == base
    assert not (run / "mrt" / "round-1" / "model").exists()
    assert {r["model"] for r in read_rows(run / "mrt" / "round-2" / "traces")} == {base}
    assert by[("mrt", 2)]["model_in"] == base
    # resample_problems: each round drew its own problem set.
    round1 = (run / "problems-round-1.jsonl").read_text().splitlines()
    round2 = (run / "problems-round-2.jsonl").read_text().splitlines()
    assert len(round1) == len(round2) == 16 and set(round1).isdisjoint(round2)
    assert {r["problem_id"] for r in read_rows(run / "star" / "round-2" / "traces")} == {
        json.loads(line)["problem_id"] for line in round2}


# --- eval metrics on hand-made samples ------------------------------------------------------------------


def _sample(item, index, correct, answer, tokens, j_tokens, j_values):
    return {"model": "m", "model_path": "m", "mode": "standard", "format": "backtrack", "item_id": item,
            "problem_id": item, "sample_index": index, "correct": correct, "final_answer": answer,
            "first_attempt_correct": correct, "num_tokens": tokens, "finish_reason": "stop",
            "j_tokens": j_tokens, "j_values": j_values, "forced_tokens": None, "forced_values": None}


def test_eval_metrics_by_hand():
    rows = [
        _sample("p1", 0, True, "7", 10, [10.0], [1.0]),                 # right at once
        _sample("p1", 1, False, "8", 30, [10.0, 30.0], [0.0, 0.0]),     # wrong twice
        _sample("p1", 2, False, "8", 30, [10.0, 30.0], [0.0, 0.0]),
        *[_sample("p2", i, True, "3", 20, [20.0], [1.0]) for i in range(3)],
    ]
    cfg = SimpleNamespace(budgets=[40], mode="standard", max_new_tokens=64, max_attempts=1, k_values=[1, 2],
                          maj_mode="expected", regret_axis="thinking")
    m = compute_metrics(rows, cfg)
    assert (m["problems"], m["samples"], m["n"]) == (2, 6, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["mean_tokens"] == pytest.approx(130 / 6)
    # pass@k (unbiased): p1 has 1 of 3 right: pass@1 = 1/3, pass@2 = 1 − C(2,2)/C(3,2) = 2/3; p2 always 1.
    assert m["pass@k"] == {"1": pytest.approx(2 / 3), "2": pytest.approx(5 / 6)}
    # maj@k (exact mean over k-subsets, ties split): p1 = [7✓, 8, 8]: maj@1 = 1/3; maj@2: {7,8} ties (1/2)
    # twice, {8,8} loses → 1/3; maj@3: 8 wins → 0. p2 is always right.
    assert m["maj@k"] == {"1": pytest.approx(2 / 3), "2": pytest.approx(2 / 3), "3": pytest.approx(0.5)}
    # Regret at 40 tokens, (0,0) prepended, last J held: right at 10 → area 5 + 30 = 35 → 1/8; never right →
    # 1; right at 20 → area 10 + 20 = 30 → 1/4.  Mean (1/8 + 1 + 1 + 3/4) / 6.
    assert m["regret"]["40"] == pytest.approx((0.125 + 2 + 0.75) / 6)


# --- episode-level MRT on hand-made scored rows -----------------------------------------------------------

PROMPT = [{"role": "user", "content": "[backtrack] 3+4"}]
RIGHT = "Line 1: 3+4=7\n\\boxed{7}\n"                               # 24 characters
CHECK = "Check Line 1: 3+4=7 ok\n\\boxed{7}"
SHORT = "Line 1: 3+4=7\n\\boxed{7}"                                  # 23 characters


def _scored(idx, episodes, j, answers=None):
    text = "".join(episodes)
    tokens = [0]
    for e in episodes:
        tokens.append(tokens[-1] + len(e))  # one token per character: the trace's rate is 1
    return {"problem_id": "p1", "sample_index": idx, "problem": "3+4", "answer": "7", "format": "backtrack",
            "prompt": PROMPT, "completion": text, "num_tokens": len(text), "correct": True,
            "episodes": [{"text": e, "num_tokens": len(e)} for e in episodes], "j_tokens": tokens,
            "j_values": j, "progress": progress(j), "cumulative_progress": j[-1] - j[0], "j_end": j[-1],
            "prover_answers": answers or [[] for _ in j]}


def _answer(text, correct, tokens):
    return {"text": text, "answer": last_boxed("\\boxed{" + text), "correct": correct, "num_tokens": tokens}


EPISODE_ROWS = [
    # A: right after its first attempt (J 1.0), then a check that adds nothing: cut after the attempt and
    # closed with the force text and the shortest correct forced answer there ("7}", not "7}\nLine 2").
    _scored(0, [RIGHT, CHECK], [0.25, 1.0, 1.0],
            [[], [_answer("7}\nLine 2: 7", True, 9), _answer("8}", False, 2), _answer("7}", True, 2)], []]),
    # C: the shortest correct trace, but J reaches only 0.75 at its end.
    _scored(1, [SHORT], [0.25, 0.75]),
    # D: reaches 1.0, then loses 0.5 for good: rejected (more than max_unrecovered_loss 0.25).
    _scored(2, [RIGHT, CHECK], [0.25, 1.0, 0.5]),
]


def test_episode_level_mrt_cuts_at_the_peak_and_ranks_by_area_by_hand():
    # The default cuts after J's last peak: A's check holds J at 1.0, so A stays whole (nothing to close).
    whole = select(EPISODE_ROWS, FilterConfig(rule="mrt", per_problem=3))
    assert [(r["sample_index"], p["text"], p["trimmed"]) for r, p in whole][0] == (0, RIGHT + CHECK, False)
    # With no cut at all, even without the rejection D ends at J 0.5, not above min_j_end 0.5: A and C, whole.
    uncut = select(EPISODE_ROWS, FilterConfig(rule="mrt", per_problem=3, cut_at="none", max_unrecovered_loss=None))
    assert [(r["sample_index"], p["trimmed"]) for r, p in uncut] == [(0, False), (1, False)]
    kept = select(EPISODE_ROWS, FilterConfig(rule="mrt", per_problem=3, cut_at="first-peak"))
    assert [r["sample_index"] for r, _ in kept] == [0, 1]
    a = kept[0][1]
    assert a["text"] == RIGHT + ANSWER_FORCE_TEXT + "7}"
    assert a["trimmed"] and a["episodes_kept"] == 1 and a["j_end"] == 1.0 and a["cumulative_progress"] == 0.75
    assert a["num_tokens"] == len(a["text"])
    assert kept[1][1]["text"] == SHORT and not kept[1][1]["trimmed"]
    # Ranking by area on the longest kept candidate's horizon (24 tokens), J(−1) = 0.25 from t = 0: A rises
    # to 1.0 at 24 → area 24·0.625 = 15; C to 0.75 at 23, then holds → 23·0.5 + 1·0.75 = 12.25. A wins.
    # Without the rejection D is a candidate too: cut like A, same curve; A wins the tie on sample index.
    loose = select(EPISODE_ROWS, FilterConfig(rule="mrt", per_problem=3, max_unrecovered_loss=None,
                                              tie_break="index", cut_at="first-peak"))
    assert [r["sample_index"] for r, _ in loose] == [0, 2, 1]
    # D has no prover samples (the likelihood estimator alone): its cut writes the reference answer.
    assert loose[1][1]["text"] == RIGHT + ANSWER_FORCE_TEXT + "7}"
    # The summary counts the contested share: p1's correct traces differ in length and the pick is not C.
    summary = filter_summary(EPISODE_ROWS, kept[:1], [{"num_tokens": 1, "cumulative_progress": 0.75,
                                                       "trimmed": True, "format": "backtrack", "problem_id": "p1"}],
                             FilterConfig(rule="mrt"))
    assert summary["mrt_pick_equals_shortest"] == 0.0 and summary["mrt_pick_equals_shortest_contested"] == 0.0
    # The trace level (the first implementation) keeps D whole: cumulative progress 0.25 but J_end 0.5 ≤ 0.5.
    trace = select(EPISODE_ROWS, FilterConfig(rule="mrt", mrt_level="trace", per_problem=3))
    assert [(r["sample_index"], p["text"]) for r, p in trace] == [(0, RIGHT + CHECK), (1, SHORT)]


def test_episode_level_keeps_the_whole_trace_when_no_forced_answer_closes_the_cut():
    wrong_only = [[], [_answer("8}", False, 2)], []]
    row = _scored(0, [RIGHT, CHECK], [0.25, 1.0, 1.0], wrong_only)
    (kept, pick), = select([row], FilterConfig(rule="mrt"))
    assert pick["text"] == RIGHT + CHECK and not pick["trimmed"] and pick["episodes_kept"] == 2


# --- the adaptive estimator on a scripted prover ----------------------------------------------------------


@dataclass
class Grade:
    correct: bool
    extracted: str | None


class ExactGrader:
    """Grades by exact match of the last \\boxed{} content (as tests/test_progress.py's)."""

    def grade_many(self, pairs):
        return [Grade(last_boxed(t) == ref, last_boxed(t)) for t, ref in pairs]


class BatchedScriptedEngine:
    """Serves each forced prefix's scripted answers in order, n per call; records the calls' sizes and seeds."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers, self.served, self.calls = answers, {}, []

    def generate(self, requests, params):
        self.calls.append((len(requests), params.n, params.seed))
        out = []
        for r in requests:
            key = next(k for k in sorted(self.answers, key=len, reverse=True) if r.messages[-1]["content"].endswith(k))
            start = self.served.get(key, 0)
            texts = self.answers[key][start:start + params.n]
            assert len(texts) == params.n, "asked past the script: more than K answers"
            self.served[key] = start + params.n
            out.append([Completion(t, 10, len(t), "stop") for t in texts])
        return out


TRACE = "42*2=86\n\\boxed{86}" + ATTEMPT_SEPARATOR + "42*2=84\n\\boxed{84}"
SCRIPT = {
    ANSWER_FORCE_TEXT: ["80}"] * 8,                                     # clearly 0: settled after 2
    "\\boxed{86}" + ANSWER_FORCE_TEXT: ["84}", "86}", "84}", "84}"] + ["84}"] * 4,  # 1/2, then 3/4: apart from 0
    "\\boxed{84}" + ANSWER_FORCE_TEXT: ["84}", "86}"] * 4,              # 1/2 all the way: unclear, goes to K
}


def test_adaptive_stops_early_when_the_sign_is_clear_and_goes_to_k_when_not():
    queries = prover_queries(PROMPT, ["42*2=86\n\\boxed{86}", ATTEMPT_SEPARATOR + "42*2=84\n\\boxed{84}"],
                             "linearized", "84")
    engine = BatchedScriptedEngine(SCRIPT)
    results = run_prover(engine, ExactGrader(), queries, ProverOptions(k=8, estimators=("adaptive",), seed=5))
    # Wilson at z=1: 0 of 2 → [0, 1/3], half-width 1/6 ≤ 0.5/√8: settled. 1 of 2 → [0.21, 0.79]: not.
    # 3 of 4 → [0.5, 0.9]: apart from the previous prefix's [0, 1/3], the sign is clear: stop at 4.
    # 1 of 2, 2 of 4, 3 of 6, 4 of 8 never leave the previous [0.5, 0.9] nor get within ±0.177: K = 8.
    assert [len(r.answers) for r in results] == [2, 4, 8]
    assert [r.j_sample for r in results] == [0.0, 0.75, 0.5]
    # Rounds of 2 answers, seeded seed + round: 3 prefixes, then 2, then 1 twice.
    assert engine.calls == [(3, 2, 5), (2, 2, 6), (1, 2, 7), (1, 2, 8)]
    assert wilson(0, 2, 1.0) == (0.0, pytest.approx(1 / 3))
    # Without the previous prefix to compare with, the middle prefix needs more answers (sign not usable).
    alone = adaptive_answers(BatchedScriptedEngine(SCRIPT), ExactGrader(), queries[1:2], ProverOptions(k=8))
    assert len(alone[0].answers) == 6  # 5 of 6: [0.67, 0.98], half-width 0.149 ≤ 0.177
