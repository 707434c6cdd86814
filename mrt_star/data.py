"""Problem sets: loading from the toy world, local files or the Hub into one schema.

Every stage that starts from problems calls `load_problems`, so column mapping, answer extraction and
the error messages for bad input live in one place. Rows come back as dicts with at least
`problem_id`, `problem`, `answer` (see `mrt_star.schemas.PROBLEMS`); other columns are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
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
    # Rows whose answer is null or empty: refused with their row number, or (True) skipped and counted.
    skip_rows_without_answer: bool = False


def problem_source(cfg: Any, source: str | None = None, seed: int | None = None) -> ProblemSource:
    """Return the ProblemSource a stage config describes (its input, limit, seed and problem-source options)."""
    return ProblemSource(source=source or cfg.input or "toy", split=cfg.split, subset=cfg.subset,
                         problem_column=cfg.problem_column, answer_column=cfg.answer_column,
                         id_column=cfg.id_column, limit=cfg.limit, seed=cfg.seed if seed is None else seed,
                         skip_rows_without_answer=cfg.skip_rows_without_answer)


def problem_id(problem: str, answer: str) -> str:
    """Return a stable id from the content of a problem and its answer."""
    return "p-" + hashlib.sha256(f"{problem}\x00{answer}".encode()).hexdigest()[:12]


class JsonNumber(float):
    """A JSON float that remembers its text, so an answer like `1.50` or `2.0` is kept exactly as written."""

    text: str

    def __new__(cls, text: str) -> JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _json_rows(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict) and data and all(isinstance(v, (list, dict)) for v in data.values()):
        columns = {k: list(v.values()) if isinstance(v, dict) else v for k, v in data.items()}  # column-oriented
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return data
    raise ProblemError(f"{path}: expected a list of objects (one per problem) or JSON lines")


def _read_json(path: Path) -> list[dict[str, Any]]:
    """Read JSON or JSON lines with the stdlib: integers stay exact and no column is coerced to float."""
    text = path.read_text()
    if path.suffix == ".json":
        try:
            return _json_rows(json.loads(text, parse_float=JsonNumber), path)
        except json.JSONDecodeError:
            pass  # a .json file holding JSON lines
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line, parse_float=JsonNumber)
            except json.JSONDecodeError as err:
                raise ProblemError(f"{path}: cannot be read as {path.suffix[1:]} (line {number}: {err.msg})") from None
            if not isinstance(row, dict):
                raise ProblemError(f"{path}: cannot be read as {path.suffix[1:]} (line {number} is not an object)")
            rows.append(row)
    return rows


def _read_local(path: Path) -> list[dict[str, Any]]:
    """Return a local file's rows with values as written (text stays text, integers exact, nulls None)."""
    try:
        if path.suffix in (".jsonl", ".json"):
            return _read_json(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        import pandas as pd

        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict(orient="records")
    except ProblemError:
        raise
    except Exception as err:  # pandas/pyarrow raise many types; the user needs the file and the reason
        raise ProblemError(f"{path}: cannot be read as {path.suffix[1:]} ({str(err).splitlines()[0]})") from None


def _read_saved(path: Path, source: ProblemSource) -> list[dict[str, Any]]:
    """Return the rows of a `datasets` save_to_disk folder (a Dataset, or a DatasetDict split)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise ProblemError(f"{path}: cannot be loaded with datasets.load_from_disk ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if source.split is not None:
            if source.split not in loaded:
                raise ProblemError(f"{path}: no split {source.split!r}; splits are {', '.join(loaded)}")
            return loaded[source.split].to_list()
        return pick_split(dict(loaded), str(path)).to_list()
    return loaded.to_list()


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))


def _text(value: Any) -> str | None:
    """Return a cell as the text it was written as; None for a missing value (null, NaN, empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, JsonNumber):
        return value.text
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip()
    return text or None


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, JsonNumber) else value


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
                   answer_column: str | None = None, id_column: str | None = None,
                   skip_rows_without_answer: bool = False) -> list[dict[str, Any]]:
    """Return rows mapped to the problem schema, or raise ProblemError naming the bad row/column.

    Answers and ids are kept as the text they were written as (no float coercion); a row without an
    answer is refused, or skipped and counted with `skip_rows_without_answer`.
    """
    if not rows:
        raise ProblemError(f"{where}: no rows")
    columns = list(dict.fromkeys(k for row in rows[:100] for k in row))
    p_col = _pick(columns, problem_column, PROBLEM_COLUMNS, "problem", where)
    a_col = _pick(columns, answer_column, ANSWER_COLUMNS, "answer", where)
    id_col = _pick(columns, id_column, (), "id", where) if id_column else next(
        (c for c in ID_COLUMNS if c in columns), None)
    out, seen, skipped = [], set(), 0
    for i, row in enumerate(rows):
        problem = row.get(p_col)
        if not isinstance(problem, str) or not problem.strip():
            raise ProblemError(f"{where}: row {i}: empty {p_col!r}")
        answer = _text(row.get(a_col)) or ""
        if a_col == "solution" or (a_col != "answer" and "\\boxed" in answer):
            answer = last_boxed(answer) or ""
        if not answer:
            if skip_rows_without_answer:
                skipped += 1
                continue
            raise ProblemError(f"{where}: row {i}: no answer in column {a_col!r}"
                               + (" (no \\boxed{} in the solution)" if a_col == "solution" else " (null or empty)")
                               + "; fix the row or skip such rows (skip_rows_without_answer)")
        given = _text(row.get(id_col)) if id_col else None
        pid = given or problem_id(problem, answer)
        if pid in seen:  # duplicates would make resumes and per-problem filters ambiguous
            pid = f"{pid}-{i}"
        seen.add(pid)
        extra = {k: _plain(v) for k, v in row.items()
                 if k not in (p_col, a_col, id_col, "problem", "answer", "problem_id")}
        out.append({"problem_id": pid, "problem": problem, "answer": answer, **extra})
    if skipped:
        from mrt_star.console import console

        console.print(f"[yellow]{where}: skipped {skipped} row(s) without an answer[/yellow]")
    if not out:
        raise ProblemError(f"{where}: no row has an answer in column {a_col!r}")
    return out


def load_problems(source: ProblemSource | str, **kw) -> list[dict[str, Any]]:
    """Return the problems of a source: 'toy', a local .jsonl/.json/.parquet/.csv file, a `datasets`
    save_to_disk folder, or a Hub dataset id."""
    src = source if isinstance(source, ProblemSource) else ProblemSource(source=str(source), **kw)
    name = src.source
    if name == "toy" or name.startswith("toy:"):
        from mrt_star.toy.problems import generate_problems

        n = int(name.split(":", 1)[1]) if ":" in name else (src.limit or src.toy_n)
        rows = generate_problems(n, seed=src.seed)
        where = "toy"
    else:
        path = Path(name).expanduser()
        if _is_saved_dataset(path):
            rows, where = _read_saved(path, src), str(path)
        elif path.suffix in LOCAL_SUFFIXES or path.exists() or name.startswith((".", "/", "~")):
            if path.is_dir():
                raise ProblemError(f"{name}: a folder that is not a `datasets` save_to_disk folder (no "
                                   f"dataset_dict.json or state.json); pass a file ({', '.join(LOCAL_SUFFIXES)})")
            if not path.is_file():
                raise ProblemError(f"{name}: no such file")
            if path.suffix not in LOCAL_SUFFIXES:
                raise ProblemError(f"{name}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")
            rows, where = _read_local(path), str(path)
        else:
            rows, where = _read_hub(src), name
    rows = normalise_rows(rows, where, src.problem_column, src.answer_column, src.id_column,
                          src.skip_rows_without_answer)
    if src.shuffle:
        random.Random(src.seed).shuffle(rows)
    return rows[: src.limit] if src.limit else rows
