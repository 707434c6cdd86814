"""`mrt-star generate`: the three formats on the micro toy model, format logic on a scripted engine,
kill-and-resume, and bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mrt_star.engines.base import Completion, EngineStats, Request, SamplingParams, render_request
from mrt_star.formats.episodes import split_episodes
from mrt_star.formats.prompts import ATTEMPT_SEPARATOR, BACKTRACK_RE
from mrt_star.generate import GenerateConfig, run_generate
from mrt_star.schemas import TRACES
from mrt_star.store import read_manifest, read_rows, shard_files
from mrt_star.trace_sampling import BACKTRACK_STOP, backtrack_prefix, sample_backtrack, sample_linearized


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    from mrt_star.toy.problems import generate_problems

    path = tmp_path_factory.mktemp("problems") / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate_problems(16, seed=5)))
    return path


def run(problems_file, tmp_path, micro_model, **kw):
    options = dict(input=str(problems_file), output=str(tmp_path / "traces"), model=str(micro_model), n=2,
                   max_new_tokens=60, limit=4, grading="hendrycks", shard_size=2)
    cfg = GenerateConfig(**{**options, **kw})
    return cfg, read_rows(run_generate(cfg))


def check_rows(rows, fmt):
    for r in rows:
        assert set(r) == set(TRACES)
        assert r["format"] == fmt and r["finish_reason"] in ("stop", "length")
        assert "".join(e["text"] for e in r["episodes"]) == r["completion"]
        assert [e["text"] for e in r["episodes"]] == split_episodes(r["completion"], fmt)
        assert r["num_tokens"] == len(r["completion"])  # the toy tokenizer: one token per character
        assert all(e["num_tokens"] == len(e["text"]) for e in r["episodes"])
        assert r["prompt"][-1]["role"] == "user" and r["prompt"][-1]["content"].startswith(f"[{fmt}] ")


# --- the three formats on the micro model ------------------------------------------------------------


def test_backtrack_traces(problems_file, tmp_path, micro_model):
    cfg, rows = run(problems_file, tmp_path, micro_model, grading="symbolic")
    assert len(rows) == 8 and sorted({r["sample_index"] for r in rows}) == [0, 1]
    check_rows(rows, "backtrack")
    for r in rows:
        assert BACKTRACK_RE.search(r["completion"])
        if r["episodes"][0]["text"].strip():  # a non-empty first attempt, then backtrack + revision
            assert len(r["episodes"]) >= 2 and BACKTRACK_RE.match(r["episodes"][1]["text"])
    summary = read_manifest(cfg.output)["summary"]
    for key in ("traces", "tokens", "tokens_per_second", "boxed_share", "first_attempt_accuracy",
                "final_accuracy", "skipped_prompts"):
        assert key in summary
    assert summary["traces"] == 8 and summary["skipped_prompts"] == 0


def test_linearized_traces(problems_file, tmp_path, micro_model):
    _, rows = run(problems_file, tmp_path, micro_model, format="linearized", max_attempts=3, continue_after_eos=True)
    check_rows(rows, "linearized")
    attempts = [len(r["episodes"]) for r in rows]
    assert max(attempts) <= 3 and max(attempts) >= 2
    for r in rows:
        if len(r["episodes"]) > 1:
            assert all(e["text"].startswith(ATTEMPT_SEPARATOR) for e in r["episodes"][1:])


def test_open_traces(problems_file, tmp_path, micro_model):
    _, rows = run(problems_file, tmp_path, micro_model, format="open", max_new_tokens=80)
    check_rows(rows, "open")


def test_open_puts_a_template_opened_think_back():
    from mrt_star.formats.chat import render_chat
    from mrt_star.toy.tokenizer import ASSISTANT, CHAT_TEMPLATE
    from mrt_star.trace_sampling import sample_open

    engine = ScriptedEngine(lambda prefill, params: ("1+1=2.\n</think>\n\n\\boxed{2}", "stop", None))
    # An R1-style template: the generation prompt already opens the thinking block.
    engine.tokenizer.chat_template = CHAT_TEMPLATE.replace(f"{{%- if add_generation_prompt -%}}{ASSISTANT}",
                                                           f"{{%- if add_generation_prompt -%}}{ASSISTANT}{{{{ '<think>\\n' }}}}")
    trace = sample_open(engine, None, GenerateConfig(format="open", n=1), [item()], seed=0)[0]
    assert trace.text == "<think>\n1+1=2.\n</think>\n\n\\boxed{2}"
    # Prefilling the trace back (as the prover does) renders the thinking block once.
    prompt = item()["prompt"]
    rendered = render_chat(engine.tokenizer, [*prompt, {"role": "assistant", "content": trace.text}])
    assert rendered.count("<think>") == 1 and rendered.endswith(trace.text[len("<think>\n"):])


# --- format logic on a scripted engine ---------------------------------------------------------------


class ScriptedEngine:
    """An engine whose completions come from a function of (assistant prefill, params)."""

    name = "scripted"

    def __init__(self, script, max_context=1024):
        from mrt_star.toy.tokenizer import build_tokenizer

        self.tokenizer = build_tokenizer()
        self.script, self.max_context, self.stats, self.calls = script, max_context, EngineStats(), []

    def render(self, request: Request) -> str:
        return render_request(self.tokenizer, request)

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def generate(self, requests, params: SamplingParams):
        self.calls.append((list(requests), params))
        out = []
        for r in requests:
            prefill = r.messages[-1]["content"] if r.is_prefill else ""
            text, reason, stop = self.script(prefill, params)
            out.append([Completion(text, len(self.render(r)), len(text), reason, stop)] * params.n)
        return out


def item(answer="7"):
    return {"problem_id": "p", "problem": "3+4", "answer": answer,
            "prompt": [{"role": "user", "content": "[linearized] 3+4"}]}


def test_linearized_chain_conditions_on_earlier_attempts():
    from mrt_star.grading import Grader

    def script(prefill, params):
        k = prefill.count(ATTEMPT_SEPARATOR)
        assert params.stop == (ATTEMPT_SEPARATOR,)
        return f"3+4={5 + k}\n\\boxed{{{5 + k}}}", "stop", ATTEMPT_SEPARATOR

    engine, grader = ScriptedEngine(script), Grader(mode="hendrycks")
    cfg = GenerateConfig(format="linearized", n=2, max_attempts=4)
    traces = sample_linearized(engine, grader, cfg, [item()], seed=0)
    assert len(traces) == 2 and len(engine.calls) == 4
    assert split_episodes(traces[0].text, "linearized") == [
        "3+4=5\n\\boxed{5}", ATTEMPT_SEPARATOR + "3+4=6\n\\boxed{6}", ATTEMPT_SEPARATOR + "3+4=7\n\\boxed{7}",
        ATTEMPT_SEPARATOR + "3+4=8\n\\boxed{8}"]
    # Attempt 3 is the first correct one: the chain ends there.
    early = sample_linearized(ScriptedEngine(script), grader,
                              GenerateConfig(format="linearized", n=1, max_attempts=4, stop_at_first_correct=True),
                              [item()], seed=0)
    assert early[0].text.count(ATTEMPT_SEPARATOR) == 2 and early[0].text.endswith("\\boxed{7}")
    # A chain whose next prefill would not fit the context ends, cut short.
    tight = sample_linearized(ScriptedEngine(script, max_context=60), grader, cfg, [item()], seed=0)
    assert tight[0].finish_reason == "length" and tight[0].text.count(ATTEMPT_SEPARATOR) < 3


def test_linearized_follows_the_model_when_it_ends_its_turn():
    def script(prefill, params):
        return "3+4=7\n\\boxed{7}", "stop", None  # EOS: the model is done

    traces = sample_linearized(ScriptedEngine(script), None, GenerateConfig(format="linearized", n=1), [item()], 0)
    assert traces[0].text == "3+4=7\n\\boxed{7}"


def test_backtrack_prefix_variants():
    attempt = "Line 1: 3+4=7\nLine 2: 7*2=15\nLine 3: 15-1=14\n\\boxed{14}"
    rng = random.Random(0)
    shared = backtrack_prefix(attempt, "shared_prefix", rng, mark=2)
    assert shared == attempt + "\nBacktrack to Line 2\nLine 1: 3+4=7\n"
    assert backtrack_prefix(attempt, "no_shared_prefix", rng, mark=3) == attempt + "\nBacktrack to Line 3\n"
    assert backtrack_prefix(attempt, "restart", rng, mark=2) == attempt + "\nBacktrack to beginning\n"
    assert backtrack_prefix(attempt, "shared_prefix", rng, mark=0) == attempt + "\nBacktrack to beginning\n"
    assert backtrack_prefix("\\boxed{3}", "shared_prefix", rng) == "\\boxed{3}\nBacktrack to beginning\n"
    drawn = {backtrack_prefix(attempt, "shared_prefix", random.Random(s), mark=9) for s in range(20)}
    assert len(drawn) == 3  # an unknown mark falls back to a random step: all three occur
    for prefix in drawn:
        episodes = split_episodes(prefix + "Line 2: 7*2=14\n\\boxed{13}", "backtrack")
        assert episodes[0] == attempt + "\n" and BACKTRACK_RE.match(episodes[1])


def test_marked_backtrack_point_comes_from_the_model():
    attempt = "Line 1: 3+4=7\nLine 2: 7*2=15\nLine 3: 15-1=14\nCheck Line 2: 7*2=14 wrong"

    def script(prefill, params):
        if not prefill:
            assert BACKTRACK_STOP in params.stop
            return attempt, "stop", BACKTRACK_STOP
        if prefill.endswith(BACKTRACK_STOP):
            assert params.stop == ("\n",)
            return " Line 2", "stop", "\n"
        return "Line 2: 7*2=14\nLine 3: 14-1=13\n\\boxed{13}", "stop", None

    cfg = GenerateConfig(format="backtrack", n=1, backtrack_point="marked")
    engine = ScriptedEngine(script)
    trace = sample_backtrack(engine, None, cfg, [item("13")], seed=0)[0]
    assert trace.text == (attempt + "\nBacktrack to Line 2\nLine 1: 3+4=7\n"
                          "Line 2: 7*2=14\nLine 3: 14-1=13\n\\boxed{13}")
    assert len(split_episodes(trace.text, "backtrack")) == 2 and len(engine.calls) == 3


# --- resume and bad input ----------------------------------------------------------------------------


def test_kill_and_resume(problems_file, tmp_path, micro_model):
    from mrt_star.cli import main

    out = tmp_path / "traces"
    argv = ["generate", "--input", str(problems_file), "--output", str(out), "--model", str(micro_model),
            "--format", "open", "--n", "2", "--max-new-tokens", "120", "--shard-size", "2", "--grading", "hendrycks"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mrt_star.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "shard-00000.parquet"
    deadline = time.time() + 60
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    done_before = len(shard_files(out))
    assert done_before < 8, "the run finished before it could be killed"
    assert read_manifest(out)["status"] == "running"
    kept = first.stat().st_mtime_ns

    assert main(argv) == 0
    rows = read_rows(out)
    assert len(rows) == 16 * 2
    assert len({(r["problem_id"], r["sample_index"]) for r in rows}) == len(rows)
    assert first.stat().st_mtime_ns == kept  # finished shards are not redone
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["resumed"] >= 1


def test_model_without_chat_template(problems_file, tmp_path, micro_model, capsys):
    from mrt_star.cli import main
    from mrt_star.toy.tokenizer import CHAT_TEMPLATE

    bare = tmp_path / "bare-model"
    shutil.copytree(micro_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "traces"
    argv = ["generate", "--input", str(problems_file), "--output", str(out), "--model", str(bare), "--limit", "1",
            "--n", "1", "--max-new-tokens", "8", "--grading", "hendrycks", "--prompt-template", "toy-backtrack"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--chat-template" in err
    assert not out.exists()
    template = tmp_path / "toy.jinja"
    template.write_text(CHAT_TEMPLATE)
    assert main([*argv, "--chat-template", str(template)]) == 0
    assert len(read_rows(out)) == 1


def test_prompt_longer_than_the_context_is_skipped(tmp_path, micro_model):
    problems = tmp_path / "problems.jsonl"
    rows = [{"problem": "12+7", "answer": "19"}, {"problem": "3" * 1100 + "+1", "answer": "4"},
            {"problem": "2x+1=7", "answer": "3"}]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg, out = run(problems, tmp_path, micro_model, format="open", n=1, max_new_tokens=20)
    assert sorted(r["problem"] for r in out) == ["12+7", "2x+1=7"]
    manifest = read_manifest(cfg.output)
    assert manifest["summary"]["skipped_prompts"] == 1 and manifest["counts"]["skipped_prompts"] == 1
