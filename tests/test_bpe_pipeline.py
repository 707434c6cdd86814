"""Every verb on the two toy BPE models: Qwen2.5's real BPE through DeepSeek-R1-Distill's template
(`toy-bpe`, Qwen2 architecture) and Llama-3.1-Instruct's template (`toy-bpe-llama`, Llama architecture).

generate (backtrack, linearized, open) → score (sample, likelihood) → filter (mrt, star, shortest) →
finetune (full, LoRA) → eval, and one round of `run`; plus the issue's command-line sequence. The models
are tiny and random apart from a warm start, so they are rarely right: the MRT rule here keeps the most
progress whatever the answer (`require_correct: false`, `min_j_end: -1`), and what is asserted is the
plumbing (row counts, columns, J in [0, 1], the thinking kept, label tokens equal to the tokenizer's
own encoding of the target, a fine-tuned model that reloads and samples), not accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrt_star.config import build_config

MODELS = ("toy-bpe", "toy-bpe-llama")
FORMATS = ("backtrack", "linearized", "open")
LIMIT, N = 2, 3
KEEP_ANY = {"require_correct": False, "min_j_end": -1.0}  # the MRT rule without the correctness gates


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def columns(folder: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(next(Path(folder).glob("shard-*.parquet")))
    # Parquet names a list's value field "element" where Arrow says "item": the same type.
    return {f.name: str(f.type).replace("list<element:", "list<item:") for f in schema}


def schema_of(*tables) -> dict[str, str]:
    from mrt_star.schemas import arrow_schema

    out = {}
    for table in tables:
        out.update({f.name: str(f.type) for f in arrow_schema(table)})
    return out


@pytest.fixture(scope="session")
def easy_problems(tmp_path_factory):
    """Return a file of LIMIT easy toy problems (linear, difficulty 1)."""
    from mrt_star.toy.problems import generate_problems

    path = tmp_path_factory.mktemp("bpe-problems") / "problems.jsonl"
    rows = generate_problems(LIMIT, seed=3, families=["linear"], difficulty=1)
    path.write_text("".join(json.dumps(p) + "\n" for p in rows))
    return path


@pytest.fixture(scope="session")
def bpe_models():
    """Return {name: folder} of the two tiny BPE models (built once into the cache, ~10 s each)."""
    import torch

    from mrt_star.models import resolve_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {m: Path(resolve_model(m)) for m in MODELS}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bpe_world(bpe_models, easy_problems, tmp_path_factory):
    """Return {model: folder}, tokenizers, and every generate output (model × format), built once."""
    import torch
    from transformers import AutoTokenizer

    from mrt_star.generate import GenerateConfig, run_generate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bpe-pipeline")
    problems = easy_problems
    models = bpe_models
    try:
        traces = {(m, f): run_generate(build_config(GenerateConfig, {
            "input": str(problems), "output": str(root / f"traces-{m}-{f}"), "model": m, "format": f, "n": N,
            "max_new_tokens": 48, "max_attempts": 2, "seed": 2})) for m in MODELS for f in FORMATS}
    finally:
        torch.set_num_threads(threads)
    tokenizers = {m: AutoTokenizer.from_pretrained(models[m]) for m in MODELS}
    return {"root": root, "models": models, "tok": tokenizers, "traces": traces, "problems": problems}


@pytest.fixture(scope="session")
def scored(bpe_world):
    """Return {model: scored folder}: open traces under the sample estimator (both compared), and
    {model: ...} step-wise (backtrack) traces under the likelihood estimator alone."""
    import torch

    from mrt_star.score import ScoreConfig, run_score

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root, out = bpe_world["root"], {}
    try:
        for m in MODELS:
            out[(m, "sample")] = run_score(build_config(ScoreConfig, {
                "input": str(bpe_world["traces"][(m, "open")]), "output": str(root / f"scored-{m}-open"),
                "estimator": "sample", "compare_estimators": True, "prover_k": 2, "prover_max_new_tokens": 12,
                "budgets": [32, 64]}))
            out[(m, "likelihood")] = run_score(build_config(ScoreConfig, {
                "input": str(bpe_world["traces"][(m, "backtrack")]), "output": str(root / f"scored-{m}-backtrack"),
                "estimator": "likelihood", "budgets": [32, 64]}))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def sft(bpe_world, scored):
    """Return {(model, rule): SFT folder} for the three rules on each model's open, scored traces."""
    from mrt_star.filter import FilterConfig, run_filter

    root, out = bpe_world["root"], {}
    for m in MODELS:
        for rule, extra in (("mrt", KEEP_ANY), ("star", {}), ("shortest", {})):
            out[(m, rule)] = run_filter(build_config(FilterConfig, {
                "input": str(scored[(m, "sample")]), "output": str(root / f"sft-{m}-{rule}"), "rule": rule, **extra}))
    return out


# --- generate -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_generate_writes_every_format_through_the_real_template(bpe_world, model):
    from mrt_star.formats.chat import render_chat
    from mrt_star.schemas import TRACES
    from mrt_star.store import read_rows

    tok = bpe_world["tok"][model]
    for fmt in FORMATS:
        folder = bpe_world["traces"][(model, fmt)]
        rows = read_rows(folder)
        assert len(rows) == LIMIT * N and columns(folder) == schema_of(TRACES)
        for r in rows:
            assert r["format"] == fmt and r["model"] == model
            assert "".join(e["text"] for e in r["episodes"]) == r["completion"]
            head = render_chat(tok, list(r["prompt"]))
            if model == "toy-bpe":  # R1's generation prompt opens the thinking; the trace starts inside it
                assert head.endswith("<｜Assistant｜><think>\n")
                if fmt == "open":
                    assert r["completion"].startswith("<think>\n")
                    assert render_chat(tok, [*r["prompt"], {"role": "assistant", "content": r["completion"]}]) == (
                        head + r["completion"][len("<think>\n"):])
            else:
                assert head.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
                assert not r["completion"].startswith("<think>")
            # Special tokens never leak into the text; the count is the sampler's, within a token of re-encoding.
            assert "<｜end▁of▁sentence｜>" not in r["completion"] and "<|eot_id|>" not in r["completion"]
            assert len(enc(tok, r["completion"])) <= r["num_tokens"] + 1


# --- score --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_score_with_each_estimator_charges_the_tokenizers_own_prompt_tokens(bpe_world, scored, model):
    from mrt_star.formats.chat import render_chat
    from mrt_star.progress.prover import prover_queries
    from mrt_star.schemas import SCORED, TRACES
    from mrt_star.store import read_manifest, read_rows

    tok = bpe_world["tok"][model]
    for estimator in ("sample", "likelihood"):
        folder = scored[(model, estimator)]
        rows = read_rows(folder)
        assert len(rows) == LIMIT * N and columns(folder) == schema_of(TRACES, SCORED)
        for r in rows:
            assert r["estimator"] == estimator
            assert len(r["j_values"]) == len(r["episodes"]) + 1 and all(0.0 <= j <= 1.0 for j in r["j_values"])
            assert r["j_tokens"][-1] == sum(e["num_tokens"] for e in r["episodes"])
            assert r["j_likelihood"] is not None and all(0.0 <= j <= 1.0 for j in r["j_likelihood"])
            if estimator == "sample":
                assert r["j_values"] == r["j_sample"] and all(len(a) == 2 for a in r["prover_answers"])
            else:
                assert r["j_values"] == r["j_likelihood"] and r["j_sample"] is None and r["prover_tokens"] == 0
        assert read_manifest(folder)["summary"]["traces"] == LIMIT * N
    # The prefills charged equal the one-string encodings of the distinct rendered prover prompts.
    rows = read_rows(scored[(model, "sample")])
    distinct = {q for r in rows for q in prover_queries(list(r["prompt"]), [e["text"] for e in r["episodes"]],
                                                        r["format"], r["answer"])}
    assert sum(r["prover_prompt_tokens"] for r in rows) == sum(len(enc(tok, render_chat(tok, q.messages())))
                                                               for q in distinct)
    if model == "toy-bpe":  # R1: the empty prefix's stop text follows the template's own <think>\n
        q = prover_queries(list(rows[0]["prompt"]), [e["text"] for e in rows[0]["episodes"]], "open", "1")[0]
        assert render_chat(tok, q.messages()).endswith("<｜Assistant｜><think>\nTime is up.\n\n" + q.forced[
            len("<think>\nTime is up.\n\n"):])


def test_score_dry_run_reports_prover_tokens_without_writing(bpe_world, tmp_path, capsys):
    from mrt_star.score import ScoreConfig, run_score

    out = tmp_path / "dry"
    run_score(build_config(ScoreConfig, {"input": str(bpe_world["traces"][("toy-bpe", "open")]), "output": str(out),
                                         "dry_run": True}))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "prefix tokens encoded" in text and "prover calls" in text and not out.exists()


# --- filter -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_filter_each_rule(bpe_world, scored, sft, model):
    from mrt_star.schemas import SFT
    from mrt_star.store import read_rows

    traces = read_rows(scored[(model, "sample")])
    correct = [r for r in traces if r["correct"]]
    mrt, star, shortest = (read_rows(sft[(model, rule)]) for rule in ("mrt", "star", "shortest"))
    assert len(mrt) == len({r["problem_id"] for r in mrt}) == LIMIT and {r["rule"] for r in mrt} == {"mrt"}
    assert columns(sft[(model, "mrt")]) == schema_of(SFT)
    by_key = {(r["problem_id"], r["sample_index"]): r for r in traces}
    for row in mrt:
        trace = by_key[(row["problem_id"], row["sample_index"])]
        content = row["completion"][0]["content"]
        assert row["prompt"] == trace["prompt"] and row["prefix"] + row["suffix"] == content
        assert [m["role"] for m in row["completion"]] == ["assistant"]
        if not row["trimmed"]:  # the whole trace, thinking included, as sampled
            assert content == trace["completion"]
            assert row["cumulative_progress"] == pytest.approx(trace["cumulative_progress"])
    assert len(star) == len(correct)
    assert len(shortest) == len({r["problem_id"] for r in correct})
    if model == "toy-bpe":
        assert correct, "toy-bpe sampled no correct open trace for these seeds: star/shortest have nothing to keep"


# --- finetune -----------------------------------------------------------------------------------------


def _finetune(bpe_world, sft_folder: Path, out: Path, **values):
    import torch

    from mrt_star.finetune import FinetuneConfig, run_finetune

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_finetune(build_config(FinetuneConfig, {
            "input": str(sft_folder), "output": str(out), "learning_rate": 1e-2, "warmup_ratio": 0.0,
            "max_steps": 2, "per_device_train_batch_size": 2, "probe_examples": 2, "lr_scheduler_type": "constant",
            **values}))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("model", "lora"), [("toy-bpe", False), ("toy-bpe-llama", True)])
def test_sft_labels_are_exactly_the_target_and_the_model_reloads_and_samples(bpe_world, sft, model, lora, tmp_path):
    from safetensors.torch import load_file

    from mrt_star.engines.base import Request, SamplingParams
    from mrt_star.engines.transformers_engine import TransformersEngine
    from mrt_star.finetune import encode_example
    from mrt_star.formats.chat import assistant_end, render_chat, template_opens_think
    from mrt_star.store import read_rows

    tok = bpe_world["tok"][model]
    rows = read_rows(sft[(model, "mrt")])
    end = assistant_end(tok)
    expected_trainable = 0
    for row, suffix_only in [(r, False) for r in rows] + [(r, True) for r in rows if r["prefix"]]:
        prompt, content = list(row["prompt"]), row["completion"][0]["content"]
        prefix, target = (row["prefix"], row["suffix"]) if suffix_only else ("", content)
        ids, labels = encode_example(tok, prompt, prefix, target)
        trained = [t for t in labels if t != -100]
        context = render_chat(tok, [*prompt, {"role": "assistant", "content": prefix}] if prefix else prompt)
        opened = "<think>\n" if not prefix and template_opens_think(tok) and target.startswith("<think>\n") else ""
        assert opened == ("<think>\n" if model == "toy-bpe" and not prefix else "")
        text = target[len(opened):] + end  # the trace minus a template-opened <think>, then the end of turn
        assert ids == enc(tok, context + text)
        assert tok.decode(trained) == text  # every character of the target, thinking included, nothing else
        if enc(tok, context) + enc(tok, text) == ids:  # no BPE merge across the boundary: the ids themselves
            assert trained == enc(tok, text)
        expected_trainable += 0 if suffix_only else len(trained)
    out = _finetune(bpe_world, sft[(model, "mrt")], tmp_path / "model", lora=lora, lora_r=4)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["base_model"] == str(bpe_world["models"][model])  # the traces' model, not the char-level toy
    assert summary["examples_used"] == len(rows) and summary["trainable_tokens"] == expected_trainable
    assert summary["lora"] is lora and summary["steps"] == 2
    before = load_file(bpe_world["models"][model] / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert set(after) >= set(before) - {"lm_head.weight"}
    assert any(not (after[k] == before[k]).all() for k in before if k in after)  # the weights moved
    engine = TransformersEngine(str(out), device="cpu", dtype="float32", threads=1)
    assert engine.tokenizer.chat_template == tok.chat_template
    # The end-of-turn ids survive the save (Llama-3.1: <|eot_id|>, <|eom_id|>, <|end_of_text|>).
    ends = {"toy-bpe": ["<｜end▁of▁sentence｜>"], "toy-bpe-llama": ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]}
    assert engine.eos_ids == set(tok.convert_tokens_to_ids(ends[model]))
    prompt = list(rows[0]["prompt"])
    assert engine.render(Request(prompt)) == render_chat(tok, prompt)
    outs = engine.generate([Request(prompt)], SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=0))[0]
    assert len(outs) == 2 and all(1 <= c.completion_tokens <= 16 for c in outs)


# --- eval and run -------------------------------------------------------------------------------------


def test_eval_compares_both_models(bpe_world, tmp_path):
    import torch

    from mrt_star.eval.stage import EvalConfig, run_eval
    from mrt_star.schemas import EVAL_SAMPLES
    from mrt_star.store import read_rows

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run_eval(build_config(EvalConfig, {
            "models": list(MODELS), "input": str(bpe_world["problems"]), "format": "linearized", "n": 2,
            "k_values": [1, 2], "max_new_tokens": 32, "max_attempts": 2, "plots": False,
            "output": str(tmp_path / "eval")}))
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    assert len(metrics) == 2
    for m in metrics.values():
        assert m["problems"] == LIMIT and m["n"] == 2
    rows = read_rows(out)
    assert len(rows) == 2 * LIMIT * 2 and columns(out) == schema_of(EVAL_SAMPLES)
    assert {r["model_path"] for r in rows} == {str(p) for p in bpe_world["models"].values()}


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_one_round_of_run(bpe_models, easy_problems, model, tmp_path):
    import torch

    from mrt_star.loop import RunConfig, run_loop

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run_loop(build_config(RunConfig, {
            "model": model, "rounds": 1, "rules": ["mrt"], "input": str(easy_problems),
            "output": str(tmp_path / "run"),
            "generate": {"format": "open" if model == "toy-bpe" else "backtrack", "n": 2, "max_new_tokens": 48},
            "score": {"prover_k": 2, "prover_max_new_tokens": 12, "budgets": [32]},
            "filter": dict(KEEP_ANY),
            "finetune": {"max_steps": 1, "per_device_train_batch_size": 2, "probe_examples": 1}}))
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((out / "run_summary.json").read_text())
    assert [(r["rule"], r["round"]) for r in summary] == [("mrt", 1)]
    assert summary[0]["filter"]["kept_rows"] == LIMIT
    trained = json.loads(next(out.rglob("training_summary.json")).read_text())
    assert trained["base_model"] == str(bpe_models[model])


# --- the command line -------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_generate_score_filter_finetune_on_toy_bpe(tmp_path):
    """`mrt-star generate --model toy-bpe --format open --limit 2 --n 2 --output OUT`, then score, filter
    and finetune on it, each a fresh `python -m mrt_star.cli` process (as from a clean clone)."""
    env = {"OMP_NUM_THREADS": "1", "PATH": "", "HOME": str(Path.home()), "TOKENIZERS_PARALLELISM": "false"}

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "mrt_star.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    cli("generate", "--model", "toy-bpe", "--format", "open", "--limit", "2", "--n", "2", "--output", "OUT")
    cli("score", "--input", "OUT", "--output", "SCORED")
    # The tiny model is rarely right: keep the most progress per problem whatever the answer.
    cli("filter", "--input", "SCORED", "--output", "SFT", "--require-correct", "false", "--min-j-end", "-1")
    cli("finetune", "--input", "SFT", "--output", "MODEL")
    from mrt_star.store import read_rows

    traces = read_rows(tmp_path / "OUT")
    assert len(traces) == 4 and all(r["completion"].startswith("<think>\n") for r in traces)
    assert len(read_rows(tmp_path / "SFT")) == 2
    summary = json.loads((tmp_path / "MODEL" / "training_summary.json").read_text())
    assert "toy-bpe" in summary["base_model"] and summary["examples_used"] == 2
