"""The embedded toy world: problems, tokenizer and chat template, warm-start traces, the micro model."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from fractions import Fraction

import pytest

from mrt_star.formats.chat import render_chat
from mrt_star.formats.episodes import split_episodes
from mrt_star.formats.prompts import (
    ATTEMPT_SEPARATOR,
    BACKTRACK_RE,
    FORCE_TEXT,
    FORMATS,
    forced_completion_text,
    forced_prefix,
)
from mrt_star.grading import extract_answer, grade
from mrt_star.toy.problems import (
    FAMILIES,
    ToyProblemsConfig,
    generate_problems,
    latex_number,
    run_toy_problems,
    solution_steps,
    true_answer,
    value_number,
)
from mrt_star.toy.tokenizer import build_tokenizer
from mrt_star.toy.traces import CLEAN, TraceStyle, forced_messages, make_trace, trace_messages


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def problems():
    return [p for d in (1, 2, 3) for p in generate_problems(60, seed=7, difficulty=d)]


# --- problems -------------------------------------------------------------------------------------


def test_generators_are_deterministic_and_ids_stable():
    a, b = generate_problems(90, seed=3), generate_problems(90, seed=3)
    assert a == b
    assert a != generate_problems(90, seed=4)
    assert len({p["problem_id"] for p in a}) == 90
    assert {p["family"] for p in a} == set(FAMILIES)
    assert all(p["problem_id"].startswith(f"toy-{p['family']}-") for p in a)
    # An id depends only on the problem text, so it survives a different draw order.
    again = {p["problem"]: p["problem_id"] for p in generate_problems(300, seed=3)}
    assert all(again[p["problem"]] == p["problem_id"] for p in a)


def test_family_filter_and_difficulty():
    rows = generate_problems(10, seed=0, families="fraction,linear", difficulty=3)
    assert {r["family"] for r in rows} == {"fraction", "linear"}
    assert all(r["difficulty"] == 3 for r in rows)
    with pytest.raises(ValueError, match="unknown toy families"):
        generate_problems(3, families="calculus")
    with pytest.raises(ValueError, match="difficulty"):
        generate_problems(3, difficulty=7)


def test_answers_are_latex_with_reduced_fractions_and_signs():
    assert latex_number(Fraction(6, 4)) == "\\frac{3}{2}"
    assert latex_number(Fraction(-5, 12)) == "-\\frac{5}{12}"
    assert latex_number(Fraction(8, 4)) == "2"
    answers = {p["answer"] for p in generate_problems(300, seed=1)}
    assert any(a.startswith("-\\frac") for a in answers)
    assert any(a.startswith("\\frac") for a in answers)
    assert any(re.fullmatch(r"-?\d+", a) for a in answers)


def test_solution_steps_reach_the_answer(problems):
    for p in problems:
        steps = solution_steps(p["problem"])
        assert steps and value_number(steps[-1].value) == true_answer(p["problem"])


def test_references_grade_against_themselves_and_not_against_a_perturbed_answer(problems):
    sample = problems[::3]
    for p in sample:
        assert grade(f"so \\boxed{{{p['answer']}}}", p["answer"]), p
        wrong = latex_number(true_answer(p["problem"]) + Fraction(1, 7))
        assert not grade(f"\\boxed{{{wrong}}}", p["answer"]), p


def test_run_toy_problems_writes_jsonl_and_parquet(tmp_path, capsys):
    out = run_toy_problems(ToyProblemsConfig(count=9, output=str(tmp_path / "p.jsonl")))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == generate_problems(9)
    pq = run_toy_problems(ToyProblemsConfig(count=9, output=str(tmp_path / "p.parquet")))
    import pandas as pd

    assert pd.read_parquet(pq).to_dict("records") == rows
    assert run_toy_problems(ToyProblemsConfig(count=4)) is None
    assert "toy-" in capsys.readouterr().out


def test_config_fields_carry_help():
    from dataclasses import fields

    from mrt_star.toy.build import ToyBuildConfig

    for cls in (ToyProblemsConfig, ToyBuildConfig):
        assert all(f.metadata.get("help") for f in fields(cls)), cls


# --- tokenizer and chat template ------------------------------------------------------------------


def test_tokenizer_round_trips_every_world_character(tokenizer, problems):
    rng = random.Random(0)
    texts = [make_trace(p["problem"], fmt, rng).text for p in problems[:30] for fmt in FORMATS]
    texts += [FORCE_TEXT[fmt] for fmt in FORMATS] + ["  two  spaces\n\n\ttab and trailing  \n"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_fast_char_encoder_matches_the_tokenizer(tokenizer):
    from mrt_star.toy.tokenizer import char_encoder

    encode = char_encoder(tokenizer)
    rng = random.Random(9)
    for p in generate_problems(9, seed=9):
        messages, target = forced_messages(make_trace(p["problem"], "open", rng), 1)
        text = render_chat(tokenizer, messages) + target + "<|end|> é"
        assert encode(text) == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_training_examples_train_on_traces_and_answers_not_prompts_or_force_text(tokenizer):
    from mrt_star.toy.build import VARIANTS, Recipe, example_segments, prompt_heads, training_segments

    heads = prompt_heads(tokenizer)
    rng = random.Random(10)
    trace = make_trace("3x+1=7", "backtrack", rng)
    whole = example_segments(heads, "<|end|>", trace, None)
    assert whole == [(render_chat(tokenizer, trace_messages(trace)[0]), False), (trace.text + "<|end|>", True)]
    forced = example_segments(heads, "<|end|>", trace, 0)
    messages, target = forced_messages(trace, 0)
    assert "".join(t for t, _ in forced) == render_chat(tokenizer, messages) + target + "<|end|>"
    assert [t for t, train in forced if train] == ["", "2}<|end|>"]
    recipe = Recipe(**{**VARIANTS["micro"], "steps": 20}, difficulty=2, seed=0)
    examples = training_segments(recipe, rng, {"3x+1=7"}, heads, "<|end|>")
    assert len(examples) == 20 * recipe.batch_size
    assert not any("3x+1=7" in t for ex in examples for t, _ in ex)
    assert not any(FORCE_TEXT[fmt] in t for ex in examples for t, train in ex if train for fmt in FORMATS)


def test_chat_template_keeps_a_prefilled_turn_exact(tokenizer):
    user = {"role": "user", "content": "[backtrack] 26-3-6-6"}
    prompt = render_chat(tokenizer, [user])
    assert prompt == "<|user|>[backtrack] 26-3-6-6<|end|><|assistant|>"
    for prefix in ["", "Line 1: 26-3=23, so 23-6-6\n", "<think>\n26-3=23.\n\n", "x \n\n  "]:
        text = render_chat(tokenizer, [user, {"role": "assistant", "content": prefix}])
        assert text == prompt + prefix
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    # Assistant-only loss: the {% generation %} span covers the content and the end token.
    out = tokenizer.apply_chat_template([user, {"role": "assistant", "content": "\\boxed{11}"}], tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "\\boxed{11}<|end|>"


# --- warm-start traces ----------------------------------------------------------------------------


def test_traces_split_into_their_episodes_and_support_answers(problems):
    rng = random.Random(1)
    counts = {fmt: 0 for fmt in FORMATS}
    for p in problems:
        for fmt in FORMATS:
            for _ in range(3):
                trace = make_trace(p["problem"], fmt, rng)
                assert split_episodes(trace.text, fmt) == trace.episodes, trace.text
                assert len(trace.supported) == len(trace.episodes) + 1
                assert trace.supported[0] == p["answer"]  # the empty prefix: the mental answer
                counts[fmt] += len(trace.episodes) > 1
    assert all(n > 20 for n in counts.values()), counts  # every format revises often enough


def test_clean_traces_and_traces_without_injected_errors_grade_correct(problems):
    rng = random.Random(2)
    for p in problems[::2]:
        for fmt in FORMATS:
            clean = make_trace(p["problem"], fmt, rng, CLEAN)
            assert not clean.injected_error and len(clean.episodes) == 1
            assert grade(clean.text, p["answer"]), clean.text
            noisy = make_trace(p["problem"], fmt, rng)
            if not noisy.injected_error:
                assert grade(noisy.text, p["answer"]), noisy.text


def test_backtrack_revisions_restart_at_the_named_line():
    rng = random.Random(3)
    style = TraceStyle(slip=0.5, check_after_slip=1.0)
    seen = 0
    for p in generate_problems(60, seed=5):
        trace = make_trace(p["problem"], "backtrack", rng, style)
        for m in BACKTRACK_RE.finditer(trace.text):
            seen += 1
            after = trace.text[m.end() + 1 :]
            assert after.startswith(f"Line {m.group(1) or 1}: ")
    assert seen > 20


def test_linearized_attempts_each_end_in_a_box():
    rng = random.Random(4)
    for p in generate_problems(30, seed=6):
        trace = make_trace(p["problem"], "linearized", rng)
        attempts = trace.text.split(ATTEMPT_SEPARATOR)
        if trace.guess:  # no work: the prover after it still has only its mental answer
            assert [extract_answer(a) for a in attempts] == [trace.final_answer]
            assert trace.supported == [p["answer"], p["answer"]]
            continue
        assert [extract_answer(a) for a in attempts] == trace.supported[1:]


@pytest.mark.parametrize("fmt", FORMATS)
def test_step_cuts_are_the_step_boundaries_and_include_every_episode_boundary(fmt):
    from mrt_star.formats.episodes import EpisodeOptions

    rng = random.Random(11)
    for p in generate_problems(150, seed=12):
        trace = make_trace(p["problem"], fmt, rng)
        offsets = [offset for offset, _ in trace.cuts]
        assert offsets[0] == 0 and offsets[-1] == len(trace.text) and offsets == sorted(set(offsets))
        ends = [sum(map(len, trace.episodes[:j])) for j in range(len(trace.episodes) + 1)]
        assert [dict(trace.cuts)[e] for e in ends] == trace.supported  # episode boundaries keep their answers
        assert trace.cuts[-1][1] == trace.final_answer or trace.guess
        if fmt == "backtrack" and not trace.guess:  # the scorer's `--backtrack-unit step` prefixes, exactly
            pieces = split_episodes(trace.text, fmt, EpisodeOptions(backtrack_unit="step"))
            assert offsets == [sum(map(len, pieces[:j])) for j in range(len(pieces) + 1)], trace.text


def test_step_cuts_support_finishing_the_shown_lines():
    # After k correct lines the prover has the rest to do: a clean trace supports the true answer at every cut;
    # after a slip that no check caught, the cut supports finishing from the wrong value.
    rng = random.Random(13)
    for p in generate_problems(60, seed=14):
        clean = make_trace(p["problem"], "backtrack", rng, CLEAN)
        assert len(clean.cuts) == clean.text.count("Line ") + 1 and {a for _, a in clean.cuts} == {p["answer"]}
    style = TraceStyle(slip=1.0, check_after_slip=0.0, check_after_ok=0.0, lucky=0.0, restart=0.0, guess=0.0)
    for p in generate_problems(30, seed=15, families="chain"):
        trace = make_trace(p["problem"], "backtrack", rng, style)
        assert trace.cuts[0][1] == p["answer"]
        assert trace.cuts[1][1] != p["answer"], trace.cuts  # line 1 slipped: finishing from it is wrong


def test_guesses_are_short_work_free_and_support_only_the_mental_answer():
    rng = random.Random(16)
    style = TraceStyle(guess=1.0, guess_right=0.5)
    right = 0
    for p in generate_problems(120, seed=17):
        for fmt in FORMATS:
            trace = make_trace(p["problem"], fmt, rng, style)
            assert trace.guess and "Line " not in trace.text and len(trace.episodes) == 1
            assert trace.supported == [p["answer"], p["answer"]]
            assert grade(trace.text, p["answer"]) == (trace.final_answer == p["answer"]) == (not trace.injected_error)
            right += trace.final_answer == p["answer"]
    assert 0.4 < right / 360 < 0.6
    shares = [make_trace(p["problem"], "backtrack", rng).guess for p in generate_problems(400, seed=18)]
    assert 0.03 < sum(shares) / len(shares) < 0.1  # the default style guesses about 6% of the time


def test_forced_examples_prefill_prefix_plus_force_text(tokenizer):
    rng = random.Random(5)
    for p in generate_problems(12, seed=8):
        for fmt in FORMATS:
            trace = make_trace(p["problem"], fmt, rng)
            for j in range(len(trace.episodes) + 1):
                messages, target = forced_messages(trace, j)
                assert messages[0] == trace_messages(trace)[0][0]
                prefix = "".join(trace.episodes[:j]) or ("<think>\n" if fmt == "open" else "")
                assert messages[-1]["content"] == forced_prefix(prefix, fmt)
                assert render_chat(tokenizer, messages).endswith(FORCE_TEXT[fmt])
                assert grade(forced_completion_text(fmt, target), trace.supported[j])


def test_toy_import_is_cheap_and_names_are_checked():
    code = "import sys, mrt_star.toy; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    from mrt_star.toy import resolve_toy_model

    with pytest.raises(ValueError, match="unknown toy model"):
        resolve_toy_model("toy-huge")


def test_build_dir_depends_on_config(monkeypatch, tmp_path):
    from mrt_star.toy.build import ToyBuildConfig, build_dir

    monkeypatch.setenv("MRT_STAR_CACHE", str(tmp_path))
    a = build_dir(ToyBuildConfig(variant="micro"))
    assert a.parent == tmp_path / "toy" and a.name.startswith("micro-")
    assert build_dir(ToyBuildConfig(variant="micro", steps=3)) != a
    assert build_dir(ToyBuildConfig(variant="micro", output=str(tmp_path / "x"))) == tmp_path / "x"


# --- the micro model ------------------------------------------------------------------------------


def test_micro_model_reloads_with_auto_classes(micro_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(micro_model)
    model = AutoModelForCausalLM.from_pretrained(micro_model)
    assert isinstance(model, LlamaForCausalLM)
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|end|>")
    assert tok.decode(tok("Line 1: 2/3=4/6\n\n  ")["input_ids"]) == "Line 1: 2/3=4/6\n\n  "
    user = {"role": "user", "content": "[open] 3x+1=7"}
    prefill = "<think>\n3x=7-1=6.\n\n"
    assert render_chat(tok, [user, {"role": "assistant", "content": prefill}]).endswith("<|assistant|>" + prefill)
    report = json.loads((micro_model / "build_report.json").read_text())
    assert report["parameters"] == sum(p.numel() for p in model.parameters())


def test_micro_model_has_learned_the_formats(micro_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mrt_star.formats.prompts import user_prompt
    from mrt_star.toy.traces import TOY_TEMPLATE

    tok = AutoTokenizer.from_pretrained(micro_model)
    model = AutoModelForCausalLM.from_pretrained(micro_model)
    rows = generate_problems(6, seed=99)
    prompts = [render_chat(tok, [{"role": "user", "content": user_prompt(r["problem"], TOY_TEMPLATE[fmt])}])
               for fmt in FORMATS for r in rows]
    tok.padding_side = "left"
    enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=250)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    backtrack, linearized, opened = texts[:6], texts[6:12], texts[12:]
    assert sum(t.startswith("Line 1: ") for t in backtrack) >= 5
    assert sum(t.startswith("<think>\n") for t in opened) >= 5
    assert sum(extract_answer(t, fallbacks=False) is not None for t in texts) >= 13  # most of 18 (600 steps: braces slip)
    assert not any(t.startswith(("Line", "<think>")) for t in linearized)
