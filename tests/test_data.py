"""Problem loading from every local format, column mapping, and the error cases (real files)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mrt_star.data import ProblemError, load_problems

ROWS = [
    {"question": "What is 1+1?", "answer": "2"},
    {"question": "Half of 1?", "answer": "\\frac{1}{2}"},
    {"question": "Solve x+1=4", "answer": "3"},
]


def _write(path, rows):
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_each_local_format_loads_with_stable_ids(tmp_path, suffix):
    path = _write(tmp_path / f"p{suffix}", ROWS)
    problems = load_problems(str(path))
    assert [p["problem"] for p in problems] == [r["question"] for r in ROWS]
    assert [p["answer"] for p in problems] == ["2", "\\frac{1}{2}", "3"]
    assert problems[0]["problem_id"] == load_problems(str(path))[0]["problem_id"]
    assert len({p["problem_id"] for p in problems}) == 3


def test_solution_column_answer_is_last_box_and_options(tmp_path):
    rows = [{"problem": f"p{i}", "solution": f"so \\boxed{{{i}}} then \\boxed{{\\frac{{{i}}}{{2}}}}", "id": f"x{i}"}
            for i in range(6)]
    path = _write(tmp_path / "s.jsonl", rows)
    problems = load_problems(str(path))
    assert problems[1]["answer"] == "\\frac{1}{2}" and problems[1]["problem_id"] == "x1"
    assert len(load_problems(str(path), limit=2)) == 2
    shuffled = load_problems(str(path), shuffle=True, seed=3)
    assert sorted(p["problem_id"] for p in shuffled) == sorted(p["problem_id"] for p in problems)
    assert [p["problem_id"] for p in shuffled] != [p["problem_id"] for p in problems]


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([{"text": "a", "answer": "1"}], {}, "no problem column"),
        ([{"problem": "a", "result": "1"}], {}, "no answer column"),
        ([{"problem": "a", "answer": "1"}, {"problem": " ", "answer": "2"}], {}, "row 1: empty 'problem'"),
        ([{"problem": "a", "answer": ""}], {}, "row 0: no answer in column 'answer'"),
        ([{"problem": "a", "solution": "no box"}], {}, r"no \\boxed\{\} in the solution"),
        ([{"problem": "a", "answer": "1"}], {"answer_column": "gold"}, "no column 'gold'"),
    ],
)
def test_bad_input_names_row_or_column(tmp_path, rows, kwargs, message):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ProblemError, match=message):
        load_problems(str(path), **kwargs)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ProblemError, match="no such file"):
        load_problems(str(tmp_path / "nope.jsonl"))
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(ProblemError, match="unsupported file type"):
        load_problems(str(tmp_path / "p.txt"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(ProblemError, match="cannot be read as jsonl"):
        load_problems(str(tmp_path / "broken.jsonl"))


# --- answers kept exactly (issue 18) ------------------------------------------------------------------


def test_answers_and_ids_are_kept_exactly_as_written(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = ['{"problem": "a", "answer": 2, "id": 12345678901234567}', '{"problem": "b", "answer": 2.5, "id": 7}',
             '{"problem": "c", "answer": 1.50, "id": "x", "weight": 0.25}']
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    rows = load_problems(str(tmp_path / "p.jsonl"))
    assert [r["answer"] for r in rows] == ["2", "2.5", "1.50"]
    assert [r["problem_id"] for r in rows] == ["12345678901234567", "7", "x"]
    assert type(rows[2]["weight"]) is float and rows[2]["weight"] == 0.25  # other columns stay plain numbers
    (tmp_path / "p.json").write_text(json.dumps([{"problem": "a", "answer": 12345678901234567},
                                                 {"problem": "b", "answer": 0.5}]))
    assert [r["answer"] for r in load_problems(str(tmp_path / "p.json"))] == ["12345678901234567", "0.5"]
    pq.write_table(pa.table({"problem": ["a", "b"], "answer": [2, 12345678901234567]}), tmp_path / "p.parquet")
    assert [r["answer"] for r in load_problems(str(tmp_path / "p.parquet"))] == ["2", "12345678901234567"]
    (tmp_path / "p.csv").write_text("problem,answer\na,007\nb,2.0\n")
    assert [r["answer"] for r in load_problems(str(tmp_path / "p.csv"))] == ["007", "2.0"]


def test_null_answers_are_refused_with_the_row_or_skipped_and_counted(tmp_path, capsys):
    from mrt_star.data import ProblemSource

    (tmp_path / "p.jsonl").write_text('{"problem": "a", "answer": 1}\n{"problem": "b", "answer": null}\n'
                                      '{"problem": "c", "answer": ""}\n')
    with pytest.raises(ProblemError, match=r"row 1: no answer in column 'answer' \(null or empty\)"):
        load_problems(str(tmp_path / "p.jsonl"))
    rows = load_problems(ProblemSource(source=str(tmp_path / "p.jsonl"), skip_rows_without_answer=True))
    assert [r["problem"] for r in rows] == ["a"]
    assert "skipped 2 row(s) without an answer" in " ".join(capsys.readouterr().err.split())


def test_a_datasets_save_to_disk_folder_is_an_input(tmp_path):
    import datasets

    rows = [{"question": "1+1", "answer": 2}, {"question": "2+2", "answer": 4}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    assert [r["answer"] for r in load_problems(str(tmp_path / "one"))] == ["2", "4"]
    split = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                                  "test": datasets.Dataset.from_list(rows[:1])})
    split.save_to_disk(str(tmp_path / "dict"))
    assert len(load_problems(str(tmp_path / "dict"))) == 2
    assert len(load_problems(str(tmp_path / "dict"), split="test")) == 1
    with pytest.raises(ProblemError, match="no split 'dev'; splits are train, test"):
        load_problems(str(tmp_path / "dict"), split="dev")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ProblemError, match="not a `datasets` save_to_disk folder"):
        load_problems(str(tmp_path / "plain"))
