"""Hendrycks-MATH answer normalisation (the classic `strip_string` pipeline) and exact-match equivalence.

Used by the `hendrycks` grading mode for parity with the reference MRT code, which grades by exact string
match after this normalisation. Pure string operations with linear regexes: safe on untrusted text.
"""

from __future__ import annotations

import re

# \sqrt3 → \sqrt{3}: a single-character radicand written without braces.
_SQRT_BARE = re.compile(r"\\sqrt\s*([^{\\\s])")
# \frac12 → \frac{1}{2} and \frac1{72} → \frac{1}{72}: single-character numerator/denominator without braces.
_FRAC_BARE = re.compile(r"\\frac([^{\\])(\{|[^{\\])")
_A_SLASH_B = re.compile(r"(-?(?:0|[1-9][0-9]*))/(-?(?:0|[1-9][0-9]*))")


def normalize(answer: str) -> str:
    """Return `answer` normalised the Hendrycks-MATH way (compare two answers by == on this)."""
    s = answer.replace("\n", "").replace("\\!", "")
    s = s.replace("\\\\", "\\")  # a doubled backslash is an escaping artefact
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")  # degrees
    s = s.replace("\\$", "")  # dollars
    s = _drop_units(s)
    s = s.replace("\\%", "")  # percentage
    s = _fix_leading_zero(s)
    if not s:
        return s
    s = _drop_short_lhs(s)
    s = _SQRT_BARE.sub(r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _FRAC_BARE.sub(_braced_frac, s)
    if s == "0.5":
        return "\\frac{1}{2}"
    return _A_SLASH_B.sub(r"\\frac{\1}{\2}", s) if _A_SLASH_B.fullmatch(s) else s


def equivalent(answer: str | None, reference: str | None) -> bool:
    """Return True when both answers normalise to the same string (two missing answers are not equal)."""
    if answer is None or reference is None:
        return False
    return normalize(answer) == normalize(reference)


def _drop_units(s: str) -> str:
    """Return `s` without a trailing unit: everything from the first "\\text{ " (space inside) on."""
    head, sep, _ = s.partition("\\text{ ")
    return head if sep else s


def _fix_leading_zero(s: str) -> str:
    """Return `s` with ".5" written "0.5" after a space, an opening brace, or at the start."""
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    return "0" + s if s.startswith(".") else s


def _drop_short_lhs(s: str) -> str:
    """Return the right-hand side of a single equation whose left side is short ("x = 3" → " 3")."""
    lhs, sep, rhs = s.partition("=")
    if sep and "=" not in rhs and len(lhs) <= 2:
        return rhs
    return s


def _braced_frac(m: re.Match[str]) -> str:
    numerator, second = m.group(1), m.group(2)
    return "\\frac{" + numerator + "}{" if second == "{" else "\\frac{" + numerator + "}{" + second + "}"
