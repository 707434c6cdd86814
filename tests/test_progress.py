"""Episodes, the prover's queries and J, progress and regret — on hand-written traces and a scripted engine.

The engine and grader here are small fakes with known answers (a table from forced prefix to the K
answers the "prover" gives), so every J, progress and regret value below is worked out by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from mrt_star.engines.base import Completion
from mrt_star.formats.episodes import EpisodeOptions, episode_prefixes, split_episodes
from mrt_star.formats.prompts import (
    ANSWER_FORCE_TEXT,
    ATTEMPT_SEPARATOR,
    THINK_CLOSE_TEXT,
    THINK_FORCE_TEXT,
)
from mrt_star.grading.extract import last_boxed
from mrt_star.progress.metrics import (
    cumulative_progress,
    estimator_agreement,
    j_from_logprob,
    j_from_samples,
    j_tokens,
    progress,
    score_summary,
    trace_metrics,
)
from mrt_star.progress.prover import (
    ProverOptions,
    end_forced_text,
    graded_text,
    prover_queries,
    run_prover,
)

# --- hand-written traces ----------------------------------------------------------------------------

BACKTRACK = (
    "Line 1: 12+30=42\n"
    "Line 2: 42*2=86\n"
    "Check Line 2: 42*2=84 wrong\n"
    "Backtrack to Line 2\n"
    "Line 2: 42*2=84\n"
    "\\boxed{84}\n"
    "Backtrack to beginning\n"
    "Line 1: 12+30=42\n"
    "Line 2: 42*2=84 (I could Backtrack to Line 1 here, but no)\n"
    "\\boxed{84}"
)

LINEARIZED = "12+30=42\n42*2=86\n\\boxed{86}" + ATTEMPT_SEPARATOR + "12+30=42\n42*2=84\n\\boxed{84}"

OPEN_PARAGRAPHS = [
    "<think>\nFirst, 12+30.", "12+30=42.", "So the answer is \\boxed{84}.",
    "Wait, let me check 42*2.", "42*2=84, yes.", "So the answer is \\boxed{84}.",
    "Alternatively, let me redo it.", "Wait, 30+12=42.", "So the answer is \\boxed{84}.\n</think>",
    "Wait: \\boxed{84}",  # after </think>: never a split point
]
OPEN = "\n\n".join(OPEN_PARAGRAPHS)


def test_backtrack_episodes_split_at_backtrack_lines_only():
    eps = split_episodes(BACKTRACK, "backtrack")
    assert "".join(eps) == BACKTRACK
    assert len(eps) == 3
    assert eps[1].startswith("Backtrack to Line 2\n")
    assert eps[2].startswith("Backtrack to beginning\n")
    assert "Backtrack to Line 1 here" in eps[2]  # not a line of its own: no split


def test_backtrack_step_episodes_open_at_every_step_with_the_backtrack_line_in_front():
    eps = split_episodes(BACKTRACK, "backtrack", EpisodeOptions(backtrack_unit="step"))
    assert "".join(eps) == BACKTRACK
    assert eps == [
        "Line 1: 12+30=42\n",
        "Line 2: 42*2=86\nCheck Line 2: 42*2=84 wrong\n",  # a check stays with its step
        "Backtrack to Line 2\nLine 2: 42*2=84\n\\boxed{84}\n",
        "Backtrack to beginning\nLine 1: 12+30=42\n",
        "Line 2: 42*2=84 (I could Backtrack to Line 1 here, but no)\n\\boxed{84}",
    ]
    # A trace without numbered steps is one episode either way.
    assert split_episodes("\\boxed{3}", "backtrack", EpisodeOptions(backtrack_unit="step")) == ["\\boxed{3}"]


def test_linearized_episodes_start_with_the_separator():
    eps = split_episodes(LINEARIZED, "linearized")
    assert eps == ["12+30=42\n42*2=86\n\\boxed{86}", ATTEMPT_SEPARATOR + "12+30=42\n42*2=84\n\\boxed{84}"]


def test_open_episodes_need_min_paragraphs_and_stop_at_think_close():
    eps = split_episodes(OPEN, "open", EpisodeOptions(min_paragraphs=3))
    assert "".join(eps) == OPEN
    assert [e.split("\n\n")[0] for e in eps] == ["<think>\nFirst, 12+30.", "Wait, let me check 42*2.",
                                                "Alternatively, let me redo it."]
    # "Wait, 30+12" comes one paragraph into an episode: too early. The "Wait" after </think> never splits.
    assert eps[2].endswith("Wait: \\boxed{84}")
    # A stricter minimum merges the first check into the first episode.
    eps4 = split_episodes(OPEN, "open", EpisodeOptions(min_paragraphs=4))
    assert [e.split("\n\n")[0] for e in eps4] == ["<think>\nFirst, 12+30.", "Alternatively, let me redo it."]


def test_open_max_splits_and_grouping():
    assert len(split_episodes(OPEN, "open", EpisodeOptions(max_splits=1))) == 2
    grouped = split_episodes(OPEN, "open", EpisodeOptions(group_size=2))
    assert len(grouped) == 2 and grouped[0].split("\n\n")[3].startswith("Wait, let me check")


def test_open_parity_settings_on_a_long_trace():
    # 60 reconsiderations of 3 paragraphs each: parity caps split points (≤48) and groups them (3).
    paragraphs = ["<think>\nStart.", "a.", "b."]
    for i in range(60):
        paragraphs += [f"Wait, step {i}.", "c.", "d."]
    trace = "\n\n".join(paragraphs) + "\n</think>\n\n\\boxed{1}"
    assert len(split_episodes(trace, "open", EpisodeOptions())) == 49  # 48 splits
    parity = split_episodes(trace, "open", EpisodeOptions(min_paragraphs=3, max_splits=48, group_size=3))
    assert "".join(parity) == trace
    assert len(parity) == 1 + 48 // 3
    assert all(e.count("Wait, step") == 3 for e in parity[1:-1])


def test_episode_prefixes():
    assert episode_prefixes(["ab", "cd"]) == ["", "ab", "abcd"]


# --- prover queries and grading ---------------------------------------------------------------------

PROMPT = [{"role": "user", "content": "What is (12+30)*2?"}]


def test_queries_force_every_prefix_and_close_open_traces_at_the_end():
    eps = split_episodes(BACKTRACK, "backtrack")
    qs = prover_queries(PROMPT, eps, "backtrack", "84")
    assert [q.forced for q in qs] == [ANSWER_FORCE_TEXT, eps[0] + ANSWER_FORCE_TEXT,
                                      eps[0] + eps[1] + ANSWER_FORCE_TEXT, BACKTRACK + ANSWER_FORCE_TEXT]
    assert qs[0].messages()[-1] == {"role": "assistant", "content": ANSWER_FORCE_TEXT}

    open_eps = split_episodes(OPEN, "open")
    oq = prover_queries(PROMPT, open_eps, "open", "84")
    assert oq[1].forced == open_eps[0] + THINK_FORCE_TEXT
    # The whole trace already closed its thinking: the prover answers right after the trace's </think>.
    assert oq[-1].forced == OPEN[: OPEN.index("</think>") + len("</think>")]
    # An unclosed thinking trace is closed with the reference's "\n</think>".
    assert end_forced_text("<think>\nhmm", "open") == "<think>\nhmm" + THINK_CLOSE_TEXT


def test_graded_text_is_the_forced_completion_unless_the_parity_flag():
    q = prover_queries(PROMPT, ["Line 1: 12+30=42\n\\boxed{84}"], "backtrack", "84")[1]
    assert graded_text(q, "84}", False) == "\\boxed{84}"
    # Parity flag: the prefix's own \boxed{84} counts when the forced answer has no box.
    assert last_boxed(graded_text(q, "no box", True)) == "84"
    assert last_boxed(graded_text(q, "no box", False)) is None


# --- a scripted engine and grader --------------------------------------------------------------------


@dataclass
class Grade:
    correct: bool
    extracted: str | None
    reason: str = ""


class ExactGrader:
    """Grades by exact match of the last \\boxed{} content."""

    def __init__(self):
        self.calls = 0

    def grade_many(self, pairs):
        self.calls += 1
        return [Grade(last_boxed(t) == ref, last_boxed(t)) for t, ref in pairs]


class ScriptedEngine:
    """Answers a forced prefix from a table keyed by the prefix's ending; records every call."""

    def __init__(self, answers: dict[str, list[str]], probs: dict[str, float] | None = None):
        self.answers, self.probs = answers, probs or {}
        self.generate_calls, self.logprob_calls = [], []
        self.counted = []

    def _key(self, text: str) -> str:
        for key in sorted(self.answers, key=len, reverse=True):
            if text.endswith(key):
                return key
        raise KeyError(text[-60:])

    def generate(self, requests, params):
        self.generate_calls.append((len(requests), params))
        out = []
        for r in requests:
            texts = self.answers[self._key(r.messages[-1]["content"])]
            assert len(texts) == params.n
            out.append([Completion(t, 100, len(t), "stop") for t in texts])
        return out

    def continuation_logprobs(self, requests, continuations):
        self.logprob_calls.append((len(requests), list(continuations)))
        return [math.log(self.probs[self._key(r.messages[-1]["content"])]) for r in requests]

    def count_tokens(self, texts):
        self.counted.append(list(texts))
        return [len(t) for t in texts]


def _two_traces():
    # Problem p1, two linearized traces: A recovers from a wrong first attempt, B is right at once.
    a = "42*2=86\n\\boxed{86}" + ATTEMPT_SEPARATOR + "42*2=84\n\\boxed{84}"
    b = "42*2=84\n\\boxed{84}"
    rows = []
    for i, text in enumerate((a, b)):
        rows.append({"problem_id": "p1", "answer": "84", "format": "linearized", "prompt": PROMPT,
                     "completion": text, "sample_index": i, "num_tokens": len(text), "correct": True})
    answers = {
        # empty prefix: 1 of 4 right
        ANSWER_FORCE_TEXT: ["84}", "86}", "80}", "8}"],
        "\\boxed{86}" + ANSWER_FORCE_TEXT: ["86}", "86}", "84}", "86}"],  # after the slip: 1 of 4
        "\\boxed{84}" + ANSWER_FORCE_TEXT: ["84}", "84}", "84}", "84}"],  # after a right attempt: 4 of 4
    }
    probs = {ANSWER_FORCE_TEXT: 0.3, "\\boxed{86}" + ANSWER_FORCE_TEXT: 0.2, "\\boxed{84}" + ANSWER_FORCE_TEXT: 0.9}
    return rows, answers, probs


def test_run_prover_samples_once_per_distinct_prefix():
    rows, answers, _ = _two_traces()
    engine, grader = ScriptedEngine(answers), ExactGrader()
    queries = [q for r in rows for q in prover_queries(r["prompt"], split_episodes(r["completion"], "linearized"),
                                                       "linearized", "84")]
    assert len(queries) == 5  # 3 prefixes of A + 2 of B
    results = run_prover(engine, grader, queries, ProverOptions(k=4))
    assert len(engine.generate_calls) == 1 and engine.generate_calls[0][0] == 4  # the empty prefix shared
    assert [r.j_sample for r in results] == [0.25, 0.25, 1.0, 0.25, 1.0]
    assert [r.charged for r in results] == [True, True, True, False, True]
    assert results[2].answers[0] == {"text": "84}", "answer": "84", "correct": True, "num_tokens": 3}
    assert grader.calls == 1  # every forced answer graded in one batch

    unshared = run_prover(ScriptedEngine(answers), grader, queries, ProverOptions(k=4, share_prefixes=False))
    assert [r.j_sample for r in unshared] == [r.j_sample for r in results]


def test_likelihood_estimator_scores_the_reference_after_the_force_text():
    rows, answers, probs = _two_traces()
    engine = ScriptedEngine(answers, probs)
    queries = prover_queries(PROMPT, split_episodes(rows[0]["completion"], "linearized"), "linearized", "84")
    results = run_prover(engine, None, queries, ProverOptions(estimators=("likelihood",)))
    assert engine.generate_calls == []
    assert engine.logprob_calls == [(3, ["84}", "84}", "84}"])]
    assert [round(r.j_likelihood, 6) for r in results] == [0.3, 0.2, 0.9]
    assert j_from_logprob(0.0) == 1.0 and j_from_logprob(float("nan")) == 0.0


def test_open_likelihood_leads_the_answer_into_a_box():
    qs = prover_queries(PROMPT, split_episodes(OPEN, "open"), "open", "84")
    assert qs[1].messages(qs[1].lead)[-1]["content"].endswith(THINK_FORCE_TEXT + "Answer:** \\boxed{")
    assert qs[-1].messages(qs[-1].lead)[-1]["content"].endswith("</think>\n\n\\boxed{")


def test_prefixes_too_long_for_the_context_are_skipped_and_hold_the_previous_j():
    from mrt_star.score import ScoreConfig, score_rows

    class ShortContext(ScriptedEngine):
        max_context = 40

        def render(self, request):
            return request.messages[-1]["content"]

    rows, answers, _ = _two_traces()
    engine = ShortContext(answers)
    scored = score_rows(rows[:1], engine, ExactGrader(), ScoreConfig(prover_k=4, budgets=[40]))
    # Only the empty prefix (the force text alone) fits in 40 tokens; the rest hold its J.
    assert engine.generate_calls[0][0] == 1
    assert scored[0]["j_values"] == [0.25, 0.25, 0.25] and scored[0]["prover_skipped_prefixes"] == 2


# --- J, progress, regret ----------------------------------------------------------------------------


def test_j_progress_and_regret_by_hand():
    assert j_from_samples([True, False, False, True]) == 0.5
    assert j_tokens([10, 20]) == [0, 10, 30]
    assert progress([0.25, 0.5, 1.0]) == [0.25, 0.5]
    assert cumulative_progress([0.25, 0.5, 1.0]) == 0.75
    m = trace_metrics([0.25, 0.5, 1.0], [10, 20], budgets=[40, 20])
    # Parity curve: (0,0) prepended, J(-1)=.25 a step at t=0 (no area), (10,.5), (30,1), held after 30.
    # C=40: area 10*.375 + 20*.75 + 10*1 = 28.75 → regret 1 - 28.75/40.  C=20: 3.75 + 10*(.5+.75)/2 = 10.
    assert m["regret"] == [{"budget": 40.0, "value": pytest.approx(1 - 28.75 / 40)},
                           {"budget": 20.0, "value": pytest.approx(1 - 10 / 20)}]
    assert m["forced_final_correct"] and m["j_start"] == 0.25 and m["j_end"] == 1.0
    assert not trace_metrics([0.0, 0.5], [5], [10])["forced_final_correct"]  # 0.5 is not above 0.5
    with pytest.raises(ValueError):
        trace_metrics([0.1], [5], [10])


def test_early_rise_counts_correct_traces_whose_j_rises_before_the_last_episode():
    from mrt_star.progress.metrics import early_rise

    rows = [
        {"correct": True, "j_values": [0.0, 0.5, 1.0]},  # rises after episode 1 of 2
        {"correct": True, "j_values": [0.25, 0.25, 0.0, 1.0]},  # flat, then a dip: all its progress comes last
        {"correct": True, "j_values": [0.0, 1.0]},  # one episode: nothing before the last, not counted
        {"correct": False, "j_values": [0.0, 0.75, 0.0]},  # wrong: not counted
    ]
    out = early_rise(rows)
    assert out["correct_j_rises_before_last_episode"] == 0.5
    assert out["correct_mean_j_start"] == pytest.approx(0.125)
    assert out["correct_mean_j_middle"] == pytest.approx((0.5 + 0.0) / 2)  # index len // 2: 1 and 2
    assert out["correct_mean_j_end"] == 1.0
    assert early_rise([{"correct": True, "j_values": [0.0, 1.0]}])["correct_j_rises_before_last_episode"] is None


def test_estimator_agreement():
    same = estimator_agreement([[0.0, 0.5, 1.0], [0.2, 0.1]], [[0.0, 0.5, 1.0], [0.2, 0.1]])
    assert same["j_correlation"] == pytest.approx(1.0) and same["j_mean_abs_diff"] == 0.0
    assert same["progress_sign_agreement"] == 1.0
    differ = estimator_agreement([[0.0, 0.5, 1.0]], [[0.1, 0.0, 0.9]])
    assert differ["progress_sign_agreement"] == 0.5  # +/- vs -/+ on the first, +/+ on the second
    assert differ["j_mean_abs_diff"] == pytest.approx((0.1 + 0.5 + 0.1) / 3)


# --- the score stage's shard logic ------------------------------------------------------------------


def test_score_rows_one_engine_call_per_shard_and_columns():
    from mrt_star.score import ScoreConfig, problem_shards, score_rows

    rows, answers, probs = _two_traces()
    engine, grader = ScriptedEngine(answers, probs), ExactGrader()
    cfg = ScoreConfig(prover_k=4, budgets=[40], compare_estimators=True)
    scored = score_rows(rows, engine, grader, cfg, seed=3)
    assert len(engine.generate_calls) == 1 and engine.generate_calls[0][1].seed == 3
    assert len(engine.logprob_calls) == 1
    a, b = scored
    assert a["j_values"] == [0.25, 0.25, 1.0] and a["progress"] == [0.0, 0.75]
    assert a["cumulative_progress"] == 0.75 and b["cumulative_progress"] == 0.75
    assert [round(x, 6) for x in a["j_likelihood"]] == [0.3, 0.2, 0.9]
    assert a["j_tokens"] == [0, len("42*2=86\n\\boxed{86}"), len(rows[0]["completion"])]
    assert len(a["prover_answers"]) == 3 and len(a["prover_answers"][0]) == 4
    # The shared empty prefix is charged to trace A only; B pays for its one new prefix (+1 likelihood pass each).
    assert a["prover_rollouts"] == 3 * 4 + 3 and b["prover_rollouts"] == 4 + 1
    summary = score_summary(scored, [40])
    assert summary["mean_j_end"] == 1.0 and summary["share_episodes_positive_progress"] == pytest.approx(2 / 3)
    assert summary["prover_rollouts"] == 20

    # Shards keep a problem's traces together.
    more = rows + [{**rows[1], "problem_id": "p2"}] * 3
    assert [len(s) for s in problem_shards(more, 2)] == [2, 3]


def test_dry_run_plan_counts_calls_and_tokens():
    from mrt_star.score import ScoreConfig, plan
    from mrt_star.toy.tokenizer import build_tokenizer

    rows, _, _ = _two_traces()
    p = plan(rows, build_tokenizer(), ScoreConfig(prover_k=4, prover_max_new_tokens=10))
    assert p["prefixes"] == 5 and p["prover calls (distinct prefixes)"] == 4 and p["rollouts"] == 16
    assert p["max answer tokens (calls x K x prover_max_new_tokens)"] == 160
    assert p["prefix tokens if every rollout re-encoded its prefix"] > 4 * p["prefix tokens encoded (one prefill per call)"]


# --- the score stage end to end on the scripted engine (the real model runs in test_pipeline.py) -----


class ClosingGrader(ExactGrader):
    def close(self):
        pass


class StageEngine(ScriptedEngine):
    """A scripted engine with the stage-facing extras; can fail on a given generate call (a 'kill')."""

    def __init__(self, answers, probs=None, fail_on_call=None):
        super().__init__(answers, probs)
        from mrt_star.engines.base import EngineStats

        self.stats, self.fail_on_call, self.closed = EngineStats(), fail_on_call, False

    def generate(self, requests, params):
        if self.fail_on_call is not None and len(self.generate_calls) + 1 == self.fail_on_call:
            raise KeyboardInterrupt
        return super().generate(requests, params)

    def close(self):
        self.closed = True


def _traces_folder(path, rows):
    from mrt_star.store import Store

    store = Store(path, "generate", {"model": "toy"}, "fp")
    store.write_shard(0, rows)
    store.finish({})
    return str(path)


@pytest.fixture
def stage_world(monkeypatch, tmp_path):
    import mrt_star.engines
    import mrt_star.grading

    rows, answers, probs = _two_traces()
    rows = rows + [{**r, "problem_id": "p2"} for r in rows] + [{**r, "problem_id": "p3"} for r in rows]
    engines, kill = [], {}

    def fake_load_engine(name, model_path, **options):
        engines.append(StageEngine(answers, probs, fail_on_call=kill.pop("on_call", None)))
        return engines[-1]

    monkeypatch.setattr(mrt_star.engines, "load_engine", fake_load_engine, raising=False)
    monkeypatch.setattr(mrt_star.grading, "Grader", lambda **kw: ClosingGrader(), raising=False)
    monkeypatch.setattr("mrt_star.score._prover_model", lambda cfg, manifest: "scripted")
    return _traces_folder(tmp_path / "traces", rows), engines, tmp_path, kill


def test_run_score_resumes_after_a_kill_without_duplicates(stage_world):
    from mrt_star.score import ScoreConfig, run_score
    from mrt_star.store import read_manifest, read_rows

    traces, engines, tmp, kill = stage_world
    cfg = dict(input=traces, output=str(tmp / "scored"), prover_k=4, shard_size=2, budgets=[40])
    # Killed during the second shard's engine call: shard 0 is on disk, nothing else.
    kill["on_call"] = 2
    with pytest.raises(KeyboardInterrupt):
        run_score(ScoreConfig(**cfg))
    assert engines[0].closed
    assert read_manifest(tmp / "scored")["status"] == "running"
    with pytest.raises(Exception, match="different config"):
        run_score(ScoreConfig(**{**cfg, "prover_k": 8}))  # a different config cannot resume this output
    out = run_score(ScoreConfig(**cfg))
    assert len(engines[-1].generate_calls) == 2  # shards 1 and 2 only
    rows = read_rows(out)
    assert [r["problem_id"] for r in rows] == ["p1", "p1", "p2", "p2", "p3", "p3"]
    assert all(r["j_values"][-1] == 1.0 for r in rows)
    manifest = read_manifest(out)
    assert manifest["summary"]["mean_j_end"] == 1.0 and manifest["summary"]["traces"] == 6
    # A finished output is not redone.
    run_score(ScoreConfig(**cfg))
    assert len(engines) == 2


def test_run_score_dry_run_and_input_checks(stage_world, monkeypatch, capsys):
    from mrt_star.errors import UserError
    from mrt_star.score import ScoreConfig, run_score
    from mrt_star.toy.tokenizer import build_tokenizer

    traces, engines, tmp, _ = stage_world
    monkeypatch.setattr("mrt_star.engines.base.load_tokenizer", lambda *a, **k: build_tokenizer())
    run_score(ScoreConfig(input=traces, output=str(tmp / "dry"), prover_k=4, dry_run=True, compare_estimators=True))
    assert not (tmp / "dry").exists() and engines == []
    err = capsys.readouterr().err
    assert "prover calls" in err and "max answer tokens" in err
    with pytest.raises(UserError, match="generate"):
        run_score(ScoreConfig(input=str(tmp / "nope"), output=str(tmp / "o")))
    with pytest.raises(UserError, match="budgets"):
        run_score(ScoreConfig(input=traces, output=str(tmp / "o"), budgets=[0]))
    assert not (tmp / "o").exists()


# --- the adaptive estimator (hand-worked stopping in tests/test_headline.py) ---------------------------


def test_adaptive_estimator_spends_fewer_answers_on_clear_prefixes_and_charges_what_it_asked():
    from mrt_star.progress.prover import wilson

    rows, _, _ = _two_traces()
    # Every prefix is clear-cut here (all right or all wrong): two answers each settle J within ±0.5/√8.
    answers = {ANSWER_FORCE_TEXT: ["80}"] * 8, "\\boxed{86}" + ANSWER_FORCE_TEXT: ["86}"] * 8,
               "\\boxed{84}" + ANSWER_FORCE_TEXT: ["84}"] * 8}
    engine = ScriptedEngine({k: v[:2] for k, v in answers.items()})
    queries = [q for r in rows for q in prover_queries(r["prompt"], split_episodes(r["completion"], "linearized"),
                                                       "linearized", "84")]
    results = run_prover(engine, ExactGrader(), queries, ProverOptions(k=8, estimators=("adaptive",), seed=1))
    assert [len(r.answers) for r in results] == [2, 2, 2, 2, 2] and len(engine.generate_calls) == 1
    assert [r.j_sample for r in results] == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert [r.charged for r in results] == [True, True, True, False, True]  # shared prefixes asked once
    # Comparing estimators asks for sample and adaptive together: the fixed K answers serve both.
    both = run_prover(ScriptedEngine(answers), ExactGrader(), queries, ProverOptions(k=8, estimators=("sample", "adaptive")))
    assert [len(r.answers) for r in both] == [8] * 5
    lo, hi = wilson(4, 8, 1.0)
    assert lo < 0.5 < hi and (hi - lo) / 2 == pytest.approx(1 / 6)


def test_adaptive_estimator_on_the_micro_model_is_deterministic_with_the_seed(micro_model, one_torch_thread):
    from mrt_star.engines import load_engine
    from mrt_star.grading import Grader

    eps = split_episodes(BACKTRACK, "backtrack")
    queries = prover_queries(PROMPT, eps, "backtrack", "84") + prover_queries(PROMPT, eps[:2], "backtrack", "84")
    engine, grader = load_engine("transformers", str(micro_model)), Grader()
    try:
        options = ProverOptions(k=8, max_new_tokens=8, estimators=("adaptive",), seed=11)
        first = run_prover(engine, grader, queries, options)
        again = run_prover(engine, grader, queries, options)
    finally:
        engine.close()
        grader.close()
    assert [r.answers for r in first] == [r.answers for r in again]
    counts = [len(r.answers) for r in first]
    assert all(2 <= n <= 8 and n % 2 == 0 for n in counts), counts
    # Shared prefixes (the second trace's two first prefixes) get the very same answers, charged once.
    assert first[4].answers == first[0].answers and not first[4].charged and not first[5].charged
