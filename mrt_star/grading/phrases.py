"""Answers written without a box: after an answer phrase, on the line after it, or in a plain final sentence.

Why: Llama-3 often writes "The final answer is: $5$", Qwen "**Final Answer:** $x=3$", R1 ends its summary with
"…, is 771." or "No, it cannot". Each finder is linear in the text (bounded regexes, no backtracking over
the whole completion) and returns (answer, rule) so a grade can say how the answer was found.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Lead-in phrases, most specific first; the answer follows the LAST match of the first phrase that matches.
DEFAULT_FALLBACKS: tuple[str, ...] = (
    r"final\s+answer(?:[ \t]*\*\*)?[ \t]*(?:is\b|:|=)?(?:[ \t]*\*\*)?[ \t]*:?",
    r"\banswer(?:[ \t]*\*\*)?[ \t]*(?:is\b|:|=)(?:[ \t]*\*\*)?[ \t]*:?",
    r"\b(?:range|domain|solutions?|roots?|result|sum|product|total|area|volume|probability|perimeter|"
    r"remainder|distance|length|minimum|maximum|smallest\s+\w+|largest\s+\w+|number\s+of\s+\w+|limit)"
    r"(?:\s+of\s+[^.\n$]{1,60}?)?\s+(?:is|are|equals|=)(?![A-Za-z])[ \t]*:?",
)
_LINE_REST = re.compile(r"[^\n]{0,2000}")
_NEXT_LINE = re.compile(r"\n[ \t]*([^\n]{1,2000})")
_MATH = re.compile(r"\$\$(.{1,2000}?)\$\$|\$(.{1,2000}?)\$|\\\((.{1,2000}?)\\\)|\\\[(.{1,2000}?)\\\]", re.S)
_SENTENCE_END = re.compile(r"\.\s|\.$")
_YES_NO = re.compile(r"^\W{0,4}(yes|no)\s*(?:[,.!;:]|$)", re.I)
_VERB = re.compile(r"\b(?:is|are|equals|was|be|=|gives|get)\s+", re.I)
_LIST_GLUE = re.compile(r"\s*(?:,|,?\s*and)\s*")
_LEAD_WORDS = {"therefore", "thus", "so", "then", "just", "exactly", "equal", "to", "simply", "hence", "now", "only"}
_CHOICE = re.compile(r"\(([A-J])\)|\b(?:option|choice)\s+\(?([A-J])\)?(?![A-Za-z])")
_NUMBER = re.compile(r"[-−]?[0-9][0-9,]*(?:\.[0-9]+)?(?:\s*/\s*[0-9]+)?")


def after_think(text: str) -> str:
    """Return the part after R1's closing </think> (the answer section), or `text` when there is none."""
    _, sep, rest = text.rpartition("</think>")
    return rest if sep and rest.strip() else text


def phrase_answer(text: str, patterns: Sequence[str | re.Pattern[str]] = DEFAULT_FALLBACKS) -> tuple[str, str] | None:
    """Return (the value after the last answer phrase, "answer-phrase" or "next-line"), or None.

    The value is the first math expression after the phrase on its line; a phrase that ends its line (a bare
    ":" after it) takes the next non-empty line instead, never the ":" itself.
    """
    for pattern in patterns:
        regex = re.compile(pattern, re.I) if isinstance(pattern, str) else pattern
        last = None
        for last in regex.finditer(text):  # noqa: B007 - only the last match is wanted
            pass
        if last is None:
            continue
        rest = _LINE_REST.match(text, last.end()).group()
        answer = clean(rest)
        if answer:
            return answer, "answer-phrase"
        following = _NEXT_LINE.search(text, last.end() + len(rest))
        while following and not clean(following.group(1)) and following.group(1).strip() in ("$$", "\\[", ""):
            following = _NEXT_LINE.search(text, following.end())
        if following:
            block = text[following.start(1):following.start(1) + 2000]
            answer = clean(block.split("\n\n", 1)[0]) if block.lstrip().startswith(("$$", "\\[")) else clean(following.group(1))
            if answer:
                return answer, "next-line"
    return None


def clean(rest: str) -> str:
    """Return the first math expression in `rest` (delimiters off), else its text up to the sentence end."""
    rest = rest.strip().strip("*").strip().lstrip(":").strip().strip("*").strip()
    if not rest or rest in (":", "."):
        return ""
    m = _MATH.search(rest)
    if m and not _YES_NO.match(rest[:m.start()]):
        inner = next(g for g in m.groups() if g is not None).strip()
        if inner.startswith("\\boxed"):  # a box the brace scan rejected (unclosed): not an answer
            return ""
        # "$1$ and $2$" is a list of answers; "$\\frac34$ or $0.75$" is one answer written twice.
        listed = [inner]
        for nxt in _MATH.finditer(rest, m.end()):
            if not _LIST_GLUE.fullmatch(rest[m.end():nxt.start()]):
                break
            listed.append(next(g for g in nxt.groups() if g is not None).strip())
            m = nxt
        return ", ".join(x.strip(" ,;") for x in listed)
    for left in ("$$", "\\[", "$", "\\("):
        if rest.startswith(left):  # an opened math block that closes on a later line
            return rest[len(left):].strip()
    cut = _SENTENCE_END.search(rest)
    return _value_in_prose((rest[:cut.start()] if cut else rest).strip().strip("*").strip().rstrip(",;"))


def _value_in_prose(text: str) -> str:
    """Return the number a prose answer states ("The number of ways is 120" → 120), else `text` unchanged.

    Only when a verb precedes exactly one number: "therefore 12" → 12, but "1 or 2" and text answers stay.
    """
    if not re.search(r"[A-Za-z]{3,}", text):
        return text
    verbs = list(_VERB.finditer(text))
    tail = text[verbs[-1].end():] if verbs else text
    numbers = _NUMBER.findall(tail)
    if len(numbers) == 1 and not re.search(r"\\|\b(?:or|and)\b", tail):
        lead = tail[:tail.find(numbers[0])]
        if all(w.lower() in _LEAD_WORDS for w in re.findall(r"[A-Za-z]+", lead)):
            return tail[tail.find(numbers[0]):].strip()
    return text


def final_sentence(text: str) -> tuple[str, str] | None:
    """Return (the value stated in the last sentence, "final-sentence"), or None.

    Only a yes/no, a math expression, or a number counts: "…, is 771." → 771, "there are 120 possible
    ways" → 120, "No, it cannot" → No. The value after the last "is/are/equals" wins over earlier numbers.
    """
    lines = [line.strip() for line in text[-4000:].strip().split("\n") if line.strip()]
    if not lines:
        return None
    last_line = lines[-1].strip("*# ")
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", last_line) if re.search(r"[0-9A-Za-z$]", s)]
    if not sentences:
        return None
    sentence = sentences[-1].rstrip(".!").strip()
    if "\\boxed" in sentence or "\\fbox" in sentence:  # a box the brace scan rejected: a truncated answer
        return None
    yn = _YES_NO.match(sentence)
    if yn:
        return yn.group(1).capitalize(), "final-sentence"
    maths = list(_MATH.finditer(sentence))
    if maths:  # the last one, with the ones listed right before it ("$a = 3$, $b = -7$, and $c = 4$")
        first = len(maths) - 1
        while first > 0 and _LIST_GLUE.fullmatch(sentence[maths[first - 1].end():maths[first].start()]):
            first -= 1
        return ", ".join(next(g for g in m.groups() if g is not None).strip(" ,;") for m in maths[first:]), \
            "final-sentence"
    choices = list(_CHOICE.finditer(sentence))
    if choices:  # "The correct option is (B)."
        return choices[-1].group(1) or choices[-1].group(2), "final-sentence"
    verbs = list(_VERB.finditer(sentence))
    numbers = _NUMBER.findall(sentence[verbs[-1].end():]) if verbs else []
    if numbers:
        return numbers[0].replace("−", "-"), "final-sentence"
    # No verb we know ("she has 12 apples left"): one number in a sentence of words is its value; a bare number
    # with no statement around it ("\\boxedx{3}") is not an answer.
    numbers = _NUMBER.findall(sentence)
    if len(numbers) == 1 and len(re.findall(r"[A-Za-z]{2,}", sentence)) >= 3:
        return numbers[0].replace("−", "-"), "final-sentence"
    return None
