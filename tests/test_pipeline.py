"""End to end on the real micro toy model: generate → score → filter (mrt, star) → datasets → one TRL batch.

Also: a killed score run (its last shard lost) re-run with the same command gives the same rows.
The micro model is tiny and often wrong, so the problems are the easiest toy family and the MRT rule's
forced-termination threshold is relaxed; the point here is that the stages fit together on a real
model, engine and grader, not the model's accuracy.
"""

from __future__ import annotations

import json
import shutil

import pytest

K = 4


@pytest.fixture(scope="module")
def world(micro_model, tmp_path_factory):
    from mrt_star.config import build_config
    from mrt_star.generate import GenerateConfig, run_generate
    from mrt_star.score import ScoreConfig, run_score
    from mrt_star.toy.problems import generate_problems

    root = tmp_path_factory.mktemp("pipeline")
    problems = root / "problems.jsonl"
    rows = generate_problems(10, seed=3, families=["linear"], difficulty=1)
    problems.write_text("".join(json.dumps(p) + "\n" for p in rows))
    traces = run_generate(build_config(GenerateConfig, {
        "input": str(problems), "output": str(root / "traces"), "model": str(micro_model), "format": "backtrack",
        "n": 6, "max_new_tokens": 160, "seed": 0}))
    score_cfg = ScoreConfig(input=str(traces), output=str(root / "scored"), model=str(micro_model), prover_k=K,
                            prover_max_new_tokens=24, shard_size=30, compare_estimators=True, budgets=[64, 128])
    scored = run_score(score_cfg)
    return {"root": root, "traces": traces, "scored": scored, "score_cfg": score_cfg}


def test_scored_rows_hold_j_curves_from_both_estimators(world):
    from mrt_star.store import read_manifest, read_rows

    rows = read_rows(world["scored"])
    assert len(rows) == 60
    for r in rows:
        episodes = r["episodes"]
        assert "".join(e["text"] for e in episodes) == r["completion"]
        assert len(r["j_values"]) == len(episodes) + 1 == len(r["j_likelihood"]) == len(r["prover_answers"])
        assert r["j_tokens"][0] == 0 and r["j_tokens"][-1] == sum(e["num_tokens"] for e in episodes)
        assert all(len(answers) == K for answers in r["prover_answers"])
        assert all(0.0 <= j <= 1.0 for j in r["j_values"] + r["j_likelihood"])
        assert r["progress"] == pytest.approx([b - a for a, b in zip(r["j_values"], r["j_values"][1:], strict=False)])
        assert [x["budget"] for x in r["regret"]] == [64.0, 128.0]
    # A problem's traces share the empty prefix's forced answers (asked once).
    by_problem = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], set()).add(r["j_values"][0])
    assert all(len(starts) == 1 for starts in by_problem.values())
    manifest = read_manifest(world["scored"])
    summary = manifest["summary"]
    assert summary["traces"] == 60 and summary["prover_rollouts"] > 0
    assert "estimators: j_correlation" in summary and "mean_regret@128" in summary
    stats = manifest["timings"]["engine_stats"]
    assert 0 < stats["prompt_tokens_encoded"] < stats["prompt_tokens_requested"]  # one prefill per K samples


def test_filter_mrt_and_star_feed_trl(world, micro_model):
    from datasets import load_dataset

    from mrt_star.filter import FilterConfig, run_filter
    from mrt_star.store import read_rows

    root = world["root"]
    correct = sum(r["correct"] for r in read_rows(world["scored"]))
    assert correct > 0, "the micro model produced no correct trace; the filter has nothing to keep"
    # Relaxed forced-termination threshold: the micro prover rarely copies an answer (see module doc).
    mrt = run_filter(FilterConfig(input=str(world["scored"]), output=str(root / "sft-mrt"), rule="mrt",
                                  min_j_end=-1.0))
    star = run_filter(FilterConfig(input=str(world["scored"]), output=str(root / "sft-star"), rule="star",
                                   match_count_of=str(mrt)))
    mrt_ds = load_dataset("parquet", data_files=str(mrt / "shard-*.parquet"), split="train")
    star_ds = load_dataset("parquet", data_files=str(star / "shard-*.parquet"), split="train")
    assert mrt_ds.num_rows == star_ds.num_rows == len(set(mrt_ds["problem_id"])) > 0  # equal sizes
    assert set(mrt_ds["rule"]) == {"mrt"} and set(star_ds["rule"]) == {"star"}
    summary = json.loads((mrt / "manifest.json").read_text())["summary"]
    assert summary["per_rule"]["star"]["rows"] == correct and 0.0 <= summary["mrt_pick_equals_shortest"] <= 1.0

    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    args = SFTConfig(output_dir=str(root / "trl"), use_cpu=True, bf16=False, max_steps=1, report_to="none",
                     per_device_train_batch_size=2, max_length=512, save_strategy="no", dataloader_num_workers=0)
    trainer = SFTTrainer(model=str(micro_model), args=args, train_dataset=mrt_ds, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0].tolist()
    assert labels[0] == -100  # the prompt is not trained on (prompt/completion format)
    trained = [t for t in labels if t != -100]
    text = tokenizer.decode(trained)
    assert trained and any(text.startswith(r["completion"][0]["content"][:20]) for r in mrt_ds)


def test_score_resumes_a_killed_run_to_the_same_rows(world):
    from mrt_star.score import run_score
    from mrt_star.store import read_rows, shard_files

    root, cfg = world["root"], world["score_cfg"]
    killed = root / "scored-killed"
    shutil.copytree(world["scored"], killed)
    shards = shard_files(killed)
    assert len(shards) == 2
    shards[-1].unlink()  # the run died while scoring the last shard
    manifest = json.loads((killed / "manifest.json").read_text())
    manifest["status"] = "running"
    (killed / "manifest.json").write_text(json.dumps(manifest))

    from dataclasses import replace

    resumed = run_score(replace(cfg, output=str(killed)))
    again, first = read_rows(resumed), read_rows(world["scored"])
    keys = ("problem_id", "sample_index", "j_values", "j_likelihood", "progress")
    assert [[r[k] for k in keys] for r in again] == [[r[k] for k in keys] for r in first]
    assert json.loads((killed / "manifest.json").read_text())["resumed"] == 1
