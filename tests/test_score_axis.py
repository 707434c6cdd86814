"""`score --regret-axis`: the parity axis counts prompt + prefix + stop text + mean forced-answer tokens.

The engine is test_progress's scripted one (a table from forced prefix to the prover's answers; a token is
a character), given the one thing the parity axis needs beyond it: a rendered chat prompt. Every position
and regret below is worked out by hand.
"""

from __future__ import annotations

import pytest
from test_progress import ExactGrader, ScriptedEngine, _two_traces

from mrt_star.config import ConfigError, parse_config
from mrt_star.formats.prompts import ANSWER_FORCE_TEXT
from mrt_star.progress.metrics import trace_metrics
from mrt_star.score import ScoreConfig, score_rows


class RenderingEngine(ScriptedEngine):
    """The scripted engine with a chat template: user turn wrapped in two role tags."""

    def render(self, request):
        return "<|user|>" + request.messages[-1]["content"] + "<|assistant|>"


def test_parity_axis_regret_by_hand():
    rows, answers, _ = _two_traces()
    engine = RenderingEngine(answers)
    a = score_rows(rows[:1], engine, ExactGrader(), ScoreConfig(prover_k=4, budgets=[100, 200], regret_axis="parity"))[0]
    # Trace A: attempt 1 (18 chars), then the separator (21) and attempt 2 (18); J = .25, .25, 1.
    assert a["j_tokens"] == [0, 18, 57] and a["j_values"] == [0.25, 0.25, 1.0]  # j_tokens stay thinking tokens
    # Prompt "<|user|>What is (12+30)*2?<|assistant|>" = 8 + 18 + 13 = 39 tokens; stop text 34 tokens;
    # mean answer tokens: "84}" "86}" "80}" "8}" → 2.75 at j=-1, then 3 and 3.
    assert len(ANSWER_FORCE_TEXT) == 34
    # Positions 39 + t + 34 + a: 75.75, 94, 133. Curve (0,0) → (75.75,.25) → (94,.25) → (133,1), then held.
    # C=100: 75.75·.125 + 18.25·.25 + 6·(.25 + .25+.75·6/39)/2;  C=200: 75.75·.125 + 18.25·.25 + 39·.625 + 67.
    at_100 = 75.75 * 0.125 + 18.25 * 0.25 + 6 * (0.25 + 0.25 + 0.75 * 6 / 39) / 2
    at_200 = 75.75 * 0.125 + 18.25 * 0.25 + 39 * 0.625 + 67
    assert a["regret"] == [{"budget": 100.0, "value": pytest.approx(1 - at_100 / 100)},
                           {"budget": 200.0, "value": pytest.approx(1 - at_200 / 200)}]
    assert a["regret"][1]["value"] == pytest.approx(1 - 105.40625 / 200)  # the sum, written out


def test_parity_axis_under_the_likelihood_estimator_counts_no_answer_tokens():
    rows, answers, probs = _two_traces()
    cfg = ScoreConfig(prover_k=4, budgets=[200], regret_axis="parity", estimator="likelihood")
    a = score_rows(rows[:1], RenderingEngine(answers, probs), None, cfg)[0]
    # J = .3, .2, .9 at 39 + t + 34: 73, 91, 130.
    area = 73 * 0.15 + 18 * 0.25 + 39 * 0.55 + 70 * 0.9
    assert a["regret"] == [{"budget": 200.0, "value": pytest.approx(1 - area / 200)}]


def test_thinking_axis_is_the_default_and_unchanged():
    assert ScoreConfig().regret_axis == "thinking"
    assert parse_config(ScoreConfig, ["--regret-axis", "parity"]).regret_axis == "parity"
    with pytest.raises(ConfigError, match="regret_axis"):
        parse_config(ScoreConfig, ["--regret-axis", "tokens"])
    rows, answers, _ = _two_traces()
    engine = ScriptedEngine(answers)  # no render: the thinking axis needs no prompt
    a = score_rows(rows[:1], engine, ExactGrader(), ScoreConfig(prover_k=4, budgets=[100, 200]))[0]
    # (0,0) → (0,.25) a step → (18,.25) → (57,1), then held.
    assert a["regret"] == [{"budget": 100.0, "value": pytest.approx(1 - (18 * 0.25 + 39 * 0.625 + 43) / 100)},
                           {"budget": 200.0, "value": pytest.approx(1 - (18 * 0.25 + 39 * 0.625 + 143) / 200)}]
    assert a["regret"] == trace_metrics([0.25, 0.25, 1.0], [18, 39], [100, 200])["regret"]
