"""The transformers engine: batched sampling with Hugging Face `generate`, on CPU or one CUDA device.

The n samples of one prompt share one prefill. `generate(num_return_sequences=n)` repeats the prompt n
times *before* the prefill, so it would encode the prompt n times; instead the prompt minus its last
token runs through the model once, its KV cache is repeated n times, and `generate` continues from that
cache (it then encodes only the last prompt token of each sample). `EngineStats.prompt_tokens_encoded`
counts what really ran; `prompt_tokens_requested` what n separate prompts would have cost.

Stop strings are matched on the generated text only (never across the prompt boundary, as in vLLM):
a stopping criterion decodes the tail of each sample, and the returned text is cut before the stop.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
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
    cut_at_stop,
    encode_text,
    load_tokenizer,
)
from mrt_star.errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")
SMALL_MODEL_PARAMS = 50_000_000  # below this, CPU sampling runs single-threaded by default


class TransformersEngine(PromptText):
    """Sample with a Hugging Face causal LM; `batch_size` is the number of sequences decoded together."""

    name = "transformers"

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", batch_size: int = 64,
                 chat_template: str | None = None, max_context: int | None = None,
                 attn_implementation: str | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        if batch_size < 1:
            raise UserError(f"batch_size: must be at least 1, got {batch_size}")
        self.model_name = str(model)
        self.tokenizer = load_tokenizer(self.model_name, chat_template)
        self.device = _pick_device(device)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                self.model_name, dtype=_pick_dtype(dtype, self.device), **extra).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise UserError(f"model {self.model_name!r}: cannot load it ({str(err).splitlines()[0]})") from None
        self.batch_size = int(batch_size)
        self.max_context = int(max_context or _context_length(self.model.config, self.tokenizer))
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.stats = EngineStats()
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._torch = torch
        self.threads = threads or _default_threads(self.model, self.device)
        self._stop_masks: dict[str, Any] = {}
        self._token_texts: dict[str, list[str]] = {}

    # -- sampling ---------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        """Return `params.n` completions for each request, in request order (one prefill per request)."""
        if params.n < 1:
            raise ValueError(f"n must be at least 1, got {params.n}")
        start = time.perf_counter()
        ids = self._encode_requests(requests)
        results: list[list[Completion | None]] = [[None] * params.n for _ in requests]
        with self._seeded(params.seed), self._threads(), self._torch.inference_mode():
            for batch, k in self._plan(ids, params.n):
                completions = self._sample_batch([ids[i] for i, _ in batch], k, params)
                for (i, first), samples in zip(batch, completions, strict=True):
                    results[i][first : first + k] = samples
        self.stats.requests += len(requests)
        self.stats.prompt_tokens_requested += params.n * sum(len(s) for s in ids)
        self.stats.generate_seconds += time.perf_counter() - start
        return results  # type: ignore[return-value]

    def _plan(self, ids: list[list[int]], n: int) -> list[tuple[list[tuple[int, int]], int]]:
        """Return batches of (request index, first sample index) units, each unit drawing k samples.

        Units of similar length share a batch (less padding); a batch holds at most `batch_size` rows.
        """
        k = min(n, self.batch_size)
        units = [(i, first) for i in range(len(ids)) for first in range(0, n, k)]
        units.sort(key=lambda u: -len(ids[u[0]]))
        batches: list[tuple[list[tuple[int, int]], int]] = []
        per_batch = max(1, self.batch_size // k)
        # The last chunk of a request can be smaller than k; those go in batches of their own size.
        for size in sorted({min(k, n - first) for _, first in units}, reverse=True):
            same = [u for u in units if min(k, n - u[1]) == size]
            step = max(1, self.batch_size // size) if size != k else per_batch
            batches += [(same[j : j + step], size) for j in range(0, len(same), step)]
        return batches

    def _sample_batch(self, prompts: list[list[int]], k: int, params: SamplingParams) -> list[list[Completion]]:
        """Return k completions for each prompt of one batch."""
        input_ids, mask = self._left_pad(prompts)
        width = input_ids.shape[1]
        kwargs = self._sampling_kwargs(params, max_new=max(1, min(params.max_new_tokens, self.max_context - width)))
        if k > 1 and width > 1:
            # One prefill for all k samples: run the prompt minus its last token once, repeat the cache.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = {"logits_to_keep": 1} if self._keeps_logits else {}
            out = self.model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1],
                             position_ids=positions[:, :-1], use_cache=True, **keep)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            cache.batch_repeat_interleave(k)
            kwargs["cache"] = cache
            self.stats.prompt_tokens_encoded += sum(len(p) - 1 for p in prompts) + k * len(prompts)
        else:
            self.stats.prompt_tokens_encoded += k * sum(len(p) for p in prompts)
        input_ids, mask = input_ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        stopper = _StopStrings(self.tokenizer, params.stop, width, self._enders(params.stop)) if params.stop else None
        if stopper is not None:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([stopper])
        sequences = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        generated = sequences[:, width:].tolist()
        rows = [self._completion(tokens, stopper.fired.get(r) if stopper else None, len(prompts[r // k]),
                                 params.stop) for r, tokens in enumerate(generated)]
        return [rows[j * k : (j + 1) * k] for j in range(len(prompts))]

    def _completion(self, tokens: list[int], stopped_at: int | None, prompt_tokens: int,
                    stop: Sequence[str]) -> Completion:
        """Return the Completion of one generated row (cut at EOS or at the first stop string)."""
        eos_at = next((j for j, t in enumerate(tokens) if t in self.eos_ids), None)
        if eos_at is not None and (stopped_at is None or eos_at < stopped_at):
            text = self.tokenizer.decode(tokens[:eos_at], skip_special_tokens=True)
            text, which = cut_at_stop(text, stop)
            self.stats.completion_tokens += eos_at + 1
            return Completion(text, prompt_tokens, eos_at + 1, "stop", which)
        used = stopped_at if stopped_at is not None else len(tokens)
        text, which = cut_at_stop(self.tokenizer.decode(tokens[:used], skip_special_tokens=True), stop)
        self.stats.completion_tokens += used
        return Completion(text, prompt_tokens, used, "stop" if which is not None else "length", which)

    def _sampling_kwargs(self, params: SamplingParams, max_new: int) -> dict[str, Any]:
        # Every knob set explicitly: generate() fills unset ones from the model's generation_config
        # (a top_k=50 or a repetition penalty there would silently change the distribution).
        kwargs = dict(max_new_tokens=max_new, num_beams=1, num_return_sequences=1, repetition_penalty=1.0,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids))
        if params.temperature <= 0:
            return {**kwargs, "do_sample": False}
        return {**kwargs, "do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}

    def _left_pad(self, seqs: list[list[int]]):
        torch = self._torch
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask

    def _enders(self, stop: Sequence[str]) -> Any:
        """Return a bool mask over token ids: tokens whose text could complete one of the stop strings."""
        lasts = "".join(sorted({s[-1] for s in stop if s}))
        if lasts not in self._stop_masks:
            if "all" not in self._token_texts:
                size = max(len(self.tokenizer), int(getattr(self.model.config, "vocab_size", 0) or 0))
                # The Rust decoder directly: ~4x faster than batch_decode over a 150k BPE vocabulary.
                backend = getattr(self.tokenizer, "backend_tokenizer", None)
                rows = [[i] for i in range(size)]
                self._token_texts["all"] = (backend.decode_batch(rows, skip_special_tokens=False) if backend
                                            else self.tokenizer.batch_decode(rows))
            texts = self._token_texts["all"]
            if any(c.isspace() for c in lasts):
                # A lone token's decoded text may drop its leading space (SentencePiece): check every row.
                self._stop_masks[lasts] = self._torch.ones(len(texts), dtype=self._torch.bool)
            else:
                # "\ufffd": a token holding part of a multi-byte character may complete a non-ASCII stop.
                self._stop_masks[lasts] = self._torch.tensor(
                    [any(c in t for c in lasts) or "\ufffd" in t for t in texts], dtype=self._torch.bool)
        return self._stop_masks[lasts]

    @contextlib.contextmanager
    def _threads(self):
        """Run torch ops with `self.threads` CPU threads, restoring the caller's setting afterwards."""
        before = self._torch.get_num_threads()
        if self.threads is None or self.threads == before:
            yield
            return
        self._torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            self._torch.set_num_threads(before)

    @contextlib.contextmanager
    def _seeded(self, seed: int | None):
        """Seed torch's generators for one call without disturbing the caller's random state."""
        if seed is None:
            yield
            return
        devices = [self.device] if str(self.device).startswith("cuda") else []
        with self._torch.random.fork_rng(devices=devices):
            self._torch.manual_seed(int(seed))
            yield

    # -- teacher forcing --------------------------------------------------------------------------
    def continuation_logprobs(self, requests: Sequence[Request], continuations: Sequence[str]) -> list[float]:
        """Return log P(continuation | rendered request) summed over the continuation's tokens.

        The continuation is tokenized on its own and appended to the prompt's tokens, the same sequence a
        sampler would produce when it generates that text after the prompt. Requests that share a long
        token prefix (the prefixes of one trace) run it once: see `_shared_logprobs`.
        """
        if len(requests) != len(continuations):
            raise ValueError("continuation_logprobs: one continuation per request")
        torch = self._torch
        start = time.perf_counter()
        prompts = self._encode_requests(requests, room=0)
        conts = encode_text(self.tokenizer, list(continuations))
        seqs = [p + c for p, c in zip(prompts, conts, strict=True)]
        for i, seq in enumerate(seqs):
            if len(seq) > self.max_context:
                raise PromptTooLong(i, len(seq), self.max_context)
        out = [0.0] * len(seqs)
        groups = shared_prefix_groups(seqs, conts)
        grouped = {i for g in groups for i in g}
        order = sorted((i for i in range(len(seqs)) if i not in grouped), key=lambda i: -len(seqs[i]))
        with self._threads(), torch.inference_mode():
            for group in groups:
                self._shared_logprobs([seqs[i] for i in group], [conts[i] for i in group], group, out)
            for j in range(0, len(order), self.batch_size):
                batch = [i for i in order[j : j + self.batch_size] if conts[i]]
                if not batch:
                    continue
                input_ids, mask = self._left_pad([seqs[i] for i in batch])
                keep = max(len(conts[i]) for i in batch) + 1
                extra = {"logits_to_keep": keep} if self._keeps_logits else {}
                logits = self.model(input_ids=input_ids, attention_mask=mask,
                                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False,
                                    **extra).logits[:, -keep:]
                for row, i in enumerate(batch):
                    # Left padding right-aligns every sequence: the continuation is the last len(c) tokens,
                    # predicted by the logits one position earlier.
                    c = conts[i]
                    picked = logits[row, keep - 1 - len(c) : keep - 1].float().log_softmax(-1)
                    targets = torch.tensor(c, device=picked.device)
                    out[i] = float(picked.gather(-1, targets[:, None]).sum())
                self.stats.prompt_tokens_encoded += int(mask.sum())
        self.stats.prompt_tokens_requested += sum(len(s) for s in seqs)
        self.stats.requests += len(seqs)
        self.stats.generate_seconds += time.perf_counter() - start
        return out

    def _shared_logprobs(self, seqs: list[list[int]], conts: list[list[int]], index: list[int],
                         out: list[float]) -> None:
        """Fill `out[index[k]]` for sequences that share a long token prefix with the first (the trunk).

        The trunk runs once with a KV cache; each other sequence crops that cache to the tokens it shares
        with the trunk (longest share first, so the cache only ever shrinks back) and runs only its own
        tail. A trace's L prefixes then cost one pass over the trace plus L short tails, instead of
        L passes over ever longer prefixes (quadratic in the trace length). The ids are the same
        one-string encodings as in the batched path, so this is exact up to float rounding.
        """
        torch = self._torch
        trunk = seqs[0]
        shares = [len(trunk)] + [_common_prefix(s, trunk) for s in seqs[1:]]
        cache = None
        cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        for k in sorted(range(len(seqs)), key=lambda k: -shares[k]):
            seq, cont = seqs[k], conts[k]
            # At least the last prompt token runs: its logits predict the continuation's first token.
            start = 0 if cache is None else min(shares[k], len(seq) - len(cont) - 1)
            if cache is not None and start < cache.get_seq_length():
                cache.crop(start - cache.get_seq_length())  # a negative count removes tokens (every version)
            tail = torch.tensor([seq[start:]], device=self.device)
            keep = len(cont) + 1
            extra = {"logits_to_keep": keep} if self._keeps_logits else {}
            result = self.model(input_ids=tail, use_cache=True, **{cache_arg: cache},
                                position_ids=torch.arange(start, len(seq), device=self.device)[None], **extra)
            cache = result.cache if getattr(result, "cache", None) is not None else result.past_key_values
            picked = result.logits[0, -keep:-1].float().log_softmax(-1)
            out[index[k]] = float(picked.gather(-1, torch.tensor(cont, device=picked.device)[:, None]).sum())
            self.stats.prompt_tokens_encoded += len(seq) - start

    def close(self) -> None:
        """Free the model's memory."""
        model = self.__dict__.pop("model", None)
        del model
        import gc

        gc.collect()
        if str(self.device).startswith("cuda"):
            self._torch.cuda.empty_cache()


class _StopStrings:
    """Stopping criterion: a row is done once its generated text (never the prompt) holds a stop string.

    Only rows whose newest token could complete a stop string (its text holds a stop's last character,
    or is a partial character) are decoded, and only their last few tokens. Records, per row, how many
    tokens had been generated when it stopped (`fired`).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int, enders: Any):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.start = prompt_width
        self.enders = enders
        # Tokens almost always decode to >= 1 character, so the last len(stop)+4 tokens hold any stop
        # string that the newest token completed.
        self.window = max((len(s) for s in self.stops), default=1) + 4
        self.fired: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.start
        if generated > 0:
            newest = input_ids[:, -1].clamp(max=self.enders.shape[0] - 1)
            rows = torch.nonzero(self.enders[newest.to(self.enders.device)]).flatten().tolist()
            live = [r for r in rows if r not in self.fired]
            if live:
                tails = input_ids[live, self.start:][:, -self.window:].tolist()
                for r, text in zip(live, self.tokenizer.batch_decode(tails, skip_special_tokens=True), strict=True):
                    if any(s in text for s in self.stops):
                        self.fired[r] = generated
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.fired:
            done[list(self.fired)] = True
        return done


SHARED_PREFIX_MIN_TOKENS = 512  # below this, one padded batch is cheaper than a cache walk per trace


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Return the number of leading tokens `a` and `b` have in common."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shared_prefix_groups(seqs: Sequence[Sequence[int]], conts: Sequence[Sequence[int]],
                         min_tokens: int = SHARED_PREFIX_MIN_TOKENS) -> list[list[int]]:
    """Return groups of sequence indices (longest first: the trunk) that share at least `min_tokens`.

    Sorting the sequences puts those with a long common prefix next to each other (the prefixes of one
    trace); a run of neighbours sharing `min_tokens` is one group. Sequences with an empty continuation
    have nothing to score and are left out.
    """
    order = sorted((i for i in range(len(seqs)) if conts[i]), key=lambda i: seqs[i])
    groups, run = [], order[:1]
    for a, b in itertools.pairwise(order):
        if _common_prefix(seqs[a], seqs[b]) >= min_tokens:
            run.append(b)
            continue
        groups.append(run)
        run = [b]
    groups.append(run)
    return [sorted(g, key=lambda i: -len(seqs[i])) for g in groups if len(g) > 1]


def _default_threads(model: Any, device: str) -> int | None:
    """Return the CPU threads for sampling: 1 for small models on CPU, else torch's own choice (None).

    A small model's ops are too short to split across threads, and when another process holds a core,
    every op of a multi-threaded run waits for a descheduled thread: on a busy 2-core machine the toy
    model sampled ~40x slower with 2 threads than with 1.
    """
    if str(device).startswith("cuda"):
        return None
    params = sum(p.numel() for p in model.parameters())
    return 1 if params < SMALL_MODEL_PARAMS else None


def _pick_device(device: str) -> str:
    import torch

    if device in ("auto", None, ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device: {device!r} asked for but CUDA is not available; use --device cpu")
    return str(device)


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise UserError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # half precision on CPU is slow and imprecise
    return getattr(torch, dtype)


def _context_length(config: Any, tokenizer: Any) -> int:
    """Return the model's context length from its config (capped by a real tokenizer limit)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            break
    else:
        value = 4096
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:  # tokenizers use a huge sentinel for "no limit"
        value = min(value, limit)
    return value


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Return every token id that ends a turn (the tokenizer's EOS and the generation config's)."""
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
