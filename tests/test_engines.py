"""The engine contract, run against every engine available here (vLLM cases need CUDA and vllm)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mrt_star.engines import ENGINES, Request, SamplingParams, available_engines, load_engine
from mrt_star.engines.base import PromptTooLong, cut_at_stop
from mrt_star.errors import UserError

ENGINE_PARAMS = [
    pytest.param(kind, marks=[pytest.mark.vllm, pytest.mark.gpu] if kind == "vllm" else [],
                 id=kind) for kind in ENGINES
]


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def engine(request, micro_model):
    if request.param not in available_engines():
        pytest.skip(f"engine {request.param!r} is not available on this machine")
    # float32 on vLLM too (it would pick fp16 for a float32 checkpoint), so logprobs compare to a CPU pass.
    options = {"batch_size": 16} if request.param == "transformers" else {"gpu_memory_utilization": 0.3,
                                                                         "dtype": "float32"}
    eng = load_engine(request.param, str(micro_model), **options)
    yield eng
    eng.close()


def ask(problem: str, assistant: str | None = None) -> Request:
    messages = [{"role": "user", "content": f"[backtrack] {problem}"}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return Request(messages)


GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=40)


def greedy_text(engine, request, **kw) -> str:
    params = SamplingParams(**{**GREEDY.__dict__, **kw})
    return engine.generate([request], params)[0][0].text


def test_n_samples_per_request_in_order(engine):
    requests = [ask("12+7"), ask("3x+1=7"), ask("1/2+1/3")]
    out = engine.generate(requests, SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=0))
    assert [len(samples) for samples in out] == [3, 3, 3]
    for request, samples in zip(requests, out, strict=True):
        expected = engine.count_tokens([engine.render(request)])[0]
        assert all(c.prompt_tokens == expected for c in samples)
        assert all(c.finish_reason in ("stop", "length") for c in samples)


def test_prefill_is_continued_exactly(engine):
    prefix = "Line 1: 12+7=19\n  "  # trailing spaces and newline must survive rendering
    request = ask("12+7+3", prefix)
    rendered = engine.render(request)
    assert rendered.endswith(prefix)
    assert rendered == engine.render(ask("12+7+3")) + prefix
    # Greedy continuation is consistent: continuing from prefix + the first characters of the
    # completion gives exactly the rest of it (nothing lost or re-encoded at the seam).
    full = greedy_text(engine, request)
    assert len(full) >= 6
    rest = greedy_text(engine, ask("12+7+3", prefix + full[:4]), max_new_tokens=40 - 4)
    assert rest == full[4:]


def test_stop_strings_cut_and_reported(engine):
    request = ask("25-2+3+4")
    full = greedy_text(engine, request)
    stop = full[6:9]
    expected, which = cut_at_stop(full, [stop])
    assert which == stop
    out = engine.generate([request], SamplingParams(**{**GREEDY.__dict__, "stop": (stop, "@@never@@")}))[0][0]
    assert out.text == expected
    assert out.finish_reason == "stop" and out.stop_reason == stop
    # A stop string spanning the prompt/completion seam does not count: only generated text is matched.
    seam = engine.render(request)[-1] + full[0]
    out = engine.generate([request], SamplingParams(**{**GREEDY.__dict__, "stop": (seam,)}))[0][0]
    assert out.text == cut_at_stop(full, [seam])[0]


def test_token_counts_match_the_tokenizer(engine):
    texts = ["Line 1: 3+4=7\n", "\\boxed{\\frac{1}{2}}", ""]
    assert engine.count_tokens(texts) == [len(engine.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    before = engine.stats.completion_tokens
    out = engine.generate([ask("4x+9=5")], SamplingParams(n=4, temperature=1.0, max_new_tokens=30, seed=1))[0]
    assert engine.stats.completion_tokens - before == sum(c.completion_tokens for c in out)
    for c in out:
        assert engine.count_tokens([c.text])[0] <= c.completion_tokens <= 30


def test_same_seed_same_samples(engine):
    requests = [ask("22+4+2+6"), ask("1/2+4/6")]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=30, seed=7)
    texts = lambda out: [[c.text for c in samples] for samples in out]  # noqa: E731
    first, second = texts(engine.generate(requests, params)), texts(engine.generate(requests, params))
    assert first == second
    other = texts(engine.generate(requests, SamplingParams(**{**params.__dict__, "seed": 8})))
    assert other != first
    assert len({t for samples in first for t in samples}) > 1  # the n samples differ from each other


def test_finish_reasons(engine):
    out = engine.generate([ask("12+7"), ask("3x+1=7")], SamplingParams(n=3, temperature=1.0, max_new_tokens=3, seed=0))
    for c in (c for samples in out for c in samples):
        if c.finish_reason == "length":
            assert c.completion_tokens == 3 and c.stop_reason is None
        else:  # EOS within three tokens
            assert c.finish_reason == "stop" and c.stop_reason is None and c.completion_tokens <= 3
    long = engine.generate([ask("12+7")], SamplingParams(n=1, temperature=0.0, max_new_tokens=400))[0][0]
    assert long.finish_reason == "stop"  # the model ends its turn with EOS well before 400 tokens


def test_prompt_too_long_is_a_user_error(engine):
    with pytest.raises(PromptTooLong) as err:
        engine.generate([ask("1+1"), ask("9" * (engine.max_context + 10))], GREEDY)
    assert isinstance(err.value, UserError) and err.value.index == 1


def test_continuation_logprobs(engine, micro_model):
    import torch
    from transformers import AutoModelForCausalLM

    request = ask("12+7", "Line 1: ")
    likely = greedy_text(engine, request, max_new_tokens=12)
    junk = "}}}qqq@@!~~~"[: len(likely)]
    scores = engine.continuation_logprobs([request, request, request], [likely, junk, ""])
    assert scores[0] > scores[1] and scores[2] == 0.0
    # Against a manual forward pass of the prompt tokens + the continuation's own tokens.
    tok = engine.tokenizer
    prompt = tok(engine.render(request), add_special_tokens=False).input_ids
    cont = tok(likely, add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + cont])).logits[0].float().log_softmax(-1)
    manual = sum(float(logits[len(prompt) - 1 + j, t]) for j, t in enumerate(cont))
    assert scores[0] == pytest.approx(manual, abs=1e-3)


def test_one_prefill_serves_n_samples(micro_model):
    """transformers: n samples reuse one prompt KV cache and match n fresh prefills."""
    eng = load_engine("transformers", str(micro_model), batch_size=64)
    requests = [ask("25-2+3+4"), ask("4x+9=5"), ask("1/2+4/6")]
    lengths = eng.count_tokens([eng.render(r) for r in requests])
    single = eng.generate(requests, SamplingParams(n=1, temperature=0.0, max_new_tokens=30))
    before = eng.stats.prompt_tokens_encoded, eng.stats.prompt_tokens_requested
    shared = eng.generate(requests, SamplingParams(n=4, temperature=0.0, max_new_tokens=30))
    encoded = eng.stats.prompt_tokens_encoded - before[0]
    requested = eng.stats.prompt_tokens_requested - before[1]
    assert requested == 4 * sum(lengths)
    assert encoded == sum(n - 1 for n in lengths) + 4 * len(lengths)  # prefix once, last token per sample
    for one, four in zip(single, shared, strict=True):
        assert [c.text for c in four] == [one[0].text] * 4
    eng.close()


@pytest.mark.gpu
def test_transformers_engine_on_cuda(micro_model):
    """The same engine on a GPU: n samples from one prefill, seeds, stop strings, logprobs."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    eng = load_engine("transformers", str(micro_model), device="cuda", dtype="float32")
    requests = [ask("25-2+3+4"), ask("4x+9=5")]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=40, seed=3, stop=("\n",))
    first, second = eng.generate(requests, params), eng.generate(requests, params)
    assert [[c.text for c in s] for s in first] == [[c.text for c in s] for s in second]
    assert all("\n" not in c.text for s in first for c in s)
    assert eng.stats.prompt_tokens_encoded < eng.stats.prompt_tokens_requested
    greedy = eng.generate(requests, SamplingParams(n=3, temperature=0.0, max_new_tokens=30))
    single = eng.generate(requests, SamplingParams(n=1, temperature=0.0, max_new_tokens=30))
    assert [[c.text for c in s] for s in greedy] == [[s[0].text] * 3 for s in single]
    likely = single[0][0].text
    assert eng.continuation_logprobs([requests[0]] * 2, [likely, "}}}qqq"[: len(likely)]]) == sorted(
        eng.continuation_logprobs([requests[0]] * 2, [likely, "}}}qqq"[: len(likely)]]), reverse=True)
    eng.close()


def test_load_engine_errors(micro_model):
    with pytest.raises(UserError, match="transformers, vllm"):
        load_engine("tgi", str(micro_model))
    with pytest.raises(UserError, match="valid options"):
        load_engine("transformers", str(micro_model), beam_width=3)
    with pytest.raises(UserError, match="cannot load"):
        load_engine("transformers", "/nonexistent/model-folder")
    if "vllm" not in available_engines():
        from mrt_star.engines import vllm_installed

        if not vllm_installed():
            with pytest.raises(UserError, match=r"pip install 'mrt-star\[vllm\]'"):
                load_engine("vllm", str(micro_model))
    assert available_engines()[0] == "transformers"


def test_importing_engines_is_cheap():
    code = "import sys, mrt_star.engines; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _fake_vllm(monkeypatch, max_model_len=64):
    """Install a stand-in for the parts of vLLM's offline API the engine uses (LLM, SamplingParams,
    TokensPrompt, RequestOutput fields); it records what it was asked."""
    import types
    from types import SimpleNamespace as NS

    calls = []

    class FakeSamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class FakeLLM:
        def __init__(self, model, **options):
            self.options = options
            self.llm_engine = NS(model_config=NS(max_model_len=options.get("max_model_len", max_model_len)))

        def generate(self, prompts, params, use_tqdm=True):
            calls.append((prompts, [p.kw for p in params]))
            outs = []
            for prompt, p in zip(prompts, params, strict=True):
                ids = prompt["prompt_token_ids"]
                if p.kw.get("prompt_logprobs") is not None:
                    logprobs = [None] + [{t: NS(logprob=-0.5 * j), t + 1000: NS(logprob=-9.0)}
                                         for j, t in enumerate(ids) if j > 0]
                    outs.append(NS(outputs=[], prompt_logprobs=logprobs, num_cached_tokens=0))
                    continue
                samples = [NS(index=i, text=f"s{p.kw['seed']}-{i}", token_ids=[7] * (i + 1),
                              finish_reason="stop" if i % 2 == 0 else "length",
                              stop_reason="\n" if i == 0 else (2 if i == 2 else None)) for i in range(p.kw["n"])]
                outs.append(NS(outputs=samples[::-1], prompt_logprobs=None, num_cached_tokens=len(ids) // 2))
            return outs

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return calls


def test_vllm_adapter_against_a_stand_in(monkeypatch, micro_model):
    """The vLLM engine's mapping (token-id prompts, seeds, caps, outputs, prompt logprobs) without vLLM."""
    from mrt_star.engines.vllm_engine import VLLMEngine, _split

    calls = _fake_vllm(monkeypatch, max_model_len=64)
    eng = VLLMEngine(str(micro_model), enable_prefix_caching=True, max_num_seqs=8)
    assert eng.max_context == 64 and eng.name == "vllm"
    requests = [ask("12+7"), ask("3x+1=7", "Line 1: ")]
    lengths = eng.count_tokens([eng.render(r) for r in requests])
    out = eng.generate(requests, SamplingParams(n=3, temperature=0.7, max_new_tokens=100, seed=10, stop=("\n",)))
    prompts, settings = calls[-1]
    assert [p["prompt_token_ids"] for p in prompts] == [eng.tokenizer(eng.render(r), add_special_tokens=False).input_ids
                                                        for r in requests]
    assert [s["seed"] for s in settings] == [10, 13]  # request i starts at seed + i*n: no sample shares a seed
    assert [s["max_tokens"] for s in settings] == [64 - n for n in lengths]  # capped by the context
    assert settings[0]["stop"] == ["\n"] and settings[0]["include_stop_str_in_output"] is False
    assert [c.text for c in out[1]] == ["s13-0", "s13-1", "s13-2"]  # sample order restored
    assert [(c.finish_reason, c.stop_reason, c.completion_tokens) for c in out[0]] == [
        ("stop", "\n", 1), ("length", None, 2), ("stop", None, 3)]  # an int stop_reason is a token id
    assert eng.stats.prompt_tokens_requested == 3 * sum(lengths)
    assert eng.stats.prompt_tokens_encoded == sum(3 * n - n // 2 for n in lengths)
    scores = eng.continuation_logprobs([requests[0]], ["7}"])
    assert calls[-1][1][0]["prompt_logprobs"] == 1
    start = lengths[0]
    assert scores == [pytest.approx(sum(-0.5 * j for j in range(start, start + 2)))]
    with pytest.raises(PromptTooLong):
        eng.generate([ask("9" * 80)], GREEDY)
    eng.close()
    assert _split(10, 3) == [(0, 4), (4, 7), (7, 10)] and _split(2, 3) == [(0, 1), (1, 2), (2, 2)]


def test_vllm_adapter_greedy_asks_once(monkeypatch, micro_model):
    from mrt_star.engines.vllm_engine import VLLMEngine

    calls = _fake_vllm(monkeypatch)
    eng = VLLMEngine(str(micro_model))
    out = eng.generate([ask("12+7")], SamplingParams(n=3, temperature=0.0, max_new_tokens=5, seed=1))
    assert calls[-1][1][0]["n"] == 1 and [c.text for c in out[0]] == ["s1-0"] * 3
    eng.close()
