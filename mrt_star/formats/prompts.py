"""The trace grammar shared by the toy world, the generator, the prover and the trainer.

Every piece of text that two stages must agree on lives here: prompt templates per format, the
backtrack line, the separator between linearized attempts, the thinking tags and the texts that force
a prover to stop and answer. Change them here and every stage follows.
"""

from __future__ import annotations

import re

FORMATS = ("backtrack", "linearized", "open")

# --- prompts -------------------------------------------------------------------------------------
# Named user-prompt templates; `{problem}` is replaced by the problem text. The long ones follow the
# reference setups (instruct models get an instruction, thinking models only the problem); the toy
# ones are short because the toy model is character-level and every character costs a token.
PROMPT_TEMPLATES: dict[str, str] = {
    "backtrack": (
        "Solve the following math problem step by step. Write each step on its own line, numbered "
        "'Line 1:', 'Line 2:', and so on. If you notice a mistake, write 'Backtrack to Line k' (or "
        "'Backtrack to beginning') on its own line and redo the work from that point. Put the final "
        "answer in \\boxed{{}}.\n\nProblem: {problem}"
    ),
    "math": (
        "Solve the following math problem efficiently and clearly. The last line of your response should "
        "be of the form \\boxed{{ANSWER}} where ANSWER is the answer to the problem.\n\n{problem}"
    ),
    "open": "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    # Parity: the reference prompts thinking models with the problem alone (`--prompt-template open-parity`).
    "open-parity": "{problem}",
    # Toy world: the format is named by a short tag so one tiny model learns all three formats.
    "toy-backtrack": "[backtrack] {problem}",
    "toy-linearized": "[linearized] {problem}",
    "toy-open": "[open] {problem}",
}

DEFAULT_TEMPLATE = {"backtrack": "backtrack", "linearized": "math", "open": "open"}


def user_prompt(problem: str, template: str) -> str:
    """Return the user turn for `problem` under a named template (or a literal one with `{problem}`)."""
    text = PROMPT_TEMPLATES.get(template, template)
    if "{problem}" not in text:
        raise ValueError(
            f"prompt template {template!r} is neither a known name ({', '.join(PROMPT_TEMPLATES)}) "
            "nor a string containing '{problem}'"
        )
    return text.format(problem=problem)


def prompt_messages(problem: str, template: str, system: str | None = None) -> list[dict[str, str]]:
    """Return the chat messages (system optional, then user) that open a trace for `problem`."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_prompt(problem, template)})
    return messages


# --- backtracking --------------------------------------------------------------------------------
# A step line starts with "Line k:"; a backtrack is one line of its own (parity regex of the reference).
STEP_PREFIX = "Line {k}: "
STEP_RE = re.compile(r"^Line (\d+): ", re.MULTILINE)
BACKTRACK_RE = re.compile(r"^Backtrack to (?:Line (\d+)|beginning)[ \t]*$", re.MULTILINE)


def backtrack_line(to_step: int | None) -> str:
    """Return the backtrack line (without newline); `None` or 0 means back to the beginning."""
    return "Backtrack to beginning" if not to_step else f"Backtrack to Line {to_step}"


# --- linearized ----------------------------------------------------------------------------------
# Complete attempts, each ending with a boxed answer, joined by this separator; attempt k>1 is
# generated with all earlier attempts (and separators) in context.
ATTEMPT_SEPARATOR = "\n\nLet me try again.\n\n"

# --- open-ended thinking -------------------------------------------------------------------------
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PARAGRAPH_SEPARATOR = "\n\n"
RECONSIDER_MARKERS = (
    "Wait",
    "But wait",
    "Alternatively",
    "But hold on",
    "But let me double-check",
    "Is there another way to think about this?",
)

# --- prover forced termination (DESIGN.md §3) -----------------------------------------------------
# Parity stop text for thinking models, exactly as the reference writes it after a prefix of the
# thinking. The reference prefix for episode i is "\n\n".join(episodes[:i+1]) + "\n\n" (one blank
# line, then the stop text); for the empty prefix the stop text follows the opening "<think>\n"
# directly. `forced_prefix` applies both rules; never append this constant to a prefix by hand.
THINK_FORCE_TEXT = (
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking "
    "and formulate a final answer based on what I already have.\n</think>\n\n"
    "**Step-by-Step Explanation and Answer:**\n\n1. **"
)
THINK_STOP_TEXT = THINK_FORCE_TEXT  # the reference's name for it
# Closing a *complete* thinking trace before answering (reference: just the closing tag).
THINK_CLOSE_TEXT = "\n</think>"
# Answer-forcing line for the step-wise formats (backtrack, linearized): the prover writes only the
# content of the box, so its completion is short.
ANSWER_FORCE_TEXT = "\nTime is up. Final answer: \\boxed{"

FORCE_TEXT = {"backtrack": ANSWER_FORCE_TEXT, "linearized": ANSWER_FORCE_TEXT, "open": THINK_FORCE_TEXT}
# An open trace that never opened <think> (a template without thinking, e.g. Llama-3.1) has nothing to
# close: the same stop text without its "\n</think>".
OPEN_FORCE_TEXT = THINK_FORCE_TEXT.replace("\n" + THINK_CLOSE, "", 1)

_THINK_OPENING = re.compile(r"\s*" + re.escape(THINK_OPEN) + r"\n?")


def think_opening(trace: str) -> str:
    """Return the opening of a thinking trace (e.g. "<think>\\n", as written) or "" when it has none.

    This is the prover's empty prefix (j = -1) for an open trace: what the chat template's generation
    prompt opened before the model wrote anything.
    """
    m = _THINK_OPENING.match(trace)
    return m.group() if m else ""


def force_text(fmt: str, thinking: bool = True) -> str:
    """Return the text that stops a trace of `fmt` and forces an answer (`thinking`: the open trace opened
    `<think>`, so the stop text closes it)."""
    if fmt not in FORCE_TEXT:
        raise ValueError(f"unknown trace format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return OPEN_FORCE_TEXT if fmt == "open" and not thinking else FORCE_TEXT[fmt]


def forced_prefix(prefix: str, fmt: str, thinking: bool = True) -> str:
    """Return the assistant text a prover continues from: the trace prefix plus the format's force text.

    Step-wise formats: `prefix + FORCE_TEXT[fmt]`. Open thinking (reference parity): an empty prefix, or
    one that is only the opening `<think>` line, is followed directly by the stop text; any other
    prefix is cut of its trailing newlines and joined to the stop text by exactly one blank line
    ("\\n\\n"), the way the reference joins episodes, so there are never four newlines before it. An open
    trace that never opened `<think>` (`thinking=False`) gets the same stop text without the `</think>` close.
    """
    stop = force_text(fmt, thinking)
    if fmt != "open":
        return prefix + stop
    body = prefix.rstrip("\n")
    if not body.strip():
        return stop
    if body.strip() == THINK_OPEN:
        return body + "\n" + stop
    return body + PARAGRAPH_SEPARATOR + stop


def forced_completion_text(fmt: str, completion: str) -> str:
    """Return what is graded for a prover sample: the force text's tail plus the sampled completion.

    Only the forced completion is graded (not the prefix), but the step-wise force text ends inside
    an open `\\boxed{`, so it is put back in front of the completion to make the box whole.
    """
    if fmt in ("backtrack", "linearized"):
        return "\\boxed{" + completion
    return completion
