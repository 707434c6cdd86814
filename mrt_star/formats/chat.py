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


_END_SENTINEL = "\u2063MRTSTAR_END\u2063"
_THOUGHT_PROBE = "\u2063MRTSTAR_THOUGHT\u2063"


def assistant_end(tokenizer: Any, prompt: list[dict[str, str]] | None = None) -> str:
    """Return what the chat template writes after an assistant message's content (its end-of-turn text)."""
    prompt = prompt or [{"role": "user", "content": "x"}]
    probe = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": _END_SENTINEL}], tokenize=False)
    cut = probe.rfind(_END_SENTINEL)
    return probe[cut + len(_END_SENTINEL):] if cut >= 0 else (getattr(tokenizer, "eos_token", None) or "")


def template_strips_thinking(tokenizer: Any) -> bool:
    """Return True when the template drops the thinking of a rendered assistant turn (R1-distill templates do:
    `content.split('</think>')[-1]`), so a `messages` row rendered through it loses the trace."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"},
         {"role": "assistant", "content": f"<think>\n{_THOUGHT_PROBE}\n</think>\n\nanswer"}], tokenize=False)
    return _THOUGHT_PROBE not in text


def render_sft_text(tokenizer: Any, prompt: list[dict[str, str]], target: str, prefix: str = "") -> tuple[str, str]:
    """Return (context, full text) of one SFT example with the thinking kept, whatever the template.

    The context is the prompt with the generation prompt (or, with `prefix`, the prompt plus the exact
    prefilled assistant text, as the engines render it); the full text is context + target + the
    template's end of turn. The target is never passed through the template, so a template that strips
    `<think>...</think>` from assistant turns (R1) cannot drop it: the kept trace sits inside the last
    assistant turn's `<think>`. A `<think>` the generation prompt already opened is not written twice.
    """
    if prefix:
        context = render_chat(tokenizer, [*prompt, {"role": "assistant", "content": prefix}])
    else:
        context = render_chat(tokenizer, prompt)
        if target.startswith("<think>") and context.rstrip().endswith("<think>"):
            opening = context[context.rfind("<think>"):]  # e.g. "<think>\n", as the template wrote it
            target = target[len(opening):] if target.startswith(opening) else target[len("<think>"):].lstrip("\n")
    return context, context + target + assistant_end(tokenizer, prompt)
