"""`mrt-star run` on the real micro toy model: two rules from shared samples, and resume after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="module")
def easy_problems(tmp_path_factory):
    """Return a problem file the micro model gets partly right (linear equations, difficulty 1)."""
    from mrt_star.toy.problems import generate_problems

    path = tmp_path_factory.mktemp("problems") / "easy.jsonl"
    rows = generate_problems(10, seed=3, families=["linear"], difficulty=1)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RECIPE = """
model: toy-micro
rounds: 1
generate: {format: backtrack, n: 6, max_new_tokens: 160}
score: {prover_k: 4, prover_max_new_tokens: 24, budgets: [64, 128]}
filter: {max_per_problem: 1, min_j_end: -1}
finetune: {learning_rate: 1.0e-3, num_train_epochs: 1, per_device_train_batch_size: 8, probe_examples: 4}
"""


def _command(problems, out):
    recipe = out.parent / "recipe.yaml"
    recipe.write_text(RECIPE)
    return [sys.executable, "-m", "mrt_star.cli", "run", "--config", str(recipe),
            "--input", str(problems), "--rules", "star,mrt", "--output", str(out)]


def test_run_resumes_after_a_kill_between_stages(micro_model, easy_problems, tmp_path):
    out = tmp_path / "run"
    env = {"OMP_NUM_THREADS": "1", "PATH": "", "HOME": str(__import__("pathlib").Path.home())}
    proc = subprocess.Popen(_command(easy_problems, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    traces_manifest = out / "round-1" / "traces" / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if traces_manifest.exists() and json.loads(traces_manifest.read_text())["status"] == "complete":
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    created = json.loads(traces_manifest.read_text())["created"]
    done = subprocess.run(_command(easy_problems, out), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(traces_manifest.read_text())["created"] == created, "finished traces must not be regenerated"
    summary = json.loads((out / "run_summary.json").read_text())
    assert [(r["rule"], r["round"]) for r in summary] == [("star", 1), ("mrt", 1)]
    star = summary[0]
    assert star["filter"]["kept_rows"] > 0 and (out / "star" / "round-1" / "model" / "training_summary.json").exists()
    # Both rules filtered the same shared round-1 samples.
    assert star["generate"] == summary[1]["generate"]
    # ... and the second rule was cut to the first rule's SFT size.
    assert 0 < summary[1]["filter"]["kept_rows"] <= star["filter"]["kept_rows"]
    mrt_sft = json.loads((out / "mrt" / "round-1" / "sft" / "manifest.json").read_text())
    assert mrt_sft["config"]["match_count_of"] == str(out / "star" / "round-1" / "sft")
    again = subprocess.run(_command(easy_problems, out) + ["--rounds", "2"], capture_output=True, text=True, env=env)
    assert again.returncode != 0 and "different config" in again.stderr
