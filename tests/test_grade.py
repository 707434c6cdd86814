"""`run_grade`: a labelled JSONL → per-kind agreement table and per-row verdicts; bad input → one-line UserError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrt_star.errors import UserError
from mrt_star.grade import GradeConfig, run_grade

REAL = Path(__file__).parent / "data" / "grading_real_outputs.jsonl"


def _write(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_run_grade_reports_agreement_per_kind_and_writes_verdicts(tmp_path, capsys):
    out = tmp_path / "verdicts.jsonl"
    summary = run_grade(GradeConfig(input=str(REAL), kind_column="kind", output=str(out)))
    rows = [json.loads(line) for line in REAL.open()]
    assert summary["pairs"] == len(rows)
    assert summary["agreement"] >= 0.97
    assert summary["credited_wrong"] <= len(rows) // 100
    assert set(summary["per_kind"]) == {r["kind"] for r in rows} | {"all"}
    verdicts = [json.loads(line) for line in out.open()]
    assert len(verdicts) == len(rows) and {"correct", "extracted", "reason", "rule", "label", "kind"} <= set(verdicts[0])
    assert "credited wrong" in capsys.readouterr().err


def test_run_grade_without_labels_and_with_other_columns(tmp_path):
    path = _write(tmp_path / "in.jsonl", [{"out": "So \\boxed{0.25}.", "gold": "25\\%"},
                                          {"out": "The answer is 3.", "gold": "3"}])
    strict = run_grade(GradeConfig(input=path, completion_column="out", reference_column="gold", label_column=None))
    assert strict["agreement"] is None and strict["graded_correct"] == 1
    lenient = run_grade(GradeConfig(input=path, completion_column="out", reference_column="gold", label_column=None,
                                    percent_policy="lenient", limit=1))
    assert lenient["pairs"] == 1 and lenient["graded_correct"] == 1


@pytest.mark.parametrize(("rows", "overrides", "message"), [
    (None, {}, "is not a file"),
    (["{\"completion\": \"x\", \"reference\": \"1\", \"label\": true}", "{not json"], {}, ":2: not a JSON line"),
    ([{"completion": "x", "label": True}], {}, "no column 'reference'"),
    ([{"completion": "x", "reference": "1"}], {}, "no column 'label'"),
    ([{"completion": "x", "reference": "1", "label": True}], {"kind_column": "kind"}, "no column 'kind'"),
    ([{"completion": "x", "reference": "1", "label": "maybe"}], {}, "is not true/false"),
    (["[1, 2]"], {}, "expected a JSON object"),
    ([], {}, "has no rows"),
])
def test_bad_input_raises_one_line_user_error(tmp_path, rows, overrides, message):
    path = str(tmp_path / "missing.jsonl") if rows is None else _write(tmp_path / "in.jsonl", rows)
    with pytest.raises(UserError, match=message) as err:
        run_grade(GradeConfig(input=path, **overrides))
    assert "\n" not in str(err.value)


def test_bad_options_are_user_errors(tmp_path):
    path = _write(tmp_path / "in.jsonl", [{"completion": "x", "reference": "1", "label": True}])
    with pytest.raises(UserError, match="percent_policy"):
        run_grade(GradeConfig(input=path, percent_policy="loose"))


def test_grade_verb_prints_the_per_kind_table(tmp_path):
    import subprocess
    import sys

    rows = [{"completion": "The answer is $\\frac{1}{3}$.", "reference": "0.\\overline{3}", "label": True, "kind": "rd"},
            {"completion": "So there are 120 possible ways.", "reference": "120", "label": True, "kind": "sentence"},
            {"completion": "\\boxed{7}", "reference": "8", "label": False, "kind": "sentence"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run([sys.executable, "-m", "mrt_star.cli", "grade", "--input", str(path), "--kind-column", "kind",
                           "--percent-policy", "lenient"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sentence" in done.stderr and "rd" in done.stderr and "100" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "mrt_star.cli", "grade", "--input", str(tmp_path / "none.jsonl")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "is not a file" in bad.stderr
