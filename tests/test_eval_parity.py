"""Parity with the paper's analyses, on hand-computed cases: regret axes and steps, "\\n\\n" segmentation,
history variants graded on the continuation, "Wait" extrapolation, the episode-axis comparator, the prompt."""

from __future__ import annotations

import json
import random

import pytest

from mrt_star.eval.history import history_given
from mrt_star.eval.metrics import curve_at, episode_comparator, episode_regret_curve
from mrt_star.formats.episodes import EpisodeOptions, split_episodes
from mrt_star.formats.prompts import user_prompt
from mrt_star.progress.metrics import trace_metrics
from mrt_star.progress.regret import area_under, normalized_regret, token_axis

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- 1. regret: steps at repeated positions, the parity token axis -------------------------------------


def test_repeated_positions_are_steps_not_ramps():
    # (0,0)→(10,0)→(10,1)→(20,1): J jumps at 10, so the area to 20 is 10 (a ramp to the second value
    # at 10 would give 5 + 10 = 15).
    assert area_under([10, 10, 20], [0, 1, 1], 20) == pytest.approx(10.0)
    # Three prefixes at one count: only the last value carries on.
    assert area_under([10, 10, 10], [1, 0, 0.5], 30) == pytest.approx(5 + 20 * 0.5)


def test_jump_at_position_zero_counts_from_the_first_token():
    # J(−1) = 0.5 at t=0: (0,0)→(0,0.5)→(10,1), held to 20: 7.5 + 10 = 17.5.
    assert area_under([0, 10], [0.5, 1.0], 20) == pytest.approx(17.5)
    assert normalized_regret([0, 10], [0.5, 1.0], 20) == pytest.approx(1 - 17.5 / 20)
    # The eval curve reads the same steps.
    assert curve_at([0, 10], [0.5, 1.0], 0) == 0.5 and curve_at([10, 10], [0, 1], 10) == 1.0


def test_trace_ending_before_and_after_the_budget():
    # Ends at 8 < C=12: (0,0)→(4,0.5)→(8,1): 1 + 3 = 4, held 4·1 → 8 of 12.
    assert area_under([4, 8], [0.5, 1.0], 12) == pytest.approx(8.0)
    # Ends at 8 > C=6: 1 + (0.5+0.75)/2·2 = 2.25 of 6.
    assert area_under([4, 8], [0.5, 1.0], 6) == pytest.approx(2.25)


def test_parity_axis_counts_prompt_stop_text_and_mean_answer_tokens():
    assert token_axis([0, 10], "parity", prompt_tokens=5, stop_tokens=3, answer_tokens=[2, 4]) == [10.0, 22.0]
    assert token_axis([0, 10], "thinking", prompt_tokens=5) == [0.0, 10.0]
    # A scored trace: J = 0 → 1 over one 10-token episode; parity points (10, 0) and (22, 1).
    thinking = trace_metrics([0.0, 1.0], [10], [20], axis="thinking")["regret"][0]["value"]
    parity = trace_metrics([0.0, 1.0], [10], [40], axis="parity", prompt_tokens=5, stop_tokens=3,
                           answer_tokens=[2, 4])["regret"][0]["value"]
    assert thinking == pytest.approx(1 - (5 + 10) / 20)  # (0,0)→(10,1) then 10·1
    assert parity == pytest.approx(1 - (6 + 18) / 40)  # 0 to 10, ramp 10→22 (area 6), held 18
    assert trace_metrics([0.0, 1.0], [10], [20], axis="parity", prompt_tokens=5)["j_tokens"] == [0, 10]
    with pytest.raises(ValueError, match="regret axis"):
        token_axis([1], "words")


# --- 2. segmentation equal to "\n\n".split -----------------------------------------------------------


def _reference_open(trace: str, o: EpisodeOptions, markers=("Wait", "But wait", "Alternatively")) -> list[str]:
    """The reference's reading: paragraphs = thinking.split("\\n\\n"), a marker paragraph opens an episode."""
    end = trace.find("</think>")
    paragraphs = (trace if end < 0 else trace[:end]).split("\n\n")
    episodes, current = [], []
    for p in paragraphs:
        if p.startswith(markers) and len(current) >= o.min_paragraphs and len(episodes) < o.max_splits:
            episodes.append(current)
            current = []
        current.append(p)
    episodes.append(current)
    merged = [sum(episodes[i : i + o.group_size], []) for i in range(0, len(episodes), o.group_size)]
    return ["\n\n".join(e) for e in merged]


PARITY_CASES = [
    "a\n\n\nWait b\n\nc\n\nWait d",  # a run of three newlines: "\nWait b" opens with no marker
    "a\n\n\n\nb\n\nWait c",  # an empty paragraph counts toward min_paragraphs
    " Wait a\n\nb\n\nc\n\n Wait d\n\nWait e",  # leading whitespace: no marker
    "Wait a\n\nb\n\nWait c\n\nd\n\ne\n\nWait f</think>\n\n\\boxed{1}",  # marker at the first paragraph
    "x\n\ny\n\nWait 1\n\nWait 2\n\nWait 3\n\nWait 4\n\nWait 5",  # more markers than max splits
]


@pytest.mark.parametrize("trace", PARITY_CASES)
@pytest.mark.parametrize("opts", [dict(min_paragraphs=1, max_splits=2), dict(min_paragraphs=2),
                                  dict(min_paragraphs=1, group_size=2)])
def test_parity_segmentation_equals_splitting_on_blank_lines(trace, opts):
    o = EpisodeOptions(paragraph_parity=True, **opts)
    pieces = split_episodes(trace, "open", o)
    assert "".join(pieces) == trace
    thinking = [p.removesuffix("\n\n") for p in pieces]
    end = trace.find("</think>")
    if end >= 0:  # the answer after </think> rides with the last episode
        thinking[-1] = pieces[-1][: len(pieces[-1]) - (len(trace) - end)]
    assert thinking == _reference_open(trace, o)


def test_parity_differs_from_the_default_on_newline_runs():
    trace = "a\n\nb\n\n\nWait c"
    assert split_episodes(trace, "open", EpisodeOptions(min_paragraphs=2)) == ["a\n\nb\n\n\n", "Wait c"]
    assert split_episodes(trace, "open", EpisodeOptions(min_paragraphs=2, paragraph_parity=True)) == [trace]
    # Hand count: "a\n\n\n\nb\n\nWait c" has paragraphs a, "", b, Wait c: with min 3 the marker splits.
    assert split_episodes("a\n\n\n\nb\n\nWait c", "open", EpisodeOptions(paragraph_parity=True)) == \
        ["a\n\n\n\nb\n\n", "Wait c"]


# --- 6. prompt ---------------------------------------------------------------------------------------


def test_open_parity_prompt_is_the_problem_alone():
    assert user_prompt("What is 2+2?", "open-parity") == "What is 2+2?"
    assert "step by step" in user_prompt("What is 2+2?", "open")


# --- 5. episode-axis comparator ----------------------------------------------------------------------


def test_episode_comparator_is_the_better_of_voting_and_the_next_episode():
    j = [0.2, 0.5, 0.6]
    maj = [0.4, 0.45, 0.7]
    # j=0: max(0.4, 0.5); j=1: max(0.45, 0.6); j=2: max(0.7, 0.6 held)
    assert episode_comparator(j, maj) == pytest.approx([0.5, 0.6, 0.7])
    # cumulative: 0.3, (0.3+0.1)/2, (0.3+0.1+0.1)/3
    assert episode_regret_curve(j, [0.5, 0.6, 0.7]) == pytest.approx([0.3, 0.2, 0.5 / 3])
    assert episode_comparator([1.0], [0.25]) == [1.0]  # maj shorter than the curve: its last value held


# --- 3. history variants -----------------------------------------------------------------------------

BT = ["Line 1: 1+2=3\nLine 2: 3*4=13\nCheck Line 2: 3*4=12 wrong\n", "Backtrack to Line 2\nLine 2: 3*4=12\n\\boxed{12}"]


def test_history_variants_of_a_backtrack_trace():
    e0 = BT[0]
    assert history_given(BT, "backtrack", "restart") == e0 + "Backtrack to beginning\n"
    assert history_given(BT, "backtrack", "backtrack-unshared") == e0 + "Backtrack to Line 2\n"
    assert history_given(BT, "backtrack", "backtrack-shared") == e0 + "Backtrack to Line 2\nLine 1: 1+2=3\n"
    assert history_given(BT, "backtrack", "no-rollout") == "Line 1: 1+2=3\n"


def test_history_variants_of_an_open_trace():
    ep = ["<think>\nx=1.\n\ny=2.\n\nSo \\boxed{3}.\n\n", "Wait, y=3.\n\nSo \\boxed{4}.\n</think>"]
    assert history_given(ep, "open", "backtrack-unshared") == ep[0] + "Wait, y=3.\n\n"
    assert history_given(ep, "open", "backtrack-shared") == ep[0] + "Wait, y=3.\n\nx=1.\n\ny=2.\n\n"
    assert history_given(ep, "open", "no-rollout") == "<think>\nx=1.\n\ny=2.\n\n"
    assert history_given(ep, "open", "restart").startswith(ep[0] + "Wait")


def _traces_folder(folder):
    from mrt_star.store import Store
    from mrt_star.toy.problems import generate_problems
    from mrt_star.toy.traces import make_trace, trace_messages

    rng, rows = random.Random(3), []
    for p in generate_problems(2, seed=7):
        trace = make_trace(p["problem"], "backtrack", rng)
        prompt, text = trace_messages(trace)
        rows.append({**p, "format": "backtrack", "sample_index": 0, "prompt": prompt, "completion": text,
                     "episodes": [{"text": e, "num_tokens": len(e)} for e in trace.episodes]})
    store = Store(folder, "generate", {"n": 2}, "test")
    store.write_shard(0, rows)
    return store.finish()


class _Grader:
    """The real grader, graded pairs recorded (to check what text was graded)."""

    def __init__(self, real):
        self.real, self.seen = real, []

    def grade_many(self, pairs):
        self.seen += list(pairs)
        return self.real.grade_many(pairs)


def test_history_grades_the_continuation_only(micro_model):
    """A continuation without an answer is wrong even when the given prefix holds a correct one."""
    from mrt_star.config import build_config
    from mrt_star.engines import load_engine
    from mrt_star.eval.sampling import grade_samples
    from mrt_star.eval.stage import EvalConfig
    from mrt_star.grading import Grader

    item = {"item_id": "p@restart", "problem_id": "p", "problem": "1+2*4", "answer": "12",
            "prompt": [{"role": "user", "content": "[backtrack] 3*4"}], "given": "Line 1: 3*4=12\n\\boxed{12}\n",
            "given_tokens": None, "format": "backtrack", "history_variant": "restart"}
    raw = [{"item": item, "sample_index": 0, "completion": item["given"] + "Line 2: so", "attempts": None,
            "generated_tokens": 10, "finish_reason": "stop"}]
    engine = load_engine("transformers", str(micro_model), device="cpu")
    try:
        with Grader() as real:
            for flag, expect in ((False, False), (True, True)):
                cfg = build_config(EvalConfig, {"mode": "history", "grade_given_too": flag})
                grader = _Grader(real)
                (row,) = grade_samples(engine, grader, cfg, raw, "m", str(micro_model))
                assert row["correct"] is expect and row["history_variant"] == "restart"
                assert row["first_attempt_correct"] is True  # the given prefix's own answer
                assert row["j_values"] == ([1.0, 0.0] if not flag else [1.0, 1.0])
                assert row["prompt_tokens"] > 0
                if not flag:
                    assert ("Line 2: so", "12") in grader.seen
    finally:
        engine.close()


def test_history_eval_runs_every_variant_and_reports_them(tmp_path, micro_model):
    from mrt_star.config import build_config
    from mrt_star.eval.stage import EvalConfig, run_eval
    from mrt_star.store import read_rows

    variants = ["restart", "backtrack-shared", "backtrack-unshared", "no-rollout"]
    traces = _traces_folder(tmp_path / "traces")
    out = run_eval(build_config(EvalConfig, dict(models=[str(micro_model)], mode="history", input=str(traces), n=1,
                                                 k_values=[1], max_new_tokens=48, history_variants=variants,
                                                 plots=False, output=str(tmp_path / "hist"))))
    rows = read_rows(out)
    assert len(rows) == 2 * 4 and {r["history_variant"] for r in rows} == set(variants)
    m = json.loads((out / "metrics.json").read_text())["models"]
    (metrics,) = m.values()
    assert set(metrics["by_history_variant"]) == set(variants)
    assert all(v["samples"] == 2 for v in metrics["by_history_variant"].values())


# --- 4. extrapolation --------------------------------------------------------------------------------


def test_extrapolation_extends_with_wait_and_reports_each_budget(tmp_path, micro_model):
    from mrt_star.config import build_config
    from mrt_star.eval.extrapolate import extrapolation_budgets, thinking_of
    from mrt_star.eval.stage import EvalConfig, run_eval
    from mrt_star.store import read_rows

    assert thinking_of("<think>\na\n\nb\n</think>\n\n\\boxed{1}", "open") == "<think>\na\n\nb"
    cfg = build_config(EvalConfig, dict(max_new_tokens=40))
    assert extrapolation_budgets(cfg) == [20, 40, 80, 160]
    out = run_eval(build_config(EvalConfig, dict(
        models=[str(micro_model)], limit=2, n=1, k_values=[1], max_new_tokens=32, extrapolate=True,
        extrapolation_budgets=[16, 32, 96], max_extensions=2, prover_k=2, prover_max_new_tokens=8,
        regret_axis="parity", output=str(tmp_path / "ext"))))
    rows = read_rows(out)
    for r in rows:
        assert r["extension_tokens"] == [16.0, 32.0, 96.0] and len(r["extension_values"]) == 3
        assert 0 <= r["extensions"] <= 2 and r["stop_tokens"] > 0
    metrics = next(iter(json.loads((out / "metrics.json").read_text())["models"].values()))
    assert metrics["training_length"] == 32 and metrics["regret_axis"] == "parity"
    assert set(metrics["extrapolation_accuracy"]) == set(metrics["extrapolation_regret"]) == {"16", "32", "96"}
    by_hand = sum(r["extension_values"][2] for r in rows) / len(rows)
    assert metrics["extrapolation_accuracy"]["96"] == pytest.approx(by_hand)
    assert (out / "extrapolation.png").stat().st_size > 1000
    assert len(metrics["episode_regret"]) == len(metrics["j_by_episode"])
