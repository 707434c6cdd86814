"""History-conditioned eval: what the model is given before it continues a trace (the four reference variants).

For a trace whose first episode e0 is a failed (or finished) first rollout and whose second episode opens with
a backtrack (backtrack format: "Backtrack to Line k"; open format: a reconsider paragraph such as "Wait, ..."):

- `restart`: e0, then a restart cue ("Backtrack to beginning" / "Wait, let me solve it again from the
  beginning.") — the model starts over with the first rollout in context.
- `backtrack-shared`: e0, the backtrack line, then the shared prefix written again (backtrack: Lines 1..k-1
  of e0; open: e0's paragraphs before its last one) — the model continues where the rollouts diverge.
- `backtrack-unshared`: e0 and the backtrack line only — the model writes everything after the backtrack.
- `no-rollout`: the shared prefix alone, without the full first rollout (the history-free control).

A trace with no backtrack of its own backtracks to the beginning ("Backtrack to beginning", or "Wait," for open
traces), so its shared prefix is empty (open: e0's paragraphs before the last).
"""

from __future__ import annotations

import re
from typing import Any

from mrt_star.errors import UserError

HISTORY_VARIANTS = ("restart", "backtrack-shared", "backtrack-unshared", "no-rollout")
OPEN_RESTART = "Wait, let me solve it again from the beginning.\n\n"
OPEN_BACKTRACK = "Wait, let me check that again.\n\n"


def _backtrack_parts(episodes: list[str]) -> tuple[str, str, str]:
    """Return (restart cue, backtrack line, shared prefix) of a backtrack trace."""
    from mrt_star.formats.prompts import BACKTRACK_RE, STEP_RE, backtrack_line

    e0 = episodes[0] if episodes[0].endswith("\n") else episodes[0] + "\n"
    restart = backtrack_line(None) + "\n"
    m = BACKTRACK_RE.match(episodes[1]) if len(episodes) > 1 else None
    if not m:
        return restart, restart, ""
    to_step = int(m.group(1) or 0)
    shared = ""
    for step in STEP_RE.finditer(e0):  # Lines 1..k-1 of the first rollout
        if int(step.group(1)) >= to_step:
            break
        end = e0.find("\n", step.start())
        shared = e0[: end + 1 if end >= 0 else len(e0)]
    return restart, m.group(0) + "\n", shared


def _open_parts(episodes: list[str]) -> tuple[str, str, str]:
    """Return (restart cue, reconsider paragraph, shared prefix) of an open trace."""
    from mrt_star.formats.prompts import PARAGRAPH_SEPARATOR, think_opening

    e0 = episodes[0]
    marker = episodes[1].split(PARAGRAPH_SEPARATOR)[0] + PARAGRAPH_SEPARATOR if len(episodes) > 1 else OPEN_BACKTRACK
    paragraphs = re.split(r"(?<=\n\n)", e0.rstrip("\n") + PARAGRAPH_SEPARATOR)
    shared = "".join(paragraphs[:-2]) if len(paragraphs) > 2 else think_opening(e0)
    return OPEN_RESTART, marker, shared


def history_given(episodes: list[str], fmt: str, variant: str) -> str:
    """Return the assistant text the model continues under a history variant (see the module docstring)."""
    from mrt_star.formats.prompts import PARAGRAPH_SEPARATOR, think_opening

    if variant not in HISTORY_VARIANTS:
        raise UserError(f"history_variants: unknown variant {variant!r}; choose from {', '.join(HISTORY_VARIANTS)}")
    if fmt not in ("backtrack", "open"):
        raise UserError(f"history mode continues backtrack or open traces; {fmt!r} traces have no backtrack to "
                        "condition on (use --mode linearized for sequential attempts)")
    restart, backtrack, shared = (_backtrack_parts if fmt == "backtrack" else _open_parts)(episodes)
    e0 = episodes[0]
    if fmt == "backtrack" and not e0.endswith("\n"):
        e0 += "\n"
    if fmt == "open" and not e0.endswith(PARAGRAPH_SEPARATOR):
        e0 = e0.rstrip("\n") + PARAGRAPH_SEPARATOR
    if variant == "restart":
        return e0 + restart
    if variant == "backtrack-unshared":
        return e0 + backtrack
    if variant == "backtrack-shared":
        return e0 + backtrack + (shared[len(think_opening(shared)):] if fmt == "open" else shared)
    return shared


def history_items(rows: list[dict[str, Any]], variants: list[str], default_format: str,
                  episode_options: Any = None) -> list[dict[str, Any]]:
    """Return one eval item per (trace, variant): the trace's prompt and the given text to continue."""
    from mrt_star.formats.episodes import split_episodes

    items = []
    for row in rows:
        fmt = row.get("format") or default_format
        episodes = row.get("episodes") or []
        texts = [e["text"] for e in episodes] if episodes and isinstance(episodes[0], dict) else \
            split_episodes(row["completion"], fmt, episode_options)
        for variant in variants:
            items.append({"item_id": f"{row['problem_id']}#{row.get('sample_index', 0)}@{variant}",
                          "problem_id": row["problem_id"], "problem": row["problem"], "answer": row["answer"],
                          "prompt": list(row["prompt"]), "given": history_given(texts, fmt, variant),
                          "given_tokens": None, "format": fmt, "history_variant": variant})
    return items
