"""Build the toy model: a tiny Llama trained from scratch on synthetic traces, evaluated, cached.

A plain PyTorch loop (this is a build step, not the SFT stage): examples are drawn fresh from the
world (every format, plus prover-forcing examples), packed into length-sorted padded batches, and
trained with AdamW. The result is an ordinary Hugging Face folder (model, tokenizer with chat template,
generation config) plus `build_report.json`, written atomically under the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from mrt_star.config import option
from mrt_star.formats.prompts import FORMATS, forced_prefix, user_prompt
from mrt_star.toy import default_cache_dir
from mrt_star.toy.problems import DIFFICULTIES, FAMILIES, sample_problem
from mrt_star.toy.report import eval_problems, evaluate
from mrt_star.toy.tokenizer import char_encoder
from mrt_star.toy.traces import (
    TOY_TEMPLATE,
    TraceStyle,
    WarmTrace,
    arithmetic_facts,
    forced_answer_text,
    make_trace,
    prefix_at_cut,
)

# Bump when the world (problems, trace grammar, training recipe) changes so cached builds are redone.
WORLD_VERSION = "toy-world-7"
REPORT_FILE = "build_report.json"
# Backtracking gets the largest share: its check -> backtrack -> revision pattern is the rarest to learn.
FORMAT_MIX = {"backtrack": 0.45, "linearized": 0.25, "open": 0.30}


@dataclass(frozen=True)
class Recipe:
    """The resolved knobs of one build (what the cache key hashes)."""

    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    steps: int
    batch_size: int
    lr: float
    forced_share: float  # share of examples that teach the forced prover
    drill_share: float  # share of examples that are arithmetic drills (pretraining stand-in)
    guess_share: float  # share of traces that box an answer with no work (TraceStyle.guess)
    eval_problems: int  # held-out problems per format
    max_new_tokens: int
    difficulty: int
    seed: int


VARIANTS: dict[str, dict[str, Any]] = {
    "default": dict(hidden_size=96, layers=4, heads=4, intermediate_size=288, steps=2500, batch_size=16,
                    lr=3e-3, forced_share=0.35, drill_share=0.3, guess_share=0.15, eval_problems=90, max_new_tokens=400),
    "micro": dict(hidden_size=64, layers=3, heads=4, intermediate_size=192, steps=1000, batch_size=8,
                  lr=5e-3, forced_share=0.2, drill_share=0.4, guess_share=0.0, eval_problems=12, max_new_tokens=250),
}


@dataclass
class ToyBuildConfig:
    """Build and warm-start the embedded toy model (`mrt-star toy build`)."""

    RENAMED: ClassVar[dict[str, str]] = {"batch_size": "train_batch_size"}

    output: str | None = option(None, "model folder to write; omitted: <cache>/toy/<variant>-<config hash>")
    variant: str = option("default", "default (the toy world's model, a few minutes) or micro (seconds, for tests)",
                          choices=tuple(VARIANTS))
    seed: int = option(0, "random seed (data, initialisation, evaluation samples)")
    overwrite: bool = option(False, "rebuild even if the folder already holds a finished build")
    steps: int | None = option(None, "optimizer steps (default: the variant's)")
    train_batch_size: int | None = option(None, "examples per optimizer step (default: the variant's)")
    lr: float | None = option(None, "peak AdamW learning rate (default: the variant's)")
    hidden_size: int | None = option(None, "model width (default: the variant's)")
    layers: int | None = option(None, "transformer layers (default: the variant's)")
    eval_problems: int | None = option(None, "held-out problems per format for the build report (default: the variant's)")
    difficulty: int = option(2, "problem difficulty: 1 (small numbers) to 3 (more terms, larger numbers)",
                            choices=DIFFICULTIES)


def recipe_of(cfg: ToyBuildConfig) -> Recipe:
    """Return the variant's knobs with the config's overrides applied."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown toy variant {cfg.variant!r}; choose one of {', '.join(VARIANTS)}")
    knobs = dict(VARIANTS[cfg.variant])
    for name, knob in (("steps", "steps"), ("train_batch_size", "batch_size"), ("lr", "lr"),
                       ("hidden_size", "hidden_size"), ("layers", "layers"), ("eval_problems", "eval_problems")):
        if getattr(cfg, name) is not None:
            knobs[knob] = getattr(cfg, name)
    return Recipe(**knobs, difficulty=cfg.difficulty, seed=cfg.seed)


def config_hash(cfg: ToyBuildConfig) -> str:
    """Return a short hash of the resolved recipe and the world version (the cache key)."""
    blob = json.dumps({"world": WORLD_VERSION, **asdict(recipe_of(cfg))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_dir(cfg: ToyBuildConfig) -> Path:
    """Return where this config's build lives (`cfg.output` or the cache folder)."""
    if cfg.output:
        return Path(cfg.output).expanduser()
    return default_cache_dir() / "toy" / f"{cfg.variant}-{config_hash(cfg)}"


def is_built(folder: Path) -> bool:
    """Return True when `folder` holds a finished build (the report is written last)."""
    return (Path(folder) / REPORT_FILE).is_file()


# --- data -----------------------------------------------------------------------------------------


# An example as (text, trained on?) pieces: the loss covers only the trained pieces.
Segments = list[tuple[str, bool]]


def training_segments(recipe: Recipe, rng: random.Random, exclude: set[str], heads: dict[str, str], end: str,
                      style: TraceStyle | None = None) -> list[Segments]:
    """Return the build's examples: arithmetic drills, whole traces and forced-prover examples.

    Problems in `exclude` (the held-out set) are never trained on; `heads` and `end` come from
    `prompt_heads` and the tokenizer's end token.
    """
    style = style or TraceStyle(guess=recipe.guess_share)
    out: list[Segments] = []
    while len(out) < recipe.steps * recipe.batch_size:
        if rng.random() < recipe.drill_share:
            out.append(drill_segments(rng, recipe.difficulty))
            continue
        problem = sample_problem(rng, rng.choice(FAMILIES), recipe.difficulty)
        if problem in exclude:
            continue
        fmt = rng.choices(list(FORMAT_MIX), weights=list(FORMAT_MIX.values()))[0]
        trace = make_trace(problem, fmt, rng, style)
        cut = rng.randrange(len(trace.cuts)) if rng.random() < recipe.forced_share else None
        out.append(example_segments(heads, end, trace, cut))
    return out


def drill_segments(rng: random.Random, difficulty: int, n_facts: int = 16) -> Segments:
    """Return a drill as segments: one fact per line, trained only on the results."""
    segments = []
    for op, result in arithmetic_facts(rng, difficulty, n_facts):
        segments += [(op + "=", False), (result + "\n", True)]
    return segments


def example_segments(heads: dict[str, str], end: str, trace: WarmTrace, cut: int | None) -> Segments:
    """Return the example as (text, trained on?) segments; `heads` maps a format to its rendered prompt.

    A whole trace trains on everything after the prompt. A forcing example (the prefix at step cut `cut`,
    any step boundary, so the prover learns to finish half-done work) trains on the prefix (ordinary trace
    text) and the forced answer, but not on the force text, so the model never learns to give up on its own.
    """
    head = heads[trace.fmt].replace(_PROBLEM_SLOT, trace.problem)
    if cut is None:
        return [(head, False), (trace.text + end, True)]
    prefix = prefix_at_cut(trace, cut)
    forced = forced_prefix(prefix, trace.fmt)
    kept = prefix if forced.startswith(prefix) else prefix.rstrip("\n")  # open: trailing newlines become one blank line
    return [(head, False), (kept, True), (forced[len(kept):], False),
            (forced_answer_text(trace.fmt, trace.cuts[cut][1]) + end, True)]


_PROBLEM_SLOT = "\u2063PROBLEM\u2063"


def prompt_heads(tokenizer) -> dict[str, str]:
    """Return, per format, the rendered chat prompt with a slot for the problem (rendered once, reused)."""
    from mrt_star.formats.chat import render_chat

    return {fmt: render_chat(tokenizer, [{"role": "user", "content": user_prompt(_PROBLEM_SLOT, TOY_TEMPLATE[fmt])}])
            for fmt in FORMATS}


def encode_examples(tokenizer, examples: list[Segments]) -> list[tuple[list[int], list[bool]]]:
    """Return (token ids, trained-on mask) per example."""
    encode = char_encoder(tokenizer)
    out = []
    for segments in examples:
        tokens, mask = [], []
        for text, train in segments:
            ids = encode(text)
            tokens += ids
            mask += [train] * len(ids)
        out.append((tokens, mask))
    return out


def make_batches(encoded: list[tuple[list[int], list[bool]]], batch_size: int, pad_id: int, rng: random.Random):
    """Return padded (input_ids, labels) tensor batches; lengths are sorted within windows to cut padding."""
    import torch

    window = batch_size * 32
    batches = []
    for start in range(0, len(encoded), window):
        chunk = sorted(encoded[start : start + window], key=lambda e: len(e[0]))
        for b in range(0, len(chunk), batch_size):
            rows = chunk[b : b + batch_size]
            width = max(len(ids) for ids, _ in rows)
            x = torch.full((len(rows), width), pad_id, dtype=torch.long)
            y = torch.full((len(rows), width), -100, dtype=torch.long)
            for i, (ids, mask) in enumerate(rows):
                row = torch.tensor(ids)
                x[i, : len(ids)] = row
                y[i, : len(ids)] = torch.where(torch.tensor(mask), row, -100)
            batches.append((x, y))
    rng.shuffle(batches)
    return batches


# --- model ----------------------------------------------------------------------------------------


def new_model(tokenizer, recipe: Recipe):
    """Return a freshly initialised tiny LlamaForCausalLM for the toy tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def train(model, batches, recipe: Recipe) -> float:
    """Return the final smoothed loss after training `model` on `batches` (AdamW, warmup + cosine)."""
    import torch

    from mrt_star.console import stage_progress

    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, len(batches) // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, len(batches) - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    smooth = None
    with stage_progress() as progress:
        task = progress.add_task("warm start", total=len(batches), info="")
        for x, y in batches:
            loss = model(input_ids=x, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
            progress.update(task, advance=1, info=f"loss {smooth:.3f}")
    model.eval()
    return float(smooth or 0.0)


# --- command --------------------------------------------------------------------------------------


def _save(model, tokenizer, folder: Path) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=512,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _publish(tmp: Path, folder: Path, overwrite: bool) -> None:
    if folder.exists() and overwrite:
        shutil.rmtree(folder)
    try:
        os.rename(tmp, folder)  # atomic; fails if another process published the same build first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def run_toy_build(cfg: ToyBuildConfig) -> Path:
    """Return the folder of the built toy model (reused from the cache unless `overwrite`)."""
    import torch

    from mrt_star.console import quiet_library_progress, summary_table
    from mrt_star.toy.tokenizer import build_tokenizer

    quiet_library_progress()

    folder = build_dir(cfg)
    if is_built(folder) and not cfg.overwrite:
        print(f"toy model already built at {folder} (pass --overwrite to rebuild)")
        return folder
    if folder.exists() and any(folder.iterdir()) and not is_built(folder) and not cfg.overwrite:
        raise FileExistsError(f"{folder} exists and is not a toy build; pass --overwrite to replace it")
    recipe = recipe_of(cfg)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)  # a build owns the machine; torch's default can be lower
    torch.manual_seed(recipe.seed)
    rng = random.Random(f"toy-build:{recipe.seed}")
    t0 = time.time()

    tokenizer = build_tokenizer()
    held_out = {p["problem"] for p in eval_problems(recipe)}
    segments = training_segments(recipe, rng, held_out, prompt_heads(tokenizer), tokenizer.eos_token)
    batches = make_batches(encode_examples(tokenizer, segments), recipe.batch_size, tokenizer.pad_token_id, rng)
    model = new_model(tokenizer, recipe)
    n_params = sum(p.numel() for p in model.parameters())
    loss = train(model, batches, recipe)
    train_seconds = time.time() - t0
    results = evaluate(model, tokenizer, recipe)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _save(model, tokenizer, tmp)
    report = {
        "world_version": WORLD_VERSION,
        "variant": cfg.variant,
        "config_hash": config_hash(cfg),
        "recipe": asdict(recipe),
        "parameters": n_params,
        "torch_threads": threads,
        "train_tokens": int(sum(x.numel() for x, _ in batches)),
        "train_target_tokens": int(sum(int((y != -100).sum()) for _, y in batches)),
        "final_loss": round(loss, 4),
        "train_seconds": round(train_seconds, 1),
        "build_seconds": round(time.time() - t0, 1),
        **results,
    }
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    _publish(tmp, folder, cfg.overwrite)

    per = report["per_format"]
    summary_table(f"toy model ({cfg.variant}) → {folder}", [
        ("build time", f"{report['build_seconds']:.0f} s (training {report['train_seconds']:.0f} s, {threads} threads)"),
        ("parameters", f"{n_params:,}"),
        ("final training loss", report["final_loss"]),
        ("held-out problems per format", report["eval_problems"]),
        ("first-attempt accuracy (mean of formats)", report["first_attempt_accuracy"]),
        ("backtrack rate (backtrack traces with a backtrack line)", report["backtrack_rate"]),
        *[(f"{fmt}: final / first-attempt accuracy", f"{per[fmt]['final_accuracy']:.2f} / "
           f"{per[fmt]['first_attempt_accuracy']:.2f}") for fmt in FORMATS],
        *[(f"{fmt}: prover J(-1) (empty prefix)", per[fmt]["prover_empty_prefix_accuracy"]) for fmt in FORMATS],
    ])
    return folder
