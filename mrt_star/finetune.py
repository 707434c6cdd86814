"""`mrt-star finetune`: supervised fine-tuning on a filter stage's SFT set with TRL's `SFTTrainer`.

Each SFT row is a prompt/completion pair (`mrt_star.schemas.SFT`). We render and tokenize it ourselves,
with the rules TRL uses for prompt-completion data (chat template, prompt rendered with the generation
prompt, completion = what follows it up to the end-of-turn token, no extra special tokens), and hand
TRL a tokenized dataset (`input_ids` + `labels`). Doing it here lets us (1) count the examples that are
too long before training — the reference recipe drops them (parity) rather than truncating — and
(2) train only on a revision's `suffix` with its `prefix` given as a prefilled assistant turn
(`suffix_only`), which TRL's conversational prompt-completion format cannot express.

Multi-GPU: the same command runs unchanged under accelerate (DDP, FSDP2, ZeRO-3), one process per GPU:

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m mrt_star.cli finetune \\
        --config recipes/llama-3.1-8b-instruct/backtrack/finetune.yaml

Global batch = per_device_train_batch_size × gradient_accumulation_steps × number of GPUs (the
reference 256 = 8 × 4 × 8). Every process reads and tokenizes the data (cheap); only the main process
writes the summary, the plot and a merged LoRA model. `--dry-run` prints the per-device memory of
weights, gradients and AdamW states (mrt_star.finetune_memory) without loading weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mrt_star.config import check_config, config_to_dict, option
from mrt_star.errors import UserError
from mrt_star.options import ModelOptions, StageIO

SUMMARY = "training_summary.json"
STARTED = "finetune_config.json"
# Keys that do not change the trained model, so they never block skipping a finished output.
NEUTRAL_KEYS = ("overwrite", "output", "logging_steps", "save_strategy", "save_steps", "save_total_limit",
                "report_to", "dry_run")
# Package each --report-to tracker needs (checked before training, not after the first logged step).
TRACKER_PACKAGES = {"wandb": "wandb", "trackio": "trackio", "tensorboard": "tensorboard"}


@dataclass
class FinetuneConfig(StageIO, ModelOptions):
    RENAMED: ClassVar[dict[str, str]] = {"dtype": "master_dtype"}

    """Options of `mrt-star finetune` (defaults suit the toy model; recipes set the paper's values)."""

    learning_rate: float = option(1e-4, "peak learning rate (reference SFT: 1e-6)")
    num_train_epochs: float = option(1.0, "epochs over the SFT set (reference: 3; released script: 1)")
    max_steps: int = option(-1, "stop after this many optimizer steps (-1: run all epochs)")
    per_device_train_batch_size: int = option(8, "examples per device per micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step (global batch = "
                                              "per-device batch × accumulation × devices; reference 256)")
    max_length: int = option(1024, "longest tokenized example, prompt included (reference: 4096)")
    overlong: str = option("drop", "examples longer than max_length: drop them (parity) or truncate them",
                           choices=("drop", "truncate"))
    warmup_ratio: float = option(0.1, "fraction of steps with a linear warm-up (reference: 0.1)")
    lr_scheduler_type: str = option("cosine", "learning-rate schedule (transformers names: linear, cosine, constant, ...)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    completion_only_loss: bool = option(True, "take the loss on the completion only (false: on prompt and completion)")
    suffix_only: bool = option(False, "train only on each row's `suffix`, with its `prefix` given as the start of "
                               "the assistant turn (backtracking revisions)")
    lora: bool = option(False, "train a LoRA adapter instead of all weights (peft)")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_target_modules: list[str] = option(["all-linear"], "modules that get adapters ('all-linear' or names)")
    merge_lora: bool = option(True, "save the base model with the adapter merged in (false: save the adapter only)")
    master_dtype: str = option("float32", "dtype the trained (master) weights are loaded in; keep float32 with bf16 mixed precision so "
                        "small updates (lr 1e-6) are not rounded away", choices=("float32", "bfloat16", "float16", "auto"))
    mixed_precision: str = option("auto", "autocast precision: auto = bf16 on a GPU that supports it, else none",
                                  choices=("auto", "bf16", "fp16", "no"))
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (saves memory)")
    attn_implementation: str | None = option(None, "attention kernel, e.g. sdpa, flash_attention_2 (default: the model's)")
    use_liger_kernel: bool = option(False, "Liger's fused Triton kernels (RMSNorm, RoPE, fused linear cross-entropy; "
                                    "needs liger-kernel and a GPU)")
    packing: bool = option(False, "pack several examples into each max_length row (TRL's best-fit packing; use with "
                           "attn_implementation flash_attention_2 so packed examples do not attend to each other)")
    report_to: str = option("none", "where training metrics go (the tracker's package must be installed)",
                            choices=("none", "wandb", "trackio", "tensorboard"))
    dry_run: bool = option(False, "print the per-device memory estimate (weights, gradients, AdamW states) from the "
                           "model's config, without loading weights or training")
    logging_steps: int = option(1, "log the training loss every N steps")
    save_strategy: str = option("no", "write checkpoints during training (a killed run resumes from the last)",
                                choices=("no", "epoch", "steps"))
    save_steps: int = option(500, "checkpoint every N steps when save_strategy is 'steps'")
    save_total_limit: int = option(1, "checkpoints kept")
    probe_examples: int = option(32, "measure the mean loss on this many training examples before and after "
                                 "training (0: skip)")
    extra: dict = option({}, "further trl.SFTConfig fields, e.g. {max_grad_norm: 1.0, optim: adamw_torch_fused}")


# --- input --------------------------------------------------------------------------------------------


def load_sft_rows(path: str, limit: int | None = None, suffix_only: bool = False) -> list[dict[str, Any]]:
    """Return the rows of a filter output folder, or raise UserError when it is not one (or is empty)."""
    from mrt_star.store import read_rows, read_stage_input

    needed = ("prompt", "completion") + (("prefix", "suffix") if suffix_only else ())
    read_stage_input(path, ("filter",), "finetune", needed)
    rows = read_rows(path)
    if limit:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"input: {path} holds no SFT rows (the filter kept nothing); nothing to train on")
    return rows


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


def row_target(row: dict[str, Any], suffix_only: bool) -> tuple[str, str]:
    """Return (assistant prefix given as context, assistant text trained on) of an SFT row."""
    if suffix_only:
        suffix = row.get("suffix")
        return row.get("prefix") or "", suffix if suffix is not None else _completion_text(row["completion"])
    return "", _completion_text(row["completion"])


# --- tokenization -------------------------------------------------------------------------------------



def render_example(tokenizer: Any, prompt: list[dict[str, str]], prefix: str, target: str) -> tuple[str, str]:
    """Return (context text, full text) of one example: the full text is context + target + end of turn.

    The context is the prompt with the generation prompt (TRL's prompt-completion rule) or, with a
    prefix, the prompt plus the prefilled assistant text exactly as the engines render it.
    """
    from mrt_star.formats.chat import has_chat_template, render_sft_text

    if not has_chat_template(tokenizer):
        raise UserError("the model's tokenizer has no chat template; fine-tuning on chat data needs one")
    # Rendered around the target, never through the template: R1's template strips <think> content.
    return render_sft_text(tokenizer, prompt, target, prefix)


def encode_example(tokenizer: Any, prompt: list[dict[str, str]], prefix: str, target: str,
                   completion_only_loss: bool = True) -> tuple[list[int], list[int]]:
    """Return (input_ids, labels); labels are -100 on the context when `completion_only_loss`."""
    context, full = render_example(tokenizer, prompt, prefix, target)
    ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    # The target starts where the two tokenizations part (tokens can merge across the boundary).
    n_ctx = 0
    while n_ctx < min(len(ctx_ids), len(ids)) and ctx_ids[n_ctx] == ids[n_ctx]:
        n_ctx += 1
    labels = [-100] * n_ctx + ids[n_ctx:] if completion_only_loss else list(ids)
    return ids, labels


def build_examples(rows: list[dict[str, Any]], tokenizer: Any, cfg: FinetuneConfig) -> tuple[list[dict], dict[str, int]]:
    """Return the tokenized examples and counts (used, dropped as overlong, truncated, left with no labels)."""
    counts = {"examples_total": len(rows), "examples_used": 0, "examples_dropped_overlong": 0,
              "examples_truncated": 0, "examples_without_labels": 0, "trainable_tokens": 0, "tokens": 0}
    examples = []
    for row in rows:
        prefix, target = row_target(row, cfg.suffix_only)
        ids, labels = encode_example(tokenizer, list(row["prompt"]), prefix, target, cfg.completion_only_loss)
        if len(ids) > cfg.max_length:
            if cfg.overlong == "drop":
                counts["examples_dropped_overlong"] += 1
                continue
            ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
            counts["examples_truncated"] += 1
        trainable = sum(label != -100 for label in labels[1:])  # the first label is never predicted
        if trainable == 0:
            counts["examples_without_labels"] += 1
            continue
        examples.append({"input_ids": ids, "labels": labels})
        counts["trainable_tokens"] += trainable
        counts["tokens"] += len(ids)
    counts["examples_used"] = len(examples)
    return examples, counts


# --- output folder ------------------------------------------------------------------------------------


def _prepare_output(out: Path, record: dict[str, Any], overwrite: bool) -> str:
    """Return 'done' (an identical finished model is there), 'resume' or 'fresh'; refuse foreign folders."""
    from mrt_star import output_guard
    from mrt_star.store import resume_or_refuse

    output_guard.check_not_file(out)
    ours = (out / SUMMARY).exists() or (out / STARTED).exists()
    if output_guard.has_content(out) and not ours:
        raise UserError(f"output: {out} exists and is not an mrt-star model folder; choose another --output")
    if _is_main_process():
        output_guard.acquire(out)  # one writer per model folder until the process exits
    old = json.loads((out / STARTED).read_text()) if (out / STARTED).exists() else None
    if resume_or_refuse(out, "a fine-tuned model", old, record, overwrite, NEUTRAL_KEYS) == "fresh":
        if _is_main_process() and output_guard.has_content(out):
            output_guard.remove_ours(out, "model")  # before any model load; refuses files mrt-star did not write
        return "fresh"
    return "done" if (out / SUMMARY).exists() else "resume"


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    """Wait for every process of an `accelerate launch` run (no-op in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # cpu=True on a CPU launch: PartialState() would otherwise settle on "no distribution" and skip the wait.
        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


def _last_checkpoint(out: Path) -> str | None:
    # Only whole checkpoints: one cut off mid-save has no trainer_state.json yet.
    checkpoints = sorted((p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                         key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return str(checkpoints[-1]) if checkpoints else None


# --- training -----------------------------------------------------------------------------------------


def _precision(cfg: FinetuneConfig) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    mode = cfg.mixed_precision
    if mode == "auto":
        mode = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if mode != "no" and not cuda:
        raise UserError(f"mixed_precision: {mode} needs a CUDA GPU; use --mixed-precision no on this machine")
    return {"use_cpu": not cuda, "bf16": mode == "bf16", "fp16": mode == "fp16"}


def _sft_config(cfg: FinetuneConfig, out: Path, model_init_kwargs: dict[str, Any]):
    import dataclasses

    from trl import SFTConfig

    valid = {f.name for f in dataclasses.fields(SFTConfig)}
    unknown = sorted(set(cfg.extra) - valid)
    if unknown:
        raise UserError(f"extra: {unknown[0]!r} is not a trl.SFTConfig field")
    if not 0 <= cfg.warmup_ratio < 1:
        raise UserError(f"warmup_ratio: must be in [0, 1), got {cfg.warmup_ratio}")
    package = TRACKER_PACKAGES.get(cfg.report_to)
    if package:
        import importlib.util

        if importlib.util.find_spec(package) is None:
            raise UserError(f"report_to: {cfg.report_to} needs the {package} package; pip install {package}")
    kwargs = dict(
        output_dir=str(out), learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler_type, weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps, save_strategy=cfg.save_strategy, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, seed=cfg.seed, report_to=cfg.report_to,
        max_length=cfg.max_length, completion_only_loss=cfg.completion_only_loss, packing=cfg.packing,
        use_liger_kernel=cfg.use_liger_kernel, model_init_kwargs=model_init_kwargs, **_warmup(cfg.warmup_ratio),
        **_precision(cfg),
    )
    # transformers 5 renamed gradient_checkpointing (TRL still defaults the old name to True).
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in valid else "gradient_checkpointing"
    kwargs[checkpointing] = cfg.gradient_checkpointing
    kwargs.update(cfg.extra)
    return SFTConfig(**kwargs)


def _warmup(ratio: float) -> dict[str, float]:
    """Return the warm-up argument that means `ratio` of the steps on the installed transformers.

    transformers 5 reads a warmup_steps value below 1 as a ratio (and deprecates warmup_ratio); 4.x reads
    it as a step count, so 0.1 would mean no warm-up at all there: 4.x gets warmup_ratio instead.
    """
    import transformers

    return {"warmup_steps": ratio} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": ratio}


def _lora_config(cfg: FinetuneConfig):
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else list(targets))


def _save_model(trainer: Any, cfg: FinetuneConfig, out: Path, model_path: str, tokenizer: Any) -> None:
    """Save the trained model (a LoRA adapter merged into the base unless merge_lora is off) and the tokenizer."""
    if not cfg.lora:
        trainer.save_model(str(out))
    else:
        adapter = out / "adapter"
        trainer.save_model(str(adapter))
        if cfg.merge_lora and trainer.is_world_process_zero():
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            dtype = "auto" if cfg.master_dtype == "auto" else getattr(torch, cfg.master_dtype)
            base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
            merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
            merged.save_pretrained(str(out))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))


def base_model(cfg: FinetuneConfig) -> str:
    """Return the model to fine-tune: `--model`, else the model that generated the SFT set's traces (as score)."""
    from mrt_star.models import resolve_model
    from mrt_star.store import read_manifest

    inherited = None
    if not cfg.model and cfg.input and Path(cfg.input).is_dir():
        inherited = read_manifest(cfg.input).get("summary", {}).get("model")
    return resolve_model(cfg.model_name(inherited or "toy"))


def run_finetune(cfg: FinetuneConfig) -> Path:
    """Return the output folder holding the fine-tuned model, tokenizer, training_summary.json and loss.png."""
    from mrt_star.console import console, quiet_library_progress, summary_table
    from mrt_star.store import fingerprint

    started = time.time()
    check_config(cfg)
    if not cfg.output:
        if not cfg.dry_run:
            raise UserError("output: required; pass --output with the folder the fine-tuned model goes to")
    if cfg.dry_run:  # reads the model's config only: no data, no output folder, no weights
        from mrt_star.finetune_memory import dry_run_report

        dry_run_report(cfg, base_model(cfg))
        return Path(cfg.output or ".")
    rows = load_sft_rows(cfg.input, cfg.limit, cfg.suffix_only)
    out = Path(cfg.output)
    record = {"config": config_to_dict(cfg), "input_fingerprint": fingerprint(cfg.input)}
    state = _prepare_output(out, record, cfg.overwrite)
    if state == "done":
        console.print(f"[green]{out} already holds this fine-tune; nothing to do[/green]")
        return out

    from transformers import AutoTokenizer

    quiet_library_progress()
    model_path = base_model(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples, counts = build_examples(rows, tokenizer, cfg)
    if counts["examples_without_labels"]:
        console.print(f"[yellow]warning: {counts['examples_without_labels']} example(s) had no trainable label "
                      f"left (target empty or cut off by max_length={cfg.max_length}); skipped[/yellow]")
    if counts["examples_dropped_overlong"]:
        console.print(f"[yellow]{counts['examples_dropped_overlong']} of {len(rows)} example(s) are longer than "
                      f"max_length={cfg.max_length} tokens and were dropped (parity); --overlong truncate keeps them[/yellow]")
    if not examples:
        raise UserError(f"no example left to train on ({len(rows)} rows: {counts['examples_dropped_overlong']} over "
                        f"max_length={cfg.max_length}, {counts['examples_without_labels']} without labels); raise "
                        f"--max-length or use --overlong truncate")

    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from mrt_star.finetune_probe import ProbeCallback, plot_loss, probe_indices

    model_init_kwargs = {"dtype": "auto" if cfg.master_dtype == "auto" else getattr(torch, cfg.master_dtype)}
    if cfg.attn_implementation:
        model_init_kwargs["attn_implementation"] = cfg.attn_implementation
    args = _sft_config(cfg, out, model_init_kwargs)
    resume = _last_checkpoint(out) if state == "resume" else None
    _barrier()  # every process has read the folder's state before the main process changes it
    if _is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        (out / STARTED).write_text(json.dumps(record, indent=2, default=str) + "\n")
    _barrier()

    train = Dataset.from_list(examples)
    # The probe is measured inside train() (begin and end), never by evaluate(): see mrt_star.finetune_probe.
    probe = ProbeCallback([examples[i] for i in probe_indices(len(examples), cfg.probe_examples)],
                          cfg.per_device_train_batch_size, tokenizer.pad_token_id or 0)
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=_lora_config(cfg) if cfg.lora else None, callbacks=[probe])
    probe.trainer = trainer
    result = trainer.train(resume_from_checkpoint=resume)
    probe_before, probe_after = probe.before, probe.after
    _save_model(trainer, cfg, out, model_path, tokenizer)
    if not trainer.is_world_process_zero():
        return out

    losses = [(int(h["step"]), float(h["loss"])) for h in trainer.state.log_history if "loss" in h]
    world = trainer.args.world_size
    summary = {
        "base_model": model_path, "input": str(cfg.input), **counts,
        "steps": int(trainer.state.global_step), "epochs": float(trainer.state.epoch or 0.0),
        "global_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world,
        "devices": world, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "bf16": bool(args.bf16), "lora": cfg.lora,
        "initial_loss": losses[0][1] if losses else None, "final_loss": losses[-1][1] if losses else None,
        "probe_loss_before": probe_before, "probe_loss_after": probe_after,
        "train_loss": float(result.training_loss) if result.training_loss is not None else None,
        "seconds": round(time.time() - started, 2), "resumed_from": resume, "losses": losses,
        "config": config_to_dict(cfg),
    }
    if not cfg.save_strategy == "no":
        for checkpoint in out.glob("checkpoint-*"):  # the final model is saved; checkpoints were for resuming
            shutil.rmtree(checkpoint, ignore_errors=True)
    plot_loss(losses, out / "loss.png", f"fine-tuning {Path(model_path).name} on {Path(cfg.input).name}",
              (probe_before, probe_after))
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")

    def fmt(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    summary_table(f"mrt-star finetune → {out}", [
        ("examples used / total", f"{counts['examples_used']} / {counts['examples_total']}"),
        ("dropped (over max_length)", counts["examples_dropped_overlong"]),
        ("truncated", counts["examples_truncated"]),
        ("trainable tokens", counts["trainable_tokens"]),
        ("steps (global batch)", f"{summary['steps']} ({summary['global_batch_size']})"),
        ("loss first → last step", f"{fmt(summary['initial_loss'])} → {fmt(summary['final_loss'])}"),
        ("probe loss before → after", f"{fmt(probe_before)} → {fmt(probe_after)}"),
        ("device / bf16 / LoRA", f"{summary['device']} / {summary['bf16']} / {cfg.lora}"),
        ("seconds", summary["seconds"]),
    ])
    return out
