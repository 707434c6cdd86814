"""Named string rewrites that turn the many ways models write one value into LaTeX math-verify reads.

Each rewrite is a pure function `text -> text` with bounded, linear regexes (model text is untrusted; nothing
here evaluates it). `canonical` applies them in order and reports which ones changed the text, so a grade can
say which rule made it match. Structured kinds (choices, bases, yes/no, assignments) live in `kinds.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

# --- unicode math ---------------------------------------------------------------------------------------

_UNICODE = {
    "∞": "\\infty ", "π": "\\pi ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "−": "-", "–": "-", "—": "-",
    "×": "\\times ", "·": "\\cdot ", "⋅": "\\cdot ", "÷": "\\div ", "±": "\\pm ", "∪": "\\cup ", "∩": "\\cap ",
    "°": "^\\circ ", "º": "^\\circ ", "²": "^{2}", "³": "^{3}", "½": "\\frac{1}{2}", "⅓": "\\frac{1}{3}",
    "¼": "\\frac{1}{4}", "¾": "\\frac{3}{4}", "⅔": "\\frac{2}{3}", "θ": "\\theta ", "α": "\\alpha ",
    "β": "\\beta ", "∈": "\\in ", "√": "√", "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_ROOT = re.compile(r"√\s*(\([^()]{0,200}\)|\{[^{}]{0,200}\}|[0-9]+(?:\.[0-9]+)?|[A-Za-z])")


def unicode_math(text: str) -> str:
    """∞ π √ ≤ ≥ − × ° … → their LaTeX commands: models (Llama especially) write them outside LaTeX."""
    if text.isascii():
        return text
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], text)
    return _ROOT.sub(lambda m: "\\sqrt{" + m.group(1).strip("(){}") + "}", text).replace("√", "\\sqrt")


# --- repeating decimals ---------------------------------------------------------------------------------

_OVERLINE = re.compile(r"(?<![0-9.])(-?)([0-9]{0,30})\.([0-9]{0,30})\\(?:overline|bar|dot)\s*\{?([0-9]{1,30})\}?")
_ELLIPSIS = re.compile(r"(?<![0-9.])(-?)([0-9]{0,30})\.([0-9]{1,60})\s*(?:\\ldots|\\cdots|\\dots|\.\.\.|…)")


def _fraction_latex(value: Fraction) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}{value.numerator}" if value.denominator == 1 else f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _repeating_value(whole: str, fixed: str, period: str) -> Fraction:
    base = Fraction(int(whole or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
    return base + Fraction(int(period), (10 ** len(period) - 1) * 10 ** len(fixed))


def _ellipsis(m: re.Match[str]) -> str:
    """0.1666... → 1/6 when the digits end in at least two copies of a period; else the truncated decimal."""
    sign, whole, digits = m.groups()
    for p in range(1, len(digits) // 2 + 1):
        if digits[-p:] == digits[-2 * p:-p]:
            start = len(digits) - 2 * p
            while start > 0 and digits[start - 1] == digits[start - 1 + p]:
                start -= 1
            value = _repeating_value(whole, digits[:start], digits[start:start + p])
            return _fraction_latex(-value if sign else value)
    if len(digits) == 1:  # "0.3...": one digit and an ellipsis is that digit repeating
        value = _repeating_value(whole, "", digits)
        return _fraction_latex(-value if sign else value)
    return f"{sign}{whole or '0'}.{digits}"


def repeating_decimal(text: str) -> str:
    """0.\\overline{3}, 0.\\bar{3}, 0.333\\ldots, 0.1666... → the exact fraction (1/3, 1/6), so fractions match them."""
    if "." not in text and "…" not in text:
        return text

    def overline(m: re.Match[str]) -> str:
        sign, whole, fixed, period = m.groups()
        value = _repeating_value(whole, fixed, period)
        return _fraction_latex(-value if sign else value)

    return _ELLIPSIS.sub(_ellipsis, _OVERLINE.sub(overline, text))


# --- scientific notation --------------------------------------------------------------------------------

_E_NOTATION = re.compile(r"(?<![A-Za-z\\0-9.])([0-9]+(?:\.[0-9]+)?)\s*[eE]\s*([+-]?[0-9]{1,4})(?![A-Za-z0-9])")
_TIMES_TEN = re.compile(r"([0-9])\s*(?:\*|x|\\cdot|\\times)\s*10\s*\^\s*(?:\{\s*([+-]?[0-9]{1,4})\s*\}|([+-]?[0-9]{1,4}))")


def scientific(text: str) -> str:
    """6.02e23, 6.02E+23, 6.02*10^23, 6.02\\cdot10^{23} → 6.02\\times10^{23} (one form math-verify reads right)."""
    text = _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{int(m.group(2))}}}", text)
    return _TIMES_TEN.sub(lambda m: f"{m.group(1)}\\times10^{{{int(m.group(2) or m.group(3))}}}", text)


# --- mixed numbers --------------------------------------------------------------------------------------

_MIXED = re.compile(r"(?<![0-9.}^_{])(-?)([0-9]{1,12})\s*(?:\\[dt]?frac(?:\{([0-9]{1,12})\}\{([0-9]{1,12})\}|([0-9])([0-9]))"
                    r"|\s([0-9]{1,12})/([0-9]{1,12}))"
                    r"(?![0-9/])")


def mixed_number(text: str) -> str:
    """12\\frac{1}{2} or "12 1/2" (a proper fraction after a whole number) → 25/2: a mixed number, not a product."""
    def repl(m: re.Match[str]) -> str:
        sign, whole = m.group(1), m.group(2)
        num, den = m.group(3) or m.group(5) or m.group(7), m.group(4) or m.group(6) or m.group(8)
        if not 0 < int(num) < int(den):
            return m.group()
        value = int(whole) + Fraction(int(num), int(den))
        return _fraction_latex(-value if sign else value)

    return _MIXED.sub(repl, text) if "frac" in text or "/" in text else text


# --- vectors and matrices -------------------------------------------------------------------------------

_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]{0,50}\})?(.{0,2000}?)\\end\{\1\}", re.S)
_ANGLE = re.compile(r"\\langle(.{0,500}?)\\rangle", re.S)


def vector(text: str) -> str:
    """A one-row or one-column pmatrix/bmatrix, or ⟨a, b⟩, → the tuple (a, b): the same vector, written as a tuple."""
    def repl(m: re.Match[str]) -> str:
        if m.group(1).startswith(("v", "V")):
            return m.group()  # a determinant, not a vector
        rows = [r.strip() for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        cells = [[c.strip() for c in r.split("&")] for r in rows]
        if len(cells) == 1 and len(cells[0]) > 1:
            return "(" + ",".join(cells[0]) + ")"
        if len(cells) > 1 and all(len(r) == 1 for r in cells):
            return "(" + ",".join(r[0] for r in cells) + ")"
        return "\\begin{pmatrix}" + m.group(2) + "\\end{pmatrix}"  # one matrix kind: bmatrix = pmatrix

    if "\\begin" in text:
        text = _MATRIX.sub(repl, text)
    return _ANGLE.sub(lambda m: "(" + m.group(1).strip() + ")", text) if "\\langle" in text else text


# --- degrees and units ----------------------------------------------------------------------------------

_DEGREE = re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|\\degree|\\textdegree|\^\s*\{?\s*o\s*\}?(?![A-Za-z])|"
                     r"\\?(?:\\text|\\mbox|\\mathrm)?\s*\{?\s*degrees?\s*\}?(?![A-Za-z]))(?:\s*(?:\\text\{\s*)?[CF]\b\}?)?")
_NUMBER = r"[+-]?(?:[0-9]+(?:[.,][0-9]+)*|\.[0-9]+)"
_UNIT_TAIL = re.compile(r"(?<=[0-9}])\s*(?:\\(?:text|mbox|mathrm|textrm)\s*\{\s*([A-Za-z][A-Za-z .²³^/\-]{0,40})\}"
                        r"|((?:\s+[A-Za-z][A-Za-z.\-]{0,20}){1,3}))\s*(?:\^\s*\{?[23]\}?)?\s*$")
_NOT_UNITS = {"or", "and", "if", "for", "when", "but", "not", "no", "is", "are", "pm", "am", "p.m.", "a.m.", "i",
              "e", "x", "y", "z", "n", "k", "m", "t", "a", "b", "c", "d", "r"}
_TEXT_NUMBER = re.compile(r"\\(?:text|mbox|mathrm|textrm)\s*\{\s*(" + _NUMBER + r")\s+([A-Za-z][A-Za-z .\-]{0,40})\}")


_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|~")  # a spacing command, not half of a \\ row break


def degrees(text: str) -> str:
    """30°, 30^{\\circ}, 30\\degree, 30 degrees, 30^\\circ C → 30^\\circ (math-verify knows only the ^\\circ form)."""
    if "circ" not in text and "deg" not in text:
        return text
    text = re.sub(r"\\(?:text|mbox|mathrm)\{\s*\^\\circ\s*\}", "^\\\\circ", text)  # \text{°} after unicode_math
    return _DEGREE.sub("^\\\\circ", text)


def unit_words(text: str) -> str:
    """7 days, \\text{7 days}, 12\\text{ cm}, 120 possible ways → 7, 12, 120: a trailing unit name is not the value.

    Only a tail of at most three words after a number goes, and never a connective ("or", "and"): the value
    must stay whole, so "1 or 2" is never cut to "1".
    """
    text = _TEXT_NUMBER.sub(lambda m: m.group(1) + "\\text{ " + m.group(2) + "}", _SPACING.sub(" ", text))
    m = _UNIT_TAIL.search(text)
    if m is None:
        return text
    words = (m.group(1) or m.group(2) or "").lower().replace(".", " ").split()
    if not words or any(w in _NOT_UNITS for w in words) or not text[:m.start()].strip():
        return text
    return text[:m.start()].rstrip()


_UNIT_ALIASES = {
    "cm": "cm", "centimeter": "cm", "centimetre": "cm", "km": "km", "kilometer": "km", "kilometre": "km",
    "m": "m", "meter": "m", "metre": "m", "mm": "mm", "millimeter": "mm", "inch": "in", "inche": "in", "ft": "ft", "foot": "ft",
    "feet": "ft", "yard": "yd", "yd": "yd", "mile": "mi", "mi": "mi", "mph": "mph", "day": "day", "week": "week",
    "month": "month", "year": "year", "hour": "hour", "hr": "hour", "minute": "minute", "min": "minute",
    "second": "second", "sec": "second", "dollar": "dollar", "cent": "cent", "kg": "kg", "kilogram": "kg",
    "gram": "g", "pound": "lb", "lb": "lb", "liter": "l", "litre": "l", "ml": "ml", "milliliter": "ml",
}


def unit_name(text: str) -> str | None:
    """Return the canonical name of a known trailing unit ("7 weeks" → "week", "15 centimeters" → "cm"), else None.

    Why: unit words are dropped before comparing, so "7 weeks" against "7 days" must be caught here first.
    """
    text = _TEXT_NUMBER.sub(lambda m: m.group(1) + "\\text{ " + m.group(2) + "}", _SPACING.sub(" ", text))
    m = _UNIT_TAIL.search(text)
    if m is None:
        return None
    words = (m.group(1) or m.group(2) or "").lower().replace(".", " ").split()
    for word in reversed(words):
        for stem in (word, word.removesuffix("s"), word.removesuffix("es")):
            if stem in _UNIT_ALIASES:
                return _UNIT_ALIASES[stem]
    return None


# --- the pipeline ---------------------------------------------------------------------------------------

# (rule name, kind it serves, rewrite). Order matters: unicode first (°, ×, √ become LaTeX), repeating decimals
# before anything reads "...", mixed numbers before units drop words.
REWRITES: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("unicode", unicode_math),
    ("repeating-decimal", repeating_decimal),
    ("scientific", scientific),
    ("mixed-number", mixed_number),
    ("vector", vector),
    ("degrees", degrees),
    ("units", unit_words),
)


def canonical(text: str) -> tuple[str, list[str]]:
    """Return `text` after every rewrite, and the names of the rewrites that changed it."""
    applied = []
    for name, rewrite in REWRITES:
        new = rewrite(text)
        if new != text:
            applied.append(name)
            text = new
    return text.strip(), applied
