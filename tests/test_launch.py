"""Fine-tuning under `accelerate launch` on real CPU processes (gloo), and `mrt-star run` launching it.

Two processes with half the per-device batch see the same global batches as one process, so their
loss curves must agree; the probe loss (measured inside train(), never by evaluate()) must be there.
The 1-vs-2-process comparison (~12 s) is the default suite's check of the launch path; `run` launching
the fine-tune is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_finetune import make_sft_set

CPU_LAUNCHER = str(Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "cpu.yaml")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _finetune_args(sft, out, model, batch: int) -> list[str]:
    return ["-m", "mrt_star.cli", "finetune", "--input", str(sft), "--output", str(out), "--model", str(model),
            "--per-device-train-batch-size", str(batch), "--max-length", "300", "--learning-rate", "1e-3",
            "--warmup-ratio", "0", "--probe-examples", "8", "--num-train-epochs", "2"]


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path, micro_model):
    from mrt_star.finetune_launch import launch_command

    sft = make_sft_set(tmp_path / "sft", n=24)
    one = subprocess.run([sys.executable, *_finetune_args(sft, tmp_path / "one", micro_model, 8)],
                         capture_output=True, text=True, env=_env())
    assert one.returncode == 0, one.stderr[-3000:]
    argv = launch_command(CPU_LAUNCHER, 2, "X")[:-5] + _finetune_args(sft, tmp_path / "two", micro_model, 4)
    two = subprocess.run(argv, capture_output=True, text=True, env=_env())
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "training_summary.json").read_text())
    b = json.loads((tmp_path / "two" / "training_summary.json").read_text())
    assert (a["devices"], b["devices"]) == (1, 2)
    assert a["global_batch_size"] == b["global_batch_size"] == 8 and a["steps"] == b["steps"] == 6
    # Same examples per optimizer step, gradients averaged over the two processes: the curves agree.
    for (step_a, loss_a), (step_b, loss_b) in zip(a["losses"], b["losses"], strict=True):
        assert step_a == step_b and loss_b == pytest.approx(loss_a, rel=0.03, abs=0.01)
    # The probe ran under the launch (before and after training) and training lowered it.
    assert b["probe_loss_before"] == pytest.approx(a["probe_loss_before"], rel=1e-4)
    assert b["probe_loss_after"] < b["probe_loss_before"]
    assert b["probe_loss_after"] == pytest.approx(a["probe_loss_after"], rel=0.03)


RUN_RECIPE = """
model: toy-micro
rounds: 1
rules: [star]
finetune_launcher: {launcher}
finetune_processes: 2
generate: {{format: backtrack, n: 4, max_new_tokens: 120}}
score: {{prover_k: 2, prover_max_new_tokens: 16, budgets: [64]}}
filter: {{max_per_problem: 1, min_j_end: -1}}
finetune: {{learning_rate: 1.0e-3, num_train_epochs: 1, per_device_train_batch_size: 2, probe_examples: 4}}
"""


@pytest.mark.slow
def test_run_launches_the_round_fine_tune_under_accelerate(tmp_path, micro_model):
    from mrt_star.toy.problems import generate_problems

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in generate_problems(6, seed=3, families=["linear"],
                                                                              difficulty=1)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RUN_RECIPE.format(launcher=CPU_LAUNCHER))
    done = subprocess.run([sys.executable, "-m", "mrt_star.cli", "run", "--config", str(recipe), "--input",
                           str(problems), "--output", str(tmp_path / "run")], capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "star" / "round-1" / "model" / "training_summary.json").read_text())
    assert summary["devices"] == 2 and summary["global_batch_size"] == 4
    assert summary["probe_loss_before"] is not None and summary["probe_loss_after"] is not None
    assert not list(Path(__import__("tempfile").gettempdir()).glob("mrt-star-finetune-*.yaml"))


def test_launch_command_and_launcher_checks(tmp_path):
    from mrt_star.errors import UserError
    from mrt_star.finetune_launch import check_launcher, launch_command

    argv = launch_command(CPU_LAUNCHER, 2, tmp_path / "r.yaml")
    assert argv[1:] == ["-m", "accelerate.commands.launch", "--config_file", CPU_LAUNCHER, "--num_processes", "2",
                        "-m", "mrt_star.cli", "finetune", "--config", str(tmp_path / "r.yaml")]
    with pytest.raises(UserError, match="no such accelerate config"):
        check_launcher(str(tmp_path / "missing.yaml"), 2)
    check_launcher(CPU_LAUNCHER, 2)


def test_a_run_recipe_with_a_missing_launcher_fails_before_sampling(tmp_path):
    from mrt_star.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RUN_RECIPE.format(launcher=tmp_path / "nope.yaml"))
    assert main(["run", "--config", str(recipe), "--output", str(tmp_path / "run")]) == 1
    assert not (tmp_path / "run" / "round-1").exists()


def test_the_launched_recipe_rebuilds_the_same_finetune_config(tmp_path):
    """The loop hands the subprocess its stage config as YAML; reading it back must give the same config."""
    import yaml

    from mrt_star.config import build_config, config_to_dict
    from mrt_star.finetune import FinetuneConfig

    cfg = build_config(FinetuneConfig, {"input": "a", "output": "b", "model": "toy-micro", "lora": True,
                                        "lora_target_modules": ["q_proj"], "extra": {"max_grad_norm": 1.0},
                                        "attn_implementation": None, "report_to": "none", "packing": True})
    text = yaml.safe_dump(config_to_dict(cfg))
    assert config_to_dict(build_config(FinetuneConfig, yaml.safe_load(text))) == config_to_dict(cfg)


def test_gpu_check_without_cuda_says_so_in_one_line():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**_env(), "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False); "
                                                "run it on a machine with an NVIDIA GPU"]

