"""Cutting a trace into episodes, the unit whose progress MRT measures.

Contract: `"".join(split_episodes(trace, fmt)) == trace` for every format, so episode j's prefix is
exactly the first j+1 pieces joined, and token spans can be counted piece by piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from mrt_star.formats.prompts import (
    ATTEMPT_SEPARATOR,
    BACKTRACK_RE,
    FORMATS,
    PARAGRAPH_SEPARATOR,
    RECONSIDER_MARKERS,
    STEP_RE,
    THINK_CLOSE,
)


@dataclass(frozen=True)
class EpisodeOptions:
    """Segmentation knobs: open-ended thinking (parity: min 3 paragraphs, ≤45–49 splits, groups of 3–5) and the
    unit of a backtracking trace (parity: one episode per attempt; `step`: one per numbered step).
    `paragraph_parity`: open paragraphs are exactly `thinking.split("\\n\\n")` (empty ones count)."""

    min_paragraphs: int = 3
    max_splits: int = 48
    group_size: int = 1
    backtrack_unit: str = "attempt"
    paragraph_parity: bool = False


BACKTRACK_UNITS = ("attempt", "step")


def split_episodes(trace: str, fmt: str, options: EpisodeOptions | None = None) -> list[str]:
    """Return the episodes of `trace` (texts that concatenate back to it exactly)."""
    options = options or EpisodeOptions()
    if fmt == "backtrack" and options.backtrack_unit == "step":
        pieces = _split_backtrack_steps(trace)
    elif fmt == "backtrack":
        pieces = _split_backtrack(trace)
    elif fmt == "linearized":
        pieces = _split_linearized(trace)
    elif fmt == "open":
        pieces = _split_open(trace, options)
    else:
        raise ValueError(f"unknown trace format {fmt!r}; choose one of {', '.join(FORMATS)}")
    pieces = [p for p in pieces if p]
    return pieces or [trace]


def _split_backtrack(trace: str) -> list[str]:
    # Episode 0 is the first attempt; every later one starts at its backtrack line.
    starts = [m.start() for m in BACKTRACK_RE.finditer(trace)]
    return _cut(trace, starts)


def _split_backtrack_steps(trace: str) -> list[str]:
    # Every numbered step opens an episode (its check line stays with it), so J is measured after each
    # step and partial work that reveals a sub-result shows as progress; a backtrack line opens the
    # episode of the step that follows it.
    backtracks = {m.end() + 1: m.start() for m in BACKTRACK_RE.finditer(trace)}
    starts = sorted({backtracks.get(m.start(), m.start()) for m in STEP_RE.finditer(trace)} | set(backtracks.values()))
    return _cut(trace, starts)


def _split_linearized(trace: str) -> list[str]:
    # The separator opens the next attempt, so a prefix always ends on a complete attempt.
    starts, pos = [], trace.find(ATTEMPT_SEPARATOR)
    while pos >= 0:
        starts.append(pos)
        pos = trace.find(ATTEMPT_SEPARATOR, pos + len(ATTEMPT_SEPARATOR))
    return _cut(trace, starts)


def _split_open(trace: str, options: EpisodeOptions) -> list[str]:
    close = trace.find(THINK_CLOSE)
    thinking_end = close if close >= 0 else len(trace)
    starts = _parity_paragraph_starts if getattr(options, "paragraph_parity", False) else _paragraph_starts
    splits, paragraphs_in_episode = [], 1
    for start in starts(trace, thinking_end):
        opens_with_marker = trace.startswith(RECONSIDER_MARKERS, start)
        if opens_with_marker and paragraphs_in_episode >= options.min_paragraphs:
            splits.append(start)
            paragraphs_in_episode = 1
        else:
            paragraphs_in_episode += 1
    splits = splits[: options.max_splits]
    if options.group_size > 1:
        splits = splits[options.group_size - 1 :: options.group_size]
    return _cut(trace, splits)


def _paragraph_starts(trace: str, thinking_end: int) -> list[int]:
    # After each blank-line separator, skipping further newlines (a run of them is one separator).
    out, pos = [], trace.find(PARAGRAPH_SEPARATOR)
    while 0 <= pos < thinking_end:
        start = pos + len(PARAGRAPH_SEPARATOR)
        while start < thinking_end and trace[start] == "\n":
            start += 1
        if start < thinking_end:
            out.append(start)
        pos = trace.find(PARAGRAPH_SEPARATOR, start)
    return out


def _parity_paragraph_starts(trace: str, thinking_end: int) -> list[int]:
    # Where the pieces of `trace[:thinking_end].split("\n\n")` after the first begin: "a\n\n\nb" gives
    # "a", "\nb" (no marker at its start); "a\n\n\n\nb" gives "a", "", "b" (the empty one counts).
    out, pos = [], 0
    for piece in trace[:thinking_end].split(PARAGRAPH_SEPARATOR)[:-1]:
        pos += len(piece) + len(PARAGRAPH_SEPARATOR)
        out.append(pos)
    return out


def _cut(text: str, starts: list[int]) -> list[str]:
    bounds = [0, *[s for s in starts if s > 0], len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def episode_prefixes(episodes: list[str]) -> list[str]:
    """Return the prefixes z_{0:j} for j = -1..L-1 (the first is the empty prefix)."""
    out, acc = [""], ""
    for piece in episodes:
        acc += piece
        out.append(acc)
    return out
