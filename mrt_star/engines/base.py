"""The engine contract: what every sampling backend (transformers, vLLM) takes and gives back.

Stages only talk to this protocol, so the same generate/score/eval code runs on the CPU toy model and
on a GPU with a real model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: `n` continuations per request; stop strings are cut from the returned text."""

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
    (max_new_tokens reached). `prompt_tokens` counts the rendered prompt including any prefill.
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
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """A sampling backend. `tokenizer` is a Hugging Face tokenizer with a chat template."""

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
        """Return `params.n` completions for each request, in request order."""
        ...

    def continuation_logprobs(self, requests: Sequence[Request], continuations: Sequence[str]) -> list[float]:
        """Return log P(continuation | rendered request) summed over the continuation's tokens
        (teacher forcing; used by the likelihood estimator of J)."""
        ...

    def close(self) -> None:
        """Free the model's memory."""
        ...
