"""Text → answer string: the last \\boxed{...} / \\fbox{...} of a completion, else a fallback phrase.

Everything here is linear in the text length (one regex pass, an explicit brace stack, no recursion), so a
hostile completion (200k characters, thousands of unclosed braces) costs milliseconds, never a hang.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Only the tail of a huge completion is searched: the final answer is at the end.
MAX_SCAN_CHARS = 200_000

# What matters for brace matching: a box command, any escaped character (\{ \} \\ are not grouping), a brace.
_TOKEN = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])|\\.|[{}]", re.S)
_SPACED_BOX = re.compile(r"[ \t]+([^\s$]{1,2000})")  # `\boxed 5`: the next run of non-space characters

# Lead-in phrases for answers written without a box, most specific first.
DEFAULT_FALLBACKS: tuple[str, ...] = (
    r"final\s+answer\s*(?:is|:)",
    r"\banswer\s*(?:is|:)",
)
_LINE_REST = re.compile(r"[^\n]{0,2000}")


def extract_answer(text: str, fallbacks: bool | Sequence[str | re.Pattern[str]] = True,
                   max_scan_chars: int = MAX_SCAN_CHARS) -> str | None:
    """Return the content of the last complete \\boxed{}/\\fbox{} in `text`, else a fallback answer, else None.

    `fallbacks`: True uses DEFAULT_FALLBACKS ("final answer is ...", "answer: ..."), False disables them, or
    a sequence of lead-in regexes; the answer is the rest of the line after the last match of the first
    pattern that matches. A box whose braces never close (a truncated generation) does not count.
    """
    if not isinstance(text, str) or not text:
        return None
    text = text[-max_scan_chars:]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if fallbacks is False or fallbacks is None:
        return None
    patterns = DEFAULT_FALLBACKS if fallbacks is True else fallbacks
    return _fallback_answer(text, patterns)


def last_boxed(text: str) -> str | None:
    """Return the stripped content of the complete box that starts last in `text`, or None."""
    # (start, end, braceless) of the best box content; sliced once at the end (no quadratic copying).
    best = (-1, -1, False)
    # One entry per open brace: where the box content starts if the brace opens a box, else -1.
    stack: list[int] = []
    box_brace = -1  # position of the '{' that belongs to the box command just seen
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "{":
            stack.append(m.end() if m.start() == box_brace else -1)
        elif tok == "}":
            start = stack.pop() if stack else -1
            if start > best[0]:
                best = (start, m.start(), False)
        elif tok[1:] in ("boxed", "fbox"):
            brace = _skip_spaces(text, m.end())
            if brace < len(text) and text[brace] == "{":
                box_brace = brace
            else:
                spaced = _SPACED_BOX.match(text, m.end())
                if spaced and spaced.start(1) > best[0]:
                    best = (*spaced.span(1), True)
    if best[0] < 0:
        return None
    content = text[best[0]:best[1]]
    return (content.rstrip(".,;") if best[2] else content).strip()  # "\\boxed 5." ends a sentence


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _fallback_answer(text: str, patterns: Sequence[str | re.Pattern[str]]) -> str | None:
    """Return the cleaned rest of the line after the last match of the first matching pattern, or None."""
    for pattern in patterns:
        regex = re.compile(pattern, re.I) if isinstance(pattern, str) else pattern
        last = None
        for last in regex.finditer(text):  # noqa: B007 - only the last match is wanted
            pass
        if last is not None:
            answer = _clean_fallback(_LINE_REST.match(text, last.end()).group())
            if answer:
                return answer
    return None


def _clean_fallback(rest: str) -> str:
    """Return a fallback answer without the surrounding math delimiters, markdown bold and final period."""
    rest = rest.strip().strip("*").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(left):
            end = rest.find(right, len(left))
            return (rest[len(left):end] if end >= 0 else rest[len(left):]).strip()
    # Prose after the answer: cut at the first sentence end.
    cut = re.search(r"\.\s|\.$", rest)
    return (rest[:cut.start()] if cut else rest).strip().strip("*").strip()
