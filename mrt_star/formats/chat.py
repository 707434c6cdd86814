"""Rendering chats into prompt text, with exact prefill of a partial assistant turn.

`apply_chat_template(..., continue_final_message=True)` finds the final message by searching for its
(stripped) content, so trailing spaces and newlines of a prefix can be lost. We render a sentinel in
its place and substitute the exact prefix text, which keeps every character.
"""

from __future__ import annotations

from typing import Any

from mrt_star.errors import UserError

_SENTINEL = "\u2063MRTSTAR_PREFILL\u2063"


class ChatTemplateError(UserError, ValueError):
    """The tokenizer cannot render chats (no chat template)."""


def has_chat_template(tokenizer: Any) -> bool:
    """Return True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Return the prompt text for `messages`.

    If the last message is an assistant turn, it is a prefill: the text ends exactly with its content
    (the model continues it). Otherwise the generation prompt for a new assistant turn is added.
    """
    if not has_chat_template(tokenizer):
        raise ChatTemplateError(
            "the tokenizer has no chat template; pass --chat-template PATH_OR_NAME (a Jinja file) or use "
            "an instruct/chat model"
        )
    if messages and messages[-1]["role"] == "assistant":
        prefix = messages[-1]["content"]
        probe = [*messages[:-1], {"role": "assistant", "content": _SENTINEL}]
        text = tokenizer.apply_chat_template(probe, tokenize=False, continue_final_message=True)
        cut = text.rfind(_SENTINEL)
        if cut < 0:
            raise ChatTemplateError("the chat template dropped the assistant prefill; it cannot be continued")
        head = text[:cut]
        # Templates that already open <think> for the assistant would otherwise get it twice.
        if prefix.startswith("<think>") and head.rstrip().endswith("<think>"):
            prefix = prefix[len("<think>") :].lstrip("\n")
        return head + prefix
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def template_opens_think(tokenizer: Any) -> bool:
    """Return True when the generation prompt already ends with `<think>` (R1-distill style templates)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    return text.rstrip().endswith("<think>")
