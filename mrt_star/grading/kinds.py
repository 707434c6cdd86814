"""Answer kinds that math-verify cannot judge alone, each a named rule that decides or rewrites a pair.

Why: math-verify compares two math expressions. Given a free-form reference ("3 is the only possible value",
"a=3, b=-7, c=4", "No, it cannot") it picks one number out of it, so a wrong answer that shares that number is
credited. Here the reference is read first; when it has a structure (a choice letter, a base subscript, yes/no,
a clock time, words, several assignments, a sentence around a value) the answer must match the whole of it.
Pure string work with bounded regexes; nothing evaluates model text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mrt_star.grading.rewrite import canonical, unit_name

PERCENT_POLICIES: tuple[str, ...] = ("strict", "lenient")


@dataclass(frozen=True)
class Plan:
    """How to grade one pair: a verdict already (`decided`), or math-verify checks combined by all/any."""

    decided: bool | None
    checks: tuple[tuple[str, str], ...] = ()
    combine: str = "all"
    rule: str = "math"


# --- unwrapping -----------------------------------------------------------------------------------------

_WRAP = re.compile(r"\\(?:text(?:bf|rm|it|normal)?|mathrm|mathbf|mbox|textsc|operatorname)\s*\{([^{}]{0,500})\}")
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def unwrap(text: str) -> str:
    """Return `text` without math delimiters, \\displaystyle, markdown bold and a sentence-final period."""
    text = text.strip().strip("*").strip()
    for left, right in _DELIMS:
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left):len(text) - len(right)].strip()
    text = text.replace("\\displaystyle", "").strip()
    return text[:-1].rstrip() if text.endswith(".") and not text.endswith("..") else text


def plain(text: str) -> str:
    """Return `text` with \\text{...}-style wrappers replaced by their content (for reading words)."""
    for _ in range(3):
        new = _WRAP.sub(lambda m: m.group(1), text)
        if new == text:
            break
        text = new
    return text


# --- yes / no -------------------------------------------------------------------------------------------

_YES_NO = re.compile(r"^[\s*({]*(yes|no)\s*(?:[,.!;:)}]|$)", re.I)


def yes_no(text: str) -> str | None:
    """Return "yes"/"no" when `text` is that word or starts "No, …" ("No, it cannot" → "no"; "no solution" → None)."""
    m = _YES_NO.match(plain(text))
    return m.group(1).lower() if m else None


# --- multiple choice ------------------------------------------------------------------------------------

_CHOICE_LEAD = re.compile(r"^(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is)?\s*:?\s*)", re.I)
_LETTERS = re.compile(r"^\(?([A-J])\)?(?:\s*(?:,|and|&)?\s*\(?([A-J])\)?){0,9}$")
_ONE_LETTER = re.compile(r"^\(([A-J])\)\s*(.*)$|^([A-J])(?:\s*[.:)]\s*(.+)|\s*$)", re.S)


def choice(text: str) -> tuple[frozenset[str], str]:
    """Return (the choice letters, the option's content) of `text`; no letters when it is not a choice."""
    t = _CHOICE_LEAD.sub("", plain(text).replace("{", "").replace("}", "")).strip().rstrip(".")
    if re.fullmatch(r"[A-J]{2,6}", t) and len(set(t)) == len(t):
        return frozenset(t), ""  # "ACD": several letters written together
    if _LETTERS.match(t) and len(t) > 3:
        return frozenset(re.findall(r"[A-J]", t)), ""
    m = _ONE_LETTER.match(t)
    if m is None:
        return frozenset(), ""
    letter, content = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return frozenset(letter), (content or "").strip()


# --- number bases ---------------------------------------------------------------------------------------

_BASE_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
               "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16}
_BASED = re.compile(r"^\(?([0-9A-Fa-f]{1,64})\)?\s*_\s*(?:\{\s*(?:\\(?:text|mathrm)\s*\{\s*)?([a-z]+|[0-9]{1,2})\s*\}?\s*\}"
                    r"|([0-9]))$")


def based(text: str) -> tuple[str, int | None] | None:
    """Return (digits, base) of `1011_2` / `102_{\\text{three}}` / plain digits (base None), else None."""
    t = plain(text).replace(" ", "") if "_" in text else text.strip()
    m = _BASED.match(t)
    if m is None:
        return (t.lstrip("0") or "0", None) if re.fullmatch(r"[0-9]{1,64}", t) else None
    word = m.group(2) or m.group(3)
    base = int(word) if word.isdigit() else _BASE_WORDS.get(word)
    if base is None or not 2 <= base <= 36:
        return None
    digits = m.group(1).upper().lstrip("0") or "0"
    return (digits, base) if all(int(d, 36) < base for d in digits) else (digits, -1)


# --- clock times ----------------------------------------------------------------------------------------

_TIME = re.compile(r"^([0-9]{1,2}):([0-5][0-9])\s*(?:([ap])\.?\s*m\.?)?$", re.I)


def clock(text: str) -> tuple[int, int, str] | None:
    """Return (hour, minute, "a"/"p"/"") of "4:30 PM", "4:30 p.m.", "16:30", else None."""
    m = _TIME.match(re.sub(r"(?<!\\)\\[,;:! ]|~", " ", plain(text)).strip().rstrip("."))
    return (int(m.group(1)), int(m.group(2)), (m.group(3) or "").lower()) if m else None


def _minutes(t: tuple[int, int, str], half_day: bool) -> int:
    hour = t[0] % 12 + (12 if t[2] == "p" else 0) if t[2] else t[0]
    return (hour % 12 if half_day else hour) * 60 + t[1]


# --- words ----------------------------------------------------------------------------------------------

_FILLER = {"the", "a", "an", "is", "it", "its", "function", "answer", "final", "value", "this", "that", "so", "thus",
           "therefore", "which", "of", "be", "will", "must", "are", "triangle", "number", "shape", "graph", "curve"}
_NEGATION = {"not", "no", "neither", "nor", "never", "none", "cannot", "non"}
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str] | None:
    """Return the lower-case words of a text-only answer ("\\text{even function}"), None if it holds math."""
    t = plain(text)
    if re.search(r"[0-9=\\^_<>+*/]", t) or len(re.findall(r"[A-Za-z]{2,}", t)) == 0:
        return None
    return _WORD.findall(t.lower())


def _same_words(answer: list[str], reference: list[str]) -> bool:
    a, r = set(answer) - _FILLER, set(reference) - _FILLER
    if not a or not r or (a & _NEGATION) != (r & _NEGATION):
        return False
    return (a <= r or r <= a) and len(a ^ r) <= 2


# --- assignments, roots and sentences -------------------------------------------------------------------

_SEPARATOR = re.compile(r"\\q?quad|\\text\{\s*(?:and|or)\s*\}|\s(?:and|or)\s|;")
_ASSIGN = re.compile(r"^\s*([A-Za-z](?:_\{?[0-9A-Za-z]{1,3}\}?)?|\\[a-z]{2,8})\s*=\s*([^=]{1,500}?)\s*$")
_PACKED = re.compile(r"^\s*\(([^()=]{1,200})\)\s*=\s*\(([^=]{1,500})\)\s*$")
_ENGLISH = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")
_COMMANDS = re.compile(r"\\(?:begin|end)\{[^{}]{0,20}\}|\\[A-Za-z]+")
_SHORT_WORDS = {"is", "it", "or", "and", "be", "at", "to", "of", "in", "on", "if", "no", "we", "so", "as", "an", "are",
                "the", "for", "can", "has", "not"}
_MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "pi", "infty", "lim", "max",
               "min", "gcd", "lcm", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "det", "mod", "pmod"}


def top_level_split(text: str) -> list[str]:
    """Split at separators (",", ";", "and", "or", \\quad) outside brackets: "a=3, b=4" → ["a=3", "b=4"]."""
    text = _SEPARATOR.sub(",", " " + text + " ")
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0 and text[i - 1:i] != "\\":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def assignments(text: str) -> list[tuple[str, str]] | None:
    """Return [(variable, value)] of "a=3, b=-7, c=4" / "x = 1 or x = 2" / "x = 1, 2" (two or more), else None."""
    packed = _PACKED.match(text)
    if packed:  # "(a, b, c) = (3, -7, 4)"
        names, values = top_level_split(packed.group(1)), top_level_split(packed.group(2))
        if len(names) == len(values) >= 2 and all(_ASSIGN.match(f"{n} = 0") for n in names):
            return list(zip(names, values, strict=True))
    parts = top_level_split(text)
    if len(parts) < 2:
        return None
    out: list[tuple[str, str]] = []
    for part in parts:
        m = _ASSIGN.match(part)
        if m:
            out.append((m.group(1), m.group(2)))
        elif out and "=" not in part:
            out.append((out[-1][0], part))  # "x = 1, 2": more values of the same variable
        else:
            return None
    return out


def sentence_values(text: str) -> list[str] | None:
    """Return the math pieces of a sentence ("the limit exists and equals 3" → ["3"]), None if it is not prose."""
    t = plain(text)
    # English: a short common word, or three letters or more with a vowel (not "xy", "abc" is still a product
    # when it stands alone: a sentence needs two words besides "and"/"or").
    english = [w for w in _ENGLISH.findall(_COMMANDS.sub(" ", t)) if w.lower() not in _MATH_WORDS and (
        w.lower() in _SHORT_WORDS or (len(w) >= 3 and re.search(r"[aeiouAEIOU]", w)))]
    if len([w for w in english if w.lower() not in ("and", "or")]) < 2:
        return None
    dollars = re.findall(r"\$([^$]{1,500})\$", t)
    if dollars:
        return [d.strip() for d in dollars]
    pieces = []
    for chunk in re.split(r"(?<![\\A-Za-z])(?:" + "|".join(map(re.escape, sorted({w for w in english}, key=len,
                                                                                     reverse=True))) + r")(?![A-Za-z])", t):
        chunk = chunk.strip().strip(",.;:!?").strip()
        if chunk and re.search(r"[0-9A-Za-z\\]", chunk):
            pieces.append(chunk)
    return pieces


def _as_set(values: list[str]) -> str:
    return "\\{" + ",".join(values) + "\\}"


def _as_tuple(values: list[str]) -> str:
    return "(" + ",".join(values) + ")"


def structured(answer: str, reference: str) -> Plan | None:
    """Return a Plan for a reference with several assignments or roots, else None (an ordinary value)."""
    ref = assignments(reference)
    if ref is None:
        return None
    ans = assignments(answer)
    names = [v for v, _ in ref]
    if len(set(names)) == 1:  # roots: "x = 1 or x = 2" is the set {1, 2}
        values = [v for _, v in ans] if ans else top_level_split(answer.strip("{}\\ ").removeprefix("{"))
        return Plan(None, ((_as_set(values), _as_set([v for _, v in ref])),), rule="roots")
    if len(set(names)) != len(names):
        return None
    if ans is None:
        bare = top_level_split(answer[1:-1] if answer[:1] in "([" and answer[-1:] in ")]" else answer)
        if len(bare) != len(ref) or any("=" in b for b in bare):
            return Plan(False, rule="assignments")  # one number, or a different count: never partial credit
        return Plan(None, ((_as_tuple(bare), _as_tuple([v for _, v in ref])),), rule="assignments")
    got = dict(ans)
    if set(got) != set(names) or len(ans) != len(got):
        return Plan(False, rule="assignments")
    return Plan(None, ((_as_tuple([got[n] for n in sorted(names)]), _as_tuple([dict(ref)[n] for n in sorted(names)])),),
                rule="assignments")


# --- percent --------------------------------------------------------------------------------------------

_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*percent\s*\}|\bpercent\b|\\text\{\s*\\%\s*\})\s*$")


def percent(answer: str, reference: str, policy: str) -> Plan | None:
    """Return a Plan when either side is a percent ("12.5\\%"), else None.

    Both policies compare the numbers with the sign dropped (25\\% = 25, "what percent" answers go either way).
    strict: that is all, so 0.25 does not match 25\\%. lenient: the ratio matches too (0.25 = \\frac14 = 25\\%).
    """
    a_pct, r_pct = bool(_PERCENT.search(answer)), bool(_PERCENT.search(reference))
    if not (a_pct or r_pct):
        return None
    a, r = _PERCENT.sub("", answer), _PERCENT.sub("", reference)
    checks = [(a, r)]
    if policy == "lenient" and a_pct != r_pct:
        checks.append((a, f"\\frac{{{r}}}{{100}}") if r_pct else (f"\\frac{{{a}}}{{100}}", r))
    return Plan(None, tuple(checks), "any", rule=f"percent-{policy}")


# --- the planner ----------------------------------------------------------------------------------------


def plan(answer: str, reference: str, percent_policy: str = "strict") -> Plan:
    """Return how to grade `answer` (extracted) against `reference`: the first kind that recognises the reference."""
    a_unit, r_unit = unit_name(unwrap(answer)), unit_name(unwrap(reference))
    if a_unit and r_unit and a_unit != r_unit:
        return Plan(False, rule="units")  # "7 weeks" is not "7 days", though both drop to 7
    a, a_rules = canonical(unwrap(answer))
    r, r_rules = canonical(unwrap(reference))
    rewrites = "+".join(dict.fromkeys(a_rules + r_rules)) or "math"

    ref_yn = yes_no(r)
    if ref_yn is not None:
        return Plan(yes_no(a) == ref_yn, rule="yes-no")
    ref_letters, ref_content = choice(r)
    if ref_letters:
        ans_letters, _ = choice(a)
        if ans_letters:
            return Plan(ans_letters == ref_letters, rule="choice")
        if not ref_content:
            return Plan(False, rule="choice")
        r, rewrites = canonical(ref_content)[0], "choice-content"
    ref_time = clock(r)
    if ref_time is not None:
        ans_time = clock(a)
        half_day = not (ref_time[2] and ans_time and ans_time[2]) and not (ans_time and ans_time[0] > 12)
        return Plan(ans_time is not None and _minutes(ans_time, half_day) == _minutes(ref_time, half_day),
                    rule="time")
    ref_base, ans_base = based(r), based(a)
    if ref_base and ans_base and (ref_base[1] or ans_base[1]):
        wrong_base = ref_base[1] and ans_base[1] and ref_base[1] != ans_base[1]
        return Plan(not wrong_base and ans_base[0] == ref_base[0] and -1 not in (ref_base[1], ans_base[1]), rule="base")
    ref_words = words(r)
    if ref_words is not None and (ref_words and not re.fullmatch(r"[A-Za-z]", plain(r).strip())):
        ans_words = words(a)
        return Plan(ans_words is not None and _same_words(ans_words, ref_words), rule="text")
    values = sentence_values(r)
    if values is not None:
        if not values:
            return Plan(False, rule="free-form")
        r = values[0] if len(values) == 1 else ", ".join(values)
        answer_values = sentence_values(a)
        if answer_values:
            a = answer_values[0] if len(answer_values) == 1 else ", ".join(answer_values)
        if len(values) > 1:
            found = structured(a, r)
            return found if found else Plan(None, ((_as_set(top_level_split(a)), _as_set(values)),), rule="free-form")
        rewrites = "free-form"
    found = structured(a, r)
    if found is not None:
        return found
    pct = percent(a, r, percent_policy)
    if pct is not None:
        return pct
    return Plan(None, ((a, r),), rule=rewrites)
