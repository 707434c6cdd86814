"""`mrt-star score` with every estimator on real traces of the micro toy model (the real engine and grader)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def traces(tmp_path_factory, micro_model):
    out = tmp_path_factory.mktemp("est") / "traces"
    done = subprocess.run([sys.executable, "-m", "mrt_star.cli", "generate", "--model", str(micro_model), "--limit", "3",
                           "--n", "2", "--max-new-tokens", "120", "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("estimator", ["sample", "likelihood", "adaptive"])
def test_every_estimator_scores_real_traces(tmp_path, traces, estimator, one_torch_thread):
    from mrt_star.score import ScoreConfig, run_score
    from mrt_star.store import read_manifest, read_rows

    k = 4
    out = run_score(ScoreConfig(input=str(traces), output=str(tmp_path / estimator), prover_k=k, estimator=estimator,
                                prover_max_new_tokens=12, budgets=[64]))
    rows = read_rows(out)
    assert len(rows) == 6 and {r["estimator"] for r in rows} == {estimator}
    for r in rows:
        assert len(r["j_values"]) == len(r["episodes"]) + 1
        assert all(0.0 <= j <= 1.0 for j in r["j_values"])
        answers = [len(a) for a in r["prover_answers"]]
        if estimator == "likelihood":
            assert set(answers) == {0}
        elif estimator == "sample":
            assert all(n in (0, k) for n in answers)  # 0: a prefix shared with (charged to) an earlier trace
        else:
            assert all(n == 0 or 2 <= n <= k for n in answers) and any(n for n in answers)
    assert read_manifest(out)["status"] == "complete"
