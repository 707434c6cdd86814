"""Fine-tuning the micro toy model on a small real SFT set: masks, overlong counting, loss, reload."""

from __future__ import annotations

import json
import random

import pytest

from mrt_star.config import build_config
from mrt_star.errors import UserError
from mrt_star.store import Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_sft_set(folder, n: int = 24, fmt: str = "backtrack", seed: int = 0):
    """Write a filter-stage output of toy traces in the SFT schema and return its folder."""
    from mrt_star.toy.problems import generate_problems
    from mrt_star.toy.traces import CLEAN, TraceStyle, make_trace, trace_messages

    rng, rows = random.Random(seed), []
    for i, p in enumerate(generate_problems(n, seed=seed)):
        # Half clean traces, half with slips and backtracks (so some rows have a prefix to skip).
        trace = make_trace(p["problem"], fmt, rng, CLEAN if i % 2 else TraceStyle())
        prompt, target = trace_messages(trace)
        prefix = trace.episodes[0] if len(trace.episodes) > 1 else ""
        rows.append({"problem_id": p["problem_id"], "prompt": prompt,
                     "completion": [{"role": "assistant", "content": target}],
                     "messages": [*prompt, {"role": "assistant", "content": target}],
                     "prefix": prefix, "suffix": target[len(prefix):], "rule": "star",
                     "cumulative_progress": None, "num_tokens": len(target)})
    store = Store(folder, "filter", {"rule": "star", "n": n, "seed": seed}, "test")
    store.write_shard(0, rows)
    return store.finish()


def _config(**values):
    from mrt_star.finetune import FinetuneConfig

    base = dict(learning_rate=5e-4, per_device_train_batch_size=8, max_length=400, probe_examples=16, warmup_ratio=0.0)
    return build_config(FinetuneConfig, {**base, **values})


def test_labels_mask_the_prompt_and_keep_the_end_of_turn(micro_model):
    from transformers import AutoTokenizer

    from mrt_star.finetune import encode_example

    tok = AutoTokenizer.from_pretrained(micro_model)
    prompt = [{"role": "user", "content": "[backtrack] Compute 1+2."}]
    ids, labels = encode_example(tok, prompt, "", "Line 1: 1+2=3\n\\boxed{3}")
    trained = [t for t in labels if t != -100]
    assert tok.decode(trained) == "Line 1: 1+2=3\n\\boxed{3}" + tok.eos_token
    assert tok.decode(ids[: len(ids) - len(trained)]).endswith("<|assistant|>")
    # Suffix-only: the prefix is context (prefilled assistant text), only the suffix is trained.
    ids2, labels2 = encode_example(tok, prompt, "Line 1: 1+2=4\n", "Backtrack to Line 1\nLine 1: 1+2=3\n")
    assert tok.decode([t for t in labels2 if t != -100]).startswith("Backtrack to Line 1")
    assert "Line 1: 1+2=4" in tok.decode(ids2)
    # Without completion-only loss every token is a label.
    _, labels3 = encode_example(tok, prompt, "", "x", completion_only_loss=False)
    assert -100 not in labels3


def test_overlong_examples_are_dropped_and_counted(tmp_path, micro_model):
    from transformers import AutoTokenizer

    from mrt_star.finetune import build_examples, encode_example, load_sft_rows, row_target

    sft = make_sft_set(tmp_path / "sft", n=18)
    rows = load_sft_rows(str(sft))
    tok = AutoTokenizer.from_pretrained(micro_model)
    lengths = [len(encode_example(tok, list(r["prompt"]), *row_target(r, False))[0]) for r in rows]
    cut = sorted(lengths)[len(lengths) // 2]
    examples, counts = build_examples(rows, tok, _config(max_length=cut))
    assert counts["examples_dropped_overlong"] == sum(n > cut for n in lengths) > 0
    assert counts["examples_used"] == len(examples) == sum(n <= cut for n in lengths)
    _, counts = build_examples(rows, tok, _config(max_length=cut, overlong="truncate"))
    assert counts["examples_truncated"] == sum(n > cut for n in lengths)
    # A prompt longer than max_length leaves no trainable label: counted and skipped, not trained on.
    examples, counts = build_examples(rows[:2], tok, _config(max_length=10, overlong="truncate"))
    assert examples == [] and counts["examples_without_labels"] == 2


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    from mrt_star.finetune import run_finetune

    other = Store(tmp_path / "traces", "generate", {}, "x")
    other.write_shard(0, [{"problem_id": "p", "completion": "x"}])
    other.finish()
    with pytest.raises(UserError, match="finetune reads the output of `mrt-star filter`"):
        run_finetune(_config(input=str(tmp_path / "traces"), output=str(tmp_path / "m1")))
    empty = Store(tmp_path / "empty", "filter", {}, "x")
    empty.finish()
    with pytest.raises(UserError, match="no SFT rows"):
        run_finetune(_config(input=str(tmp_path / "empty"), output=str(tmp_path / "m2")))
    with pytest.raises(UserError, match="is not a folder"):
        run_finetune(_config(input=str(tmp_path / "nowhere"), output=str(tmp_path / "m3")))
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


def test_finetune_lowers_the_loss_and_the_model_reloads(tmp_path, micro_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mrt_star.finetune import run_finetune

    sft = make_sft_set(tmp_path / "sft", n=24)
    out = run_finetune(_config(input=str(sft), output=str(tmp_path / "model"), model=str(micro_model),
                               num_train_epochs=3, learning_rate=1e-3, max_length=300))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["examples_used"] + summary["examples_dropped_overlong"] == 24
    assert summary["steps"] >= 4 and summary["device"] == "cpu" and summary["bf16"] is False
    assert summary["probe_loss_after"] < summary["probe_loss_before"]
    assert summary["final_loss"] < summary["initial_loss"]
    assert (out / "loss.png").stat().st_size > 1000
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "[backtrack] Compute 12+30-5."}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids.shape[1]
    # The same command again finds the finished model and does nothing; another config is refused.
    mtime = (out / "model.safetensors").stat().st_mtime
    run_finetune(_config(input=str(sft), output=str(out), model=str(micro_model), num_train_epochs=3,
                         learning_rate=1e-3, max_length=300))
    assert (out / "model.safetensors").stat().st_mtime == mtime
    with pytest.raises(UserError, match="different config"):
        run_finetune(_config(input=str(sft), output=str(out), model=str(micro_model), learning_rate=2e-3))


def test_lora_suffix_only_run_saves_a_merged_model(tmp_path, micro_model):
    from transformers import AutoModelForCausalLM

    from mrt_star.finetune import run_finetune

    sft = make_sft_set(tmp_path / "sft", n=8)
    out = run_finetune(_config(input=str(sft), output=str(tmp_path / "lora"), model=str(micro_model), lora=True,
                               lora_r=4, lora_alpha=8, suffix_only=True, max_steps=2, probe_examples=0))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["lora"] is True and summary["steps"] == 2 and summary["probe_loss_before"] is None
    assert (out / "adapter" / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)  # merged: loads without peft
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_warm_up_is_ten_percent_of_the_steps_on_this_transformers(tmp_path):
    """transformers 4 reads warmup_steps=0.1 as 0.1 steps; whichever major is installed, 10% must stay 10%."""
    from mrt_star.finetune import _sft_config

    args = _sft_config(_config(warmup_ratio=0.1, input="x", output=str(tmp_path / "m")), tmp_path / "m", {})
    assert args.get_warmup_steps(200) == 20
    assert args.report_to in ("none", [], ["none"])


def test_report_to_a_tracker_that_is_not_installed_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from mrt_star.finetune import _sft_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match="report_to: wandb needs the wandb package; pip install wandb"):
        _sft_config(_config(report_to="wandb"), tmp_path / "m", {})


def test_liger_packing_and_checkpointing_reach_the_trainer_arguments(tmp_path):
    from mrt_star.finetune import _sft_config

    args = _sft_config(_config(use_liger_kernel=True, packing=True, gradient_checkpointing=True), tmp_path / "m", {})
    assert args.use_liger_kernel and args.packing
    assert getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", None)


def test_dry_run_prints_memory_from_the_config_without_loading_weights(tmp_path, micro_model, capsys):
    from transformers import AutoConfig

    from mrt_star.finetune import run_finetune
    from mrt_star.finetune_memory import count_parameters, estimate

    params, trainable = count_parameters(str(micro_model))
    config = AutoConfig.from_pretrained(micro_model)
    assert params == trainable and params > config.vocab_size * config.hidden_size  # embeddings and more
    full = estimate(params, trainable, "float32", 1, sharded=False)
    assert full.total == params * 16  # fp32 weights 4 + gradients 4 + AdamW 8 bytes per parameter
    assert estimate(params, trainable, "float32", 8, sharded=True).total == params * 16 / 8
    _, adapters = count_parameters(str(micro_model), lora_r=4)
    assert 0 < adapters < params / 10
    run_finetune(_config(model=str(micro_model), dry_run=True, output=str(tmp_path / "never")))
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert "replicated" in text and "sharded over 8 processes (ZeRO-3 / FSDP full shard)" in text
    assert not (tmp_path / "never").exists()


def test_probe_loss_is_the_token_mean_loss(micro_model):
    import torch
    from transformers import AutoModelForCausalLM

    from mrt_star.finetune_probe import probe_loss

    model = AutoModelForCausalLM.from_pretrained(micro_model)
    examples = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}, {"input_ids": [9, 10], "labels": [9, 10]}]
    expected_sum = 0.0
    for e in examples:
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss
        expected_sum += float(loss) * sum(label != -100 for label in e["labels"][1:])
    assert probe_loss(model, examples, batch_size=2, pad_id=0) == pytest.approx(expected_sum / 3, rel=1e-4)
    model.train()  # a probe mid-training must hand the model back in training mode
    probe_loss(model, examples, batch_size=1, pad_id=0)
    assert model.training
