"""SIGKILL at seeded progress points of every stage and of `mrt-star run`; each resume must equal an
uninterrupted run: 0 rows lost, duplicated or differing, and no shard finished before the kill rewritten.

Real CLI, real micro toy model, real parquet, real TRL checkpoints; kills are triggered by what appears in
the output folder (polling), and `_runner.py` paces writes so a kill lands between two of them.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
from fault_harness import check_resume, cli, complete, kill_on, manifest, record, shards, stamps

pytestmark = pytest.mark.slow
RNG = random.Random(18)  # the kill points below are drawn once from this seed
GENERATE_POINTS = sorted(RNG.sample(range(6), 5))  # shards finished before the kill (0: only the manifest)
SCORE_POINTS = sorted(RNG.sample(range(6), 5))
FINETUNE_POINTS = sorted(RNG.sample(range(1, 6), 3))  # checkpoints saved before the kill
FILTER_POINTS = ["opened", "shard written"]
RUN_POINTS = ["generate mid-stage", "after generate", "score mid-stage", "after filter", "finetune mid-stage"]


def _easy_problems(path, n):
    """Write `n` problems the micro model can partly solve (linear equations, difficulty 1)."""
    from mrt_star.toy.problems import generate_problems

    rows = generate_problems(n, seed=3, families=["linear"], difficulty=1)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _generate(problems, out):
    return ["generate", "--input", str(problems), "--model", "toy-micro", "--shard-size", "1", "--n", "2",
            "--max-new-tokens", "96", "--output", str(out)]


def _score(inp, out):
    return ["score", "--input", str(inp), "--model", "toy-micro", "--shard-size", "2", "--prover-k", "2",
            "--prover-max-new-tokens", "16", "--output", str(out)]


def _filter(inp, out):
    return ["filter", "--input", str(inp), "--rule", "mrt", "--min-j-end", "-1", "--require-correct", "false",
            "--output", str(out)]


def _finetune(inp, out):
    return ["finetune", "--input", str(inp), "--model", "toy-micro", "--output", str(out), "--save-strategy",
            "steps", "--save-steps", "1", "--max-steps", "6", "--per-device-train-batch-size", "2",
            "--probe-examples", "0", "--learning-rate", "1e-3", "--logging-steps", "1"]


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, micro_model):
    """Uninterrupted runs of generate → score → filter → finetune (the outputs every resume must equal)."""
    base = tmp_path_factory.mktemp("reference")
    _easy_problems(base / "problems.jsonl", 6)
    _ok(cli(_generate(base / "problems.jsonl", base / "traces")))
    _ok(cli(_score(base / "traces", base / "scored")))
    _ok(cli(_filter(base / "scored", base / "sft")))
    _ok(cli(_finetune(base / "sft", base / "model")))
    assert len(shards(base / "traces")) == 6 and len(shards(base / "scored")) == 6 and shards(base / "sft")
    return base


@pytest.mark.parametrize("k", GENERATE_POINTS)
def test_generate_killed_after_k_shards_resumes_exactly(reference, tmp_path, k):
    out, problems = tmp_path / "traces", reference / "problems.jsonl"
    kill_on(_generate(problems, out), lambda: manifest(out).get("status") == "running" and len(shards(out)) >= k)
    before = stamps(out)
    _ok(cli(_generate(problems, out)))
    record(f"generate after {k} shards", check_resume(reference / "traces", out, before))
    assert manifest(out)["resumed"] == 1


@pytest.mark.parametrize("k", SCORE_POINTS)
def test_score_killed_after_k_shards_resumes_exactly(reference, tmp_path, k):
    out = tmp_path / "scored"
    kill_on(_score(reference / "traces", out), lambda: manifest(out).get("status") == "running"
            and len(shards(out)) >= k)
    before = stamps(out)
    _ok(cli(_score(reference / "traces", out)))
    record(f"score after {k} shards", check_resume(reference / "scored", out, before))


@pytest.mark.parametrize("point", FILTER_POINTS)
def test_filter_killed_resumes_exactly(reference, tmp_path, point):
    out = tmp_path / "sft"
    want = 0 if point == "opened" else 1
    kill_on(_filter(reference / "scored", out), lambda: manifest(out).get("status") == "running"
            and len(shards(out)) >= want, pace=2.0)
    before = stamps(out)
    _ok(cli(_filter(reference / "scored", out)))
    record(f"filter {point}", check_resume(reference / "sft", out, before))


@pytest.mark.parametrize("k", FINETUNE_POINTS)
def test_finetune_killed_after_checkpoint_k_resumes_from_it(reference, tmp_path, k):
    out, marks = tmp_path / "model", tmp_path / "marks"
    from fault_harness import start, wait_for

    proc = start(_finetune(reference / "sft", out), MRT_FAULT_PACE="0.5", MRT_FAULT_MARKS=str(marks))
    try:
        wait_for(proc, lambda: (marks / f"checkpoint-{k}").exists())
    finally:
        proc.kill()
        proc.wait()
    saved = max(int(p.name.split("-")[1]) for p in marks.iterdir())
    _ok(cli(_finetune(reference / "sft", out)))
    got = json.loads((out / "training_summary.json").read_text())
    want = json.loads((reference / "model" / "training_summary.json").read_text())
    assert got["resumed_from"] == str(out / f"checkpoint-{saved}")
    assert got["steps"] == want["steps"] == 6
    assert [s for s, _ in got["losses"]] == [s for s, _ in want["losses"]]
    differing = sum(abs(a - b) > 1e-4 * max(1.0, abs(b)) for (_, a), (_, b) in zip(got["losses"], want["losses"],
                                                                                  strict=True))
    assert differing == 0, (got["losses"], want["losses"])
    assert not list(out.glob("checkpoint-*"))
    record(f"finetune after checkpoint {k}", {"rows": len(want["losses"]), "lost": 0, "duplicated": 0,
                                               "differing": differing, "rewritten": 0, "resumed_from": saved})


RECIPE = """
model: toy-micro
rounds: 1
generate: {n: 2, max_new_tokens: 96, shard_size: 1}
score: {prover_k: 2, prover_max_new_tokens: 16, shard_size: 2}
filter: {min_j_end: -1, require_correct: false}
finetune: {max_steps: 4, per_device_train_batch_size: 2, probe_examples: 0, logging_steps: 1}
"""


def _run(problems, out):
    return ["run", "--config", str(problems.parent / "recipe.yaml"), "--input", str(problems), "--rules", "mrt",
            "--output", str(out)]


@pytest.fixture(scope="module")
def run_reference(tmp_path_factory, micro_model):
    base = tmp_path_factory.mktemp("run")
    (base / "recipe.yaml").write_text(RECIPE)
    problems = _easy_problems(base / "problems.jsonl", 4)
    _ok(cli(_run(problems, base / "ref")))
    return problems, base / "ref"


@pytest.mark.parametrize("point", RUN_POINTS)
def test_run_killed_between_and_inside_stages_resumes_exactly(run_reference, tmp_path, point):
    problems, ref = run_reference
    local = tmp_path / "problems.jsonl"
    shutil.copy(problems, local)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    out = tmp_path / "run"
    traces, scored, sft, model = (out / "round-1" / "traces", out / "round-1" / "scored",
                                  out / "mrt" / "round-1" / "sft", out / "mrt" / "round-1" / "model")
    ready = {"generate mid-stage": lambda: len(shards(traces)) >= 2 and not complete(traces),
             "after generate": lambda: complete(traces),
             "score mid-stage": lambda: len(shards(scored)) >= 1 and not complete(scored),
             "after filter": lambda: complete(sft),
             "finetune mid-stage": lambda: (model / "finetune_config.json").exists()}[point]
    kill_on(_run(local, out), ready)
    before = {folder: stamps(folder) for folder in (traces, scored, sft)}
    _ok(cli(_run(local, out)))
    totals = {"rows": 0, "lost": 0, "duplicated": 0, "differing": 0, "rewritten": 0, "kept_shards": 0}
    for folder in (traces, scored, sft):
        counts = check_resume(ref / folder.relative_to(out), folder, before[folder])
        totals = {k: totals[k] + counts[k] for k in totals}
    got = json.loads((model / "training_summary.json").read_text())
    want = json.loads((ref / "mrt" / "round-1" / "model" / "training_summary.json").read_text())
    assert got["steps"] == want["steps"] and abs(got["final_loss"] - want["final_loss"]) < 1e-4
    record(f"run {point}", totals)
