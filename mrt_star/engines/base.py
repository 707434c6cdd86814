"""The engine contract: what every sampling backend (transformers, vLLM) takes and gives back.

Stages only talk to this protocol, so the same generate/score/eval code runs on the CPU toy model and
on a GPU with a real model. Every engine renders prompts with `render_chat` and tokenizes the rendered
text the same way (`encode_text`), so a prefill means the same token sequence on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from mrt_star.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: `n` continuations per request; stop strings are cut from the returned text.

    `temperature=0` is greedy decoding. With a `seed`, the same call on the same engine returns the
    same completions. `max_new_tokens` is also capped by the room left in the model's context.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Request:
    """One prompt: chat messages. If the last message is an assistant turn, it is continued exactly
    (prefill, continue-final-message semantics); otherwise a new assistant turn is started."""

    messages: tuple[dict[str, str], ...] | list[dict[str, str]]

    @property
    def is_prefill(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "assistant"


@dataclass
class Completion:
    """One sampled continuation.

    `finish_reason` is "stop" (EOS or a stop string; the stop string is not in `text`) or "length"
    (max_new_tokens or the context end reached). `stop_reason` is the stop string that ended the text
    (None for EOS or length). `prompt_tokens` counts the rendered prompt including any prefill;
    `completion_tokens` counts the tokens the model generated (an EOS and a stop string's tokens included).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    stop_reason: str | None = None


@dataclass
class EngineStats:
    """Counters an engine keeps, read by benchmarks and stage summaries."""

    prompt_tokens_encoded: int = 0  # prompt tokens actually run through the model (after cache reuse)
    prompt_tokens_requested: int = 0  # prompt tokens over all samples if nothing were shared
    completion_tokens: int = 0
    requests: int = 0
    generate_seconds: float = 0.0  # wall time inside generate() and continuation_logprobs()
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as a JSON-ready dict (for manifests)."""
        return {"prompt_tokens_encoded": self.prompt_tokens_encoded,
                "prompt_tokens_requested": self.prompt_tokens_requested,
                "completion_tokens": self.completion_tokens, "requests": self.requests,
                "generate_seconds": round(self.generate_seconds, 3), **self.extra}


class PromptTooLong(UserError, ValueError):
    """A rendered prompt leaves no room in the model's context for even one new token."""

    def __init__(self, index: int, tokens: int, max_context: int):
        self.index, self.tokens, self.max_context = index, tokens, max_context
        super().__init__(f"request {index}: the prompt has {tokens} tokens but the model's context holds "
                         f"{max_context}; shorten it or skip it (check with engine.count_tokens first)")


@runtime_checkable
class Engine(Protocol):
    """A sampling backend. `tokenizer` is a Hugging Face tokenizer with a chat template."""

    name: str
    tokenizer: Any
    stats: EngineStats
    max_context: int

    def render(self, request: Request) -> str:
        """Return the exact prompt text the model sees for `request`."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Return the token count of each text (no special tokens added)."""
        ...

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Completion]]:
        """Return `params.n` completions for each request, in request order.

        Raises PromptTooLong when a rendered request does not fit the context.
        """
        ...

    def continuation_logprobs(self, requests: Sequence[Request], continuations: Sequence[str]) -> list[float]:
        """Return log P(continuation | rendered request) summed over the continuation's tokens
        (teacher forcing; used by the likelihood estimator of J)."""
        ...

    def close(self) -> None:
        """Free the model's memory."""
        ...


# --- helpers every engine shares -------------------------------------------------------------------


def read_chat_template(value: str | None) -> str | None:
    """Return a chat template's text from a Jinja file path or literal template text (None stays None)."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text()
    if "{%" in value or "{{" in value:
        return value
    raise UserError(f"chat_template: {value!r} is neither a file nor Jinja template text")


def load_tokenizer(model: str, chat_template: str | None = None) -> Any:
    """Return the model's tokenizer, left-padded, with a pad token and the given chat template applied.

    Raises ChatTemplateError (before any weights load) when the result has no chat template: every
    prompt an engine sees is a rendered chat.
    """
    from transformers import AutoTokenizer

    from mrt_star.formats.chat import has_chat_template, render_chat

    template = read_chat_template(chat_template)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise UserError(f"model {model!r}: cannot load its tokenizer ({str(err).splitlines()[0]})") from None
    tokenizer.padding_side = "left"  # generation appends on the right, so prompts are aligned right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if template:
        tokenizer.chat_template = template
    if not has_chat_template(tokenizer):
        render_chat(tokenizer, [])  # raises ChatTemplateError with the --chat-template hint
    return tokenizer


def render_request(tokenizer: Any, request: Request) -> str:
    """Return the prompt text of a request (exact prefill of a final assistant turn)."""
    from mrt_star.formats.chat import render_chat

    return render_chat(tokenizer, list(request.messages))


def encode_text(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Return the token ids of rendered texts; the chat template already wrote any BOS, so none is added."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """Return (text before the earliest stop string, that stop string) or (text, None) if none occurs."""
    best, which = len(text), None
    for s in stop:
        i = text.find(s) if s else -1
        if 0 <= i < best:
            best, which = i, s
    return (text[:best], which) if which is not None else (text, None)


class PromptText:
    """Rendering and token counting shared by every engine (needs `tokenizer` and `max_context`)."""

    tokenizer: Any
    max_context: int

    def render(self, request: Request) -> str:
        """Return the exact prompt text the model sees for `request`."""
        return render_request(self.tokenizer, request)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Return the token count of each text (no special tokens added)."""
        return [len(ids) for ids in encode_text(self.tokenizer, texts)]

    def _encode_requests(self, requests: Sequence[Request], room: int = 1) -> list[list[int]]:
        """Return the prompt token ids of each request; raise PromptTooLong when one leaves no room."""
        ids = encode_text(self.tokenizer, [self.render(r) for r in requests])
        for i, seq in enumerate(ids):
            if len(seq) + room > self.max_context:
                raise PromptTooLong(i, len(seq), self.max_context)
        return ids
