"""Problem sets: loading from the toy world, local files or the Hub into one schema.

Every stage that starts from problems calls `load_problems`, so column mapping, answer extraction and
the error messages for bad input live in one place. Rows come back as dicts with at least
`problem_id`, `problem`, `answer` (see `mrt_star.schemas.PROBLEMS`); other columns are kept.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.errors import UserError
from mrt_star.grading.extract import last_boxed

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
PROBLEM_COLUMNS = ("problem", "question", "prompt")
ANSWER_COLUMNS = ("answer", "final_answer", "solution")
ID_COLUMNS = ("problem_id", "id", "unique_id")


class ProblemError(UserError, ValueError):
    """A problem set that cannot be used as given."""


@dataclass
class ProblemSource:
    """Where problems come from and how to read them (the problem-source options of a stage, resolved)."""

    source: str = "toy"
    split: str | None = None
    subset: str | None = None
    problem_column: str | None = None
    answer_column: str | None = None
    id_column: str | None = None
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0
    toy_n: int = 500


def problem_source(cfg: Any, source: str | None = None, seed: int | None = None) -> ProblemSource:
    """Return the ProblemSource a stage config describes (its input, limit, seed and problem-source options)."""
    return ProblemSource(source=source or cfg.input or "toy", split=cfg.split, subset=cfg.subset,
                         problem_column=cfg.problem_column, answer_column=cfg.answer_column,
                         id_column=cfg.id_column, limit=cfg.limit, seed=cfg.seed if seed is None else seed)


def problem_id(problem: str, answer: str) -> str:
    """Return a stable id from the content of a problem and its answer."""
    return "p-" + hashlib.sha256(f"{problem}\x00{answer}".encode()).hexdigest()[:12]


def _read_local(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        if path.suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        elif path.suffix == ".json":
            try:
                frame = pd.read_json(path, dtype=False)
            except ValueError:
                frame = pd.read_json(path, lines=True, dtype=False)
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many types; the user needs the file and the reason
        raise ProblemError(f"{path}: cannot be read as {path.suffix[1:]} ({str(err).splitlines()[0]})") from None
    return frame.to_dict(orient="records")


def _read_hub(source: ProblemSource) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_dataset(source.source, source.subset, split=source.split)
    except Exception as err:
        raise ProblemError(
            f"{source.source!r} is neither a local file ({', '.join(LOCAL_SUFFIXES)}) nor a loadable Hub dataset "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if source.split is None:  # a DatasetDict: 'train', else its only split
        return pick_split(dict(loaded), source.source).to_list()
    return loaded.to_list()


def pick_split(splits: dict[str, Any], where: str) -> Any:
    """Return the split to read when none was named: 'train', else the only one; else ask for --split."""
    if "train" in splits:
        return splits["train"]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise ProblemError(f"{where}: several splits ({', '.join(splits)}) and none is 'train'; choose one with --split")


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: str) -> str:
    if wanted:
        if wanted not in columns:
            raise ProblemError(f"{where}: no column {wanted!r} for the {what}; columns are {', '.join(columns)}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ProblemError(
        f"{where}: no {what} column (looked for {', '.join(candidates)}); columns are {', '.join(columns)}; "
        f"name it with --{what}-column"
    )


def normalise_rows(rows: list[dict[str, Any]], where: str, problem_column: str | None = None,
                   answer_column: str | None = None, id_column: str | None = None) -> list[dict[str, Any]]:
    """Return rows mapped to the problem schema, or raise ProblemError naming the bad row/column."""
    if not rows:
        raise ProblemError(f"{where}: no rows")
    columns = list(dict.fromkeys(k for row in rows[:100] for k in row))
    p_col = _pick(columns, problem_column, PROBLEM_COLUMNS, "problem", where)
    a_col = _pick(columns, answer_column, ANSWER_COLUMNS, "answer", where)
    id_col = _pick(columns, id_column, (), "id", where) if id_column else next(
        (c for c in ID_COLUMNS if c in columns), None)
    out, seen = [], set()
    for i, row in enumerate(rows):
        problem = row.get(p_col)
        if not isinstance(problem, str) or not problem.strip():
            raise ProblemError(f"{where}: row {i}: empty {p_col!r}")
        answer = row.get(a_col)
        answer = "" if answer is None else str(answer).strip()
        if a_col == "solution" or (a_col != "answer" and "\\boxed" in answer):
            answer = last_boxed(answer) or ""
        if not answer:
            raise ProblemError(f"{where}: row {i}: no answer in column {a_col!r}"
                               + (" (no \\boxed{} in the solution)" if a_col == "solution" else ""))
        pid = str(row[id_col]) if id_col and row.get(id_col) not in (None, "") else problem_id(problem, answer)
        if pid in seen:  # duplicates would make resumes and per-problem filters ambiguous
            pid = f"{pid}-{i}"
        seen.add(pid)
        extra = {k: v for k, v in row.items() if k not in (p_col, a_col, id_col, "problem", "answer", "problem_id")}
        out.append({"problem_id": pid, "problem": problem, "answer": answer, **extra})
    return out


def load_problems(source: ProblemSource | str, **kw) -> list[dict[str, Any]]:
    """Return the problems of a source: 'toy', a local .jsonl/.json/.parquet/.csv file, or a Hub dataset id."""
    src = source if isinstance(source, ProblemSource) else ProblemSource(source=str(source), **kw)
    name = src.source
    if name == "toy" or name.startswith("toy:"):
        from mrt_star.toy.problems import generate_problems

        n = int(name.split(":", 1)[1]) if ":" in name else (src.limit or src.toy_n)
        rows = generate_problems(n, seed=src.seed)
        where = "toy"
    else:
        path = Path(name).expanduser()
        if path.suffix in LOCAL_SUFFIXES or path.exists() or name.startswith((".", "/", "~")):
            if not path.is_file():
                raise ProblemError(f"{name}: no such file")
            if path.suffix not in LOCAL_SUFFIXES:
                raise ProblemError(f"{name}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")
            rows, where = _read_local(path), str(path)
        else:
            rows, where = _read_hub(src), name
    rows = normalise_rows(rows, where, src.problem_column, src.answer_column, src.id_column)
    if src.shuffle:
        random.Random(src.seed).shuffle(rows)
    return rows[: src.limit] if src.limit else rows
