"""The vLLM engine: offline `vllm.LLM` sampling with prefix caching, tensor and data parallelism (CUDA only).

Prompts are rendered with our `render_chat` and tokenized with the model's Hugging Face tokenizer exactly
as the transformers engine does, then handed to vLLM as token ids (`TokensPrompt`), so a prefill means
the same tokens on both engines (a text prompt would let vLLM add a second BOS). The n samples of a
request are vLLM's parallel sampling (one request, `SamplingParams.n`), whose prompt blocks are shared
through the prefix cache; distinct requests with a common prefix (a problem's prompt, a trace's earlier
episodes) reuse it too.

Data parallelism runs `data_parallel_size` independent replicas, each in its own process pinned to
`tensor_parallel_size` GPUs; a call's requests are split into contiguous blocks (keeping shared prefixes
on one replica) and the answers merged back in order. Per-request seeds derive from the call's seed and
the request's index, so results do not depend on how requests were split.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from mrt_star.engines.base import (
    Completion,
    EngineStats,
    PromptText,
    PromptTooLong,
    Request,
    SamplingParams,
    encode_text,
    load_tokenizer,
)
from mrt_star.errors import UserError

# What comes back from a replica per request: ([(text, tokens, finish_reason, stop_reason)], cached tokens).
_Answer = tuple[list[tuple[str, int, str, str | None]], int]


class VLLMEngine(PromptText):
    """Sample with vLLM's offline `LLM`; extra keyword options go to `vllm.LLM` (e.g. max_num_seqs)."""

    name = "vllm"

    def __init__(self, model: str, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 enable_prefix_caching: bool = True, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, dtype: str = "auto", chat_template: str | None = None,
                 seed: int = 0, enforce_eager: bool = False, **llm_options: Any):
        if tensor_parallel_size < 1 or data_parallel_size < 1:
            raise UserError("tensor_parallel_size and data_parallel_size must be at least 1")
        self.model_name = str(model)
        self.tokenizer = load_tokenizer(self.model_name, chat_template)
        self.stats = EngineStats()
        options = dict(tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=enable_prefix_caching,
                       enforce_eager=enforce_eager, **llm_options)
        if max_model_len:
            options["max_model_len"] = int(max_model_len)
        self._llm = None
        self._replicas: list[_Replica] = []
        if data_parallel_size == 1:
            self._llm = _make_llm(self.model_name, options)
            context = _max_model_len(self._llm)
        else:
            groups = _gpu_groups(data_parallel_size, tensor_parallel_size)
            self._replicas = [_Replica(rank, gpus, self.model_name, options) for rank, gpus in enumerate(groups)]
            context = min(r.wait_ready() for r in self._replicas)
        self.max_context = int(max_model_len or context)

    # -- sampling ---------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        """Return `params.n` completions for each request, in request order."""
        start = time.perf_counter()
        ids = self._encode_requests(requests)
        # Greedy samples are all the same: ask for one (some vLLM versions refuse n > 1 when greedy).
        greedy = params.temperature <= 0 and params.n > 1
        asked = SamplingParams(**{**params.__dict__, "n": 1}) if greedy else params
        settings = [self._settings(asked, len(seq), i) for i, seq in enumerate(ids)]
        answers = self._dispatch("generate", ids, settings)
        results = []
        for seq, (samples, cached) in zip(ids, answers, strict=True):
            self.stats.completion_tokens += sum(s[1] for s in samples)
            self.stats.extra["prefix_cache_hit_tokens"] = self.stats.extra.get("prefix_cache_hit_tokens", 0) + cached
            # vLLM reports cache hits per request, not per parallel sample: the encoded count is an estimate.
            self.stats.prompt_tokens_encoded += max(asked.n, asked.n * len(seq) - cached)
            samples = samples * params.n if greedy else samples
            results.append([Completion(text, len(seq), tokens, "stop" if reason == "stop" else "length", stop)
                            for text, tokens, reason, stop in samples])
        self.stats.requests += len(requests)
        self.stats.prompt_tokens_requested += params.n * sum(len(s) for s in ids)
        self.stats.generate_seconds += time.perf_counter() - start
        return results

    def _settings(self, params: SamplingParams, prompt_len: int, index: int) -> dict[str, Any]:
        """Return the keyword arguments of one request's `vllm.SamplingParams` (plain data, picklable)."""
        # vLLM seeds a request's i-th parallel sample with seed + i; spacing requests n apart keeps every
        # sample's seed distinct across the call.
        seed = None if params.seed is None else int(params.seed) + index * params.n
        return dict(n=params.n, temperature=max(0.0, params.temperature), top_p=params.top_p,
                    max_tokens=max(1, min(params.max_new_tokens, self.max_context - prompt_len)),
                    stop=list(params.stop) or None, seed=seed, include_stop_str_in_output=False,
                    skip_special_tokens=True)

    def continuation_logprobs(self, requests: Sequence[Request], continuations: Sequence[str]) -> list[float]:
        """Return log P(continuation | rendered request) summed over the continuation's tokens (vLLM prompt
        logprobs of prompt tokens + separately tokenized continuation tokens, as the transformers engine)."""
        if len(requests) != len(continuations):
            raise ValueError("continuation_logprobs: one continuation per request")
        start = time.perf_counter()
        prompts = self._encode_requests(requests, room=0)
        conts = encode_text(self.tokenizer, list(continuations))
        seqs = [p + c for p, c in zip(prompts, conts, strict=True)]
        for i, seq in enumerate(seqs):
            if len(seq) + 1 > self.max_context:  # vLLM still samples one token after the sequence
                raise PromptTooLong(i, len(seq), self.max_context)
        settings = [dict(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)] * len(seqs)
        starts = [len(p) for p in prompts]
        sums = self._dispatch("logprobs", seqs, settings, starts)
        self.stats.requests += len(seqs)
        self.stats.prompt_tokens_requested += sum(len(s) for s in seqs)
        self.stats.prompt_tokens_encoded += sum(len(s) for s in seqs)
        self.stats.generate_seconds += time.perf_counter() - start
        return [float(x) for x in sums]

    def _dispatch(self, kind: str, prompts: list[list[int]], settings: list[dict], *extra: list) -> list:
        """Return the answers of one call, run in-process or split over the data-parallel replicas."""
        if self._llm is not None:
            return _RUNNERS[kind](self._llm, prompts, settings, *extra)
        blocks = _split(len(prompts), len(self._replicas))
        busy = []
        for replica, (a, b) in zip(self._replicas, blocks, strict=True):
            if b > a:
                replica.send(kind, (prompts[a:b], settings[a:b], *[e[a:b] for e in extra]))
                busy.append(replica)
        out: list = []
        for replica in busy:  # blocks are contiguous and in replica order, so answers concatenate in order
            out.extend(replica.receive())
        return out

    def close(self) -> None:
        """Free the GPUs so the next model loads: stop the replicas, shut the in-process engine down."""
        for replica in self._replicas:
            replica.stop()
        self._replicas = []
        if self._llm is not None:
            llm, self._llm = self._llm, None
            _shutdown_llm(llm)


def _shutdown_llm(llm: Any) -> None:
    """vLLM's documented teardown: drop the LLM (and its engine core), destroy the model-parallel groups and the
    distributed environment, collect, empty the CUDA cache. Best effort: shutdown must not raise."""
    import contextlib
    import gc

    engine = getattr(llm, "llm_engine", None)
    with contextlib.suppress(Exception):
        # V1 engine: stop the engine-core process (it holds the weights and the KV cache).
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    del engine, llm
    with contextlib.suppress(Exception):
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.synchronize()


# --- running on an LLM (in this process or in a replica) ---------------------------------------------


def _make_llm(model: str, options: dict[str, Any]) -> Any:
    try:
        from vllm import LLM
    except ImportError as err:
        raise UserError(f"engine 'vllm' cannot be imported ({err}); pip install 'mrt-star[vllm]'") from None
    return LLM(model=model, **options)


def _max_model_len(llm: Any) -> int:
    """Return the context length vLLM settled on (its attribute path moved between versions)."""
    engine = llm.llm_engine
    for path in (("model_config",), ("vllm_config", "model_config")):
        obj = engine
        for name in path:
            obj = getattr(obj, name, None)
        if obj is not None and getattr(obj, "max_model_len", None):
            return int(obj.max_model_len)
    raise RuntimeError("cannot read max_model_len from vLLM; pass max_model_len explicitly")


def _run_generate(llm: Any, prompts: list[list[int]], settings: list[dict]) -> list[_Answer]:
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs import TokensPrompt

    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                           [VLLMSamplingParams(**s) for s in settings], use_tqdm=False)
    answers = []
    for out in outputs:
        samples = [(o.text, len(o.token_ids), o.finish_reason or "length",
                    o.stop_reason if isinstance(o.stop_reason, str) else None)  # an int is a stop token id
                   for o in sorted(out.outputs, key=lambda o: o.index)]
        answers.append((samples, int(getattr(out, "num_cached_tokens", 0) or 0)))
    return answers


def _run_logprobs(llm: Any, seqs: list[list[int]], settings: list[dict], starts: list[int]) -> list[float]:
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs import TokensPrompt

    outputs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs],
                           [VLLMSamplingParams(**s) for s in settings], use_tqdm=False)
    sums = []
    for seq, start, out in zip(seqs, starts, outputs, strict=True):
        # prompt_logprobs[j] maps token ids (the actual token j among them) to Logprob; entry 0 is None.
        sums.append(sum(out.prompt_logprobs[j][seq[j]].logprob for j in range(max(start, 1), len(seq))))
    return sums


_RUNNERS = {"generate": _run_generate, "logprobs": _run_logprobs}


# --- data-parallel replicas ---------------------------------------------------------------------------


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """Return `parts` contiguous (start, end) blocks covering range(total) as evenly as possible."""
    size, rest = divmod(total, parts)
    bounds, start = [], 0
    for p in range(parts):
        end = start + size + (p < rest)
        bounds.append((start, end))
        start = end
    return bounds


def _gpu_groups(dp: int, tp: int) -> list[str]:
    """Return the CUDA_VISIBLE_DEVICES value of each replica (tp GPUs each), or raise UserError."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    else:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if dp * tp > len(gpus):
        raise UserError(f"data_parallel_size {dp} x tensor_parallel_size {tp} needs {dp * tp} GPUs; "
                        f"{len(gpus)} visible")
    return [",".join(gpus[r * tp : (r + 1) * tp]) for r in range(dp)]


def _replica_main(gpus: str, model: str, options: dict[str, Any], inbox: Any, outbox: Any) -> None:
    """Serve one replica: build an LLM on its GPUs, then answer (kind, payload) messages until None."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        llm = _make_llm(model, options)
        outbox.put(("ready", _max_model_len(llm)))
    except Exception as err:  # report, then exit: the parent raises it
        outbox.put(("error", f"{type(err).__name__}: {err}"))
        return
    while (message := inbox.get()) is not None:
        kind, payload = message
        try:
            outbox.put(("ok", _RUNNERS[kind](llm, *payload)))
        except Exception as err:
            outbox.put(("error", f"{type(err).__name__}: {err}"))
    _shutdown_llm(llm)  # release the GPUs before the process exits (stop() waits for it)


class _Replica:
    """One data-parallel replica: a spawned process holding its own `vllm.LLM`."""

    def __init__(self, rank: int, gpus: str, model: str, options: dict[str, Any]):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
        self.rank, self.inbox, self.outbox = rank, ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_replica_main, args=(gpus, model, options, self.inbox, self.outbox),
                                   daemon=False, name=f"mrt-star-vllm-dp{rank}")
        self.process.start()

    def wait_ready(self) -> int:
        status, value = self.outbox.get()
        if status != "ready":
            raise RuntimeError(f"vLLM replica {self.rank} failed to start: {value}")
        return int(value)

    def send(self, kind: str, payload: tuple) -> None:
        self.inbox.put((kind, payload))

    def receive(self) -> list:
        status, value = self.outbox.get()
        if status != "ok":
            raise RuntimeError(f"vLLM replica {self.rank}: {value}")
        return value

    def stop(self) -> None:
        if self.process.is_alive():
            self.inbox.put(None)
            self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        if self.process.is_alive():  # a replica stuck in CUDA ignores SIGTERM; its GPUs must come back
            self.process.kill()
            self.process.join(timeout=10)
