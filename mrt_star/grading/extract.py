"""Text → answer string: the last \\boxed{...} / \\fbox{...} of a completion, else a fallback (phrases.py).

Everything here is linear in the text length (one regex pass, an explicit brace stack, no recursion), so a
hostile completion (200k characters, thousands of unclosed braces) costs milliseconds, never a hang.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mrt_star.grading.phrases import DEFAULT_FALLBACKS, after_think, final_sentence, phrase_answer

# Only the tail of a huge completion is searched: the final answer is at the end.
MAX_SCAN_CHARS = 200_000

# What matters for brace matching: a box command, any escaped character (\{ \} \\ are not grouping), a brace.
_TOKEN = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])|\\.|[{}]", re.S)
_SPACED_BOX = re.compile(r"[ \t]+([^\s$]{1,2000})")  # `\boxed 5`: the next run of non-space characters



def extract_answer(text: str, fallbacks: bool | Sequence[str | re.Pattern[str]] = True,
                   max_scan_chars: int = MAX_SCAN_CHARS) -> str | None:
    """Return the content of the last complete \\boxed{}/\\fbox{} in `text`, else a fallback answer, else None.

    `fallbacks`: True uses DEFAULT_FALLBACKS (answer phrases, the line after one, a plain final sentence),
    False disables them, or a sequence of lead-in regexes (phrases only). A box whose braces never close (a
    truncated generation) does not count. See `extract_answer_detail` for how the answer was found.
    """
    return extract_answer_detail(text, fallbacks, max_scan_chars)[0]


def extract_answer_detail(text: str, fallbacks: bool | Sequence[str | re.Pattern[str]] = True,
                          max_scan_chars: int = MAX_SCAN_CHARS) -> tuple[str | None, str]:
    """Return (answer or None, how it was found: "boxed", "answer-phrase", "next-line", "final-sentence", "none").

    R1-style completions are read after </think> first: the boxed answer there is the one the model commits to.
    """
    if not isinstance(text, str) or not text:
        return None, "none"
    text = text[-max_scan_chars:]
    answer_part = after_think(text)
    for part in (answer_part, text) if answer_part is not text else (text,):
        boxed = last_boxed(part)
        if boxed is not None:
            return boxed, "boxed"
    if fallbacks is False or fallbacks is None:
        return None, "none"
    found = phrase_answer(answer_part, DEFAULT_FALLBACKS if fallbacks is True else fallbacks)
    if found is None and fallbacks is True:
        found = final_sentence(answer_part)
    return found if found is not None else (None, "none")


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
