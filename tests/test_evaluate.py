"""`mrt-star eval` on the micro toy model: metrics.json, plots, two models, linearized and history modes."""

from __future__ import annotations

import json
import random

import pytest

from mrt_star.config import build_config
from mrt_star.errors import UserError

MODEL_KEYS = {"accuracy", "first_attempt_accuracy", "mean_tokens", "pass@k", "maj@k", "maj_vs_tokens",
              "accuracy_vs_tokens", "accuracy_at_budget", "j_by_episode", "regret", "maj_regret", "n", "problems"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**values):
    from mrt_star.eval.stage import EvalConfig

    base = dict(limit=3, n=2, k_values=[1, 2], max_new_tokens=96, temperature=1.0)
    return build_config(EvalConfig, {**base, **values})


@pytest.fixture(scope="module")
def noisy_copy(micro_model, tmp_path_factory):
    """Return a second model: the micro model with noise on its weights (a worse model to compare)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("noisy") / "model"
    model = AutoModelForCausalLM.from_pretrained(micro_model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(micro_model).save_pretrained(folder)
    return folder


def test_eval_two_models_writes_metrics_plots_and_resumes(tmp_path, micro_model, noisy_copy):
    from mrt_star.eval.stage import run_eval

    out = run_eval(_config(models=[str(micro_model), str(noisy_copy)], labels=["micro", "noisy"],
                           output=str(tmp_path / "eval")))
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["micro", "noisy"]
    for m in metrics["models"].values():
        assert MODEL_KEYS <= set(m)
        assert m["problems"] == 3 and m["n"] == 2
        assert set(m["pass@k"]) == {"1", "2"} and set(m["maj@k"]) == {"1", "2"}
        assert m["pass@k"]["1"] == pytest.approx(m["accuracy"]) == pytest.approx(m["maj@k"]["1"])
        assert m["pass@k"]["2"] >= m["pass@k"]["1"]
        assert set(m["regret"]) == {"24", "48", "96"}
        assert all(0.0 <= v <= 1.0 for v in m["regret"].values())
        assert 0 < m["mean_tokens"] <= 96
    for png in ("accuracy_vs_tokens.png", "j_curves.png", "regret.png", "pass_maj_at_k.png"):
        assert (out / png).stat().st_size > 1000
    # The per-sample rows load as one parquet dataset, 3 problems × 2 samples × 2 models.
    from datasets import load_dataset

    rows = load_dataset("parquet", data_files=str(out / "shard-*.parquet"), split="train")
    assert len(rows) == 12 and set(rows["model"]) == {"micro", "noisy"}
    first = rows[0]
    assert "".join(e["text"] for e in first["episodes"]) == first["completion"]
    assert len(first["j_tokens"]) == len(first["j_values"]) == len(first["episodes"])
    # Re-running the same command reuses the finished shards (nothing is sampled again).
    shards = {p: p.stat().st_mtime for p in out.glob("shard-*.parquet")}
    run_eval(_config(models=[str(micro_model), str(noisy_copy)], labels=["micro", "noisy"], output=str(out)))
    assert {p: p.stat().st_mtime for p in out.glob("shard-*.parquet")} == shards


def test_linearized_mode_with_budget_forcing(tmp_path, micro_model):
    from mrt_star.eval.stage import run_eval

    out = run_eval(_config(models=[str(micro_model)], labels=["model"], mode="linearized", format="linearized", limit=2, n=1,
                           k_values=[1], window=1, max_attempts=2, max_new_tokens=64, budgets=[16, 48],
                           budget_forcing=True, prover_k=2, prover_max_new_tokens=8, output=str(tmp_path / "lin")))
    m = json.loads((out / "metrics.json").read_text())["models"]["model"]
    assert m["mode"] == "linearized" and 1 <= m["mean_episodes"] <= 2
    assert 1 <= len(m["j_by_episode"]) <= 2
    assert set(m["forced_regret"]) == {"16", "48"}


def _traces_folder(folder, n: int = 2):
    """Write a generate-stage output of two toy backtracking traces (prompt, completion, episodes)."""
    from mrt_star.store import Store
    from mrt_star.toy.problems import generate_problems
    from mrt_star.toy.traces import make_trace, trace_messages

    rng, rows = random.Random(3), []
    for p in generate_problems(n, seed=7):
        trace = make_trace(p["problem"], "backtrack", rng)
        prompt, text = trace_messages(trace)
        rows.append({**p, "format": "backtrack", "sample_index": 0, "prompt": prompt, "completion": text,
                     "episodes": [{"text": e, "num_tokens": len(e)} for e in trace.episodes]})
    store = Store(folder, "generate", {"n": n}, "test")
    store.write_shard(0, rows)
    return store.finish()


def test_history_mode_restarts_after_the_first_episode(tmp_path, micro_model):
    from mrt_star.eval.stage import run_eval

    traces = _traces_folder(tmp_path / "traces")
    out = run_eval(_config(models=[str(micro_model)], mode="history", input=str(traces), n=2, k_values=[1],
                           output=str(tmp_path / "hist")))
    from mrt_star.store import read_rows

    rows = read_rows(out)
    assert len(rows) == 4
    given = {r["problem_id"]: r for r in read_rows(traces)}
    for row in rows:
        first = given[row["problem_id"]]["episodes"][0]["text"]
        # The default variant: the first rollout, then a restart line; the continuation is graded alone.
        assert row["completion"].startswith(first.rstrip("\n") + "\nBacktrack to beginning\n")
        assert row["history_variant"] == "restart" and row["episodes"][0]["text"].startswith(first)
        assert row["given_tokens"] == row["episodes"][0]["num_tokens"] > 0


def test_bad_eval_inputs_are_refused(tmp_path):
    from mrt_star.eval.stage import run_eval

    with pytest.raises(UserError, match="labels"):
        run_eval(_config(models=["a", "b"], labels=["x"], output=str(tmp_path / "e1")))
    with pytest.raises(UserError, match="is not a folder; pass the output folder of `mrt-star generate` or `mrt-star score`"):
        run_eval(_config(mode="history", input=str(tmp_path / "missing"), output=str(tmp_path / "e2")))
    with pytest.raises(UserError, match="history_variants"):
        run_eval(_config(mode="history", input=str(_traces_folder(tmp_path / "t")), history_variants=["redo"],
                         output=str(tmp_path / "e3")))
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists() and not (tmp_path / "e3").exists()


def test_model_flag_and_default_labels():
    from mrt_star.eval.stage import model_labels, model_names

    assert model_names(_config(model="toy-micro")) == ["toy-micro"]
    assert model_names(_config(model="toy,toy-micro")) == ["toy", "toy-micro"]
    assert model_labels(_config(), ["toy", "toy"]) == ["toy", "toy-2"]
