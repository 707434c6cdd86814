"""`mrt-star grade`: grade a JSONL of (completion, reference) rows and report agreement with labels per kind.

Why: the grader decides which traces count as correct in every stage, so its agreement with human labels on
what models really write is worth measuring on any labelled set (ours: tests/data/grading_real_outputs.jsonl).
Prints one table row per kind: pairs, graded correct, agreement with the labels, and wrong answers the
grader credited (the costly error: a wrong trace kept for training). Optionally writes per-row verdicts.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.config import check_config, option
from mrt_star.errors import UserError
from mrt_star.options import GradingOptions

_TRUE = {"true", "1", "yes", "correct"}
_FALSE = {"false", "0", "no", "wrong", "incorrect"}


@dataclass
class GradeConfig(GradingOptions):
    """What `run_grade` reads, how it grades (the shared grading options), and where it writes verdicts."""

    input: str = option(help="JSONL file, one object per line with a completion and a reference column")
    output: str | None = option(None, "write one JSON verdict per input row here (correct, extracted, reason, rule)")
    limit: int | None = option(None, "use only the first N input rows", at_least=1)
    completion_column: str = option("completion", "column holding the model's completion")
    reference_column: str = option("reference", "column holding the reference answer")
    label_column: str | None = option("label", "column of true/false labels; agreement is reported per kind "
                                      "(none: grade unlabelled rows)")
    kind_column: str | None = option(None, "column to group the table by (e.g. kind); none: one row for all")
    timeout_s: float = option(5.0, "seconds one answer may take before it is graded wrong (reason timeout)", above=0)
    grading_workers: int | None = option(None, "grading worker processes (none: up to 2)", at_least=1)


def read_rows(cfg: GradeConfig) -> list[dict[str, Any]]:
    """Return the input rows, or raise UserError naming the file, line or column that is wrong."""
    path = Path(cfg.input)
    if not path.is_file():
        raise UserError(f"grade input {cfg.input!r} is not a file (expected a JSONL file)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if cfg.limit is not None and len(rows) >= cfg.limit:
                break
            try:
                row = json.loads(line)
            except ValueError as err:
                raise UserError(f"{path}:{number}: not a JSON line ({err.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            for column in (cfg.completion_column, cfg.reference_column, cfg.label_column, cfg.kind_column):
                if column is not None and column not in row:
                    raise UserError(f"{path}:{number}: no column {column!r} (columns: {', '.join(map(str, row))})")
            if cfg.label_column is not None:
                row[cfg.label_column] = _label(row[cfg.label_column], path, number)
            rows.append(row)
    if not rows:
        raise UserError(f"grade input {path} has no rows")
    return rows


def _label(value: Any, path: Path, number: int) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise UserError(f"{path}:{number}: label {value!r} is not true/false")


def agreement_rows(rows: list[dict[str, Any]], verdicts: list[Any], cfg: GradeConfig) -> list[list[Any]]:
    """Return table rows [kind, pairs, graded correct, agreement, credited wrong, missed right], all last."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[str(row[cfg.kind_column]) if cfg.kind_column else "all"].append(i)
    if cfg.kind_column:
        groups["all"] = list(range(len(rows)))
    table = []
    for kind, indices in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        graded = sum(verdicts[i].correct for i in indices)
        if cfg.label_column is None:
            table.append([kind, len(indices), graded, "-", "-", "-"])
            continue
        labels = [rows[i][cfg.label_column] for i in indices]
        agree = sum(verdicts[i].correct == y for i, y in zip(indices, labels, strict=True))
        credited = sum(verdicts[i].correct and not y for i, y in zip(indices, labels, strict=True))
        missed = sum(not verdicts[i].correct and y for i, y in zip(indices, labels, strict=True))
        table.append([kind, len(indices), graded, f"{agree / len(indices):.1%}", credited, missed])
    return table


def run_grade(cfg: GradeConfig) -> dict[str, Any]:
    """Grade every row of `cfg.input`, print the per-kind agreement table, write verdicts; return the numbers."""
    from mrt_star.console import comparison_table, console
    from mrt_star.grading import Grader

    check_config(cfg)
    rows = read_rows(cfg)
    pairs = [(row[cfg.completion_column], row[cfg.reference_column]) for row in rows]
    with console.status(f"grading {len(pairs)} rows"), Grader(cfg.grading, timeout_s=cfg.timeout_s,
                                                               workers=cfg.grading_workers, percent=cfg.percent_policy) as g:
        verdicts = g.grade_many(pairs)
    table = agreement_rows(rows, verdicts, cfg)
    title = f"grading agreement ({cfg.grading}, percent {cfg.percent_policy}): {cfg.input}"
    comparison_table(title, ["kind", "pairs", "graded correct", "agreement", "credited wrong", "missed right"], table)
    if cfg.output:
        _write_verdicts(Path(cfg.output), rows, verdicts, cfg)
    total = table[-1]
    return {"pairs": len(rows), "graded_correct": total[2],
            "agreement": None if cfg.label_column is None else float(total[3].rstrip("%")) / 100,
            "credited_wrong": None if cfg.label_column is None else total[4],
            "per_kind": {r[0]: dict(zip(["pairs", "graded_correct", "agreement", "credited_wrong", "missed_right"],
                                        r[1:], strict=True)) for r in table},
            "reasons": _count(v.reason for v in verdicts)}


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return dict(counts)


def _write_verdicts(path: Path, rows: list[dict[str, Any]], verdicts: list[Any], cfg: GradeConfig) -> None:
    """Write one verdict per row (atomically: a killed run leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i, (row, v) in enumerate(zip(rows, verdicts, strict=True)):
            out: dict[str, Any] = {"row": i, "correct": v.correct, "extracted": v.extracted, "reason": v.reason,
                                   "rule": v.rule}
            if cfg.label_column is not None:
                out["label"] = row[cfg.label_column]
            if cfg.kind_column is not None:
                out["kind"] = row[cfg.kind_column]
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
