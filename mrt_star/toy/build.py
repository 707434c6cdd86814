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
from typing import Any

from mrt_star.config import option
from mrt_star.formats.prompts import FORCE_TEXT, FORMATS, user_prompt
from mrt_star.toy import default_cache_dir
from mrt_star.toy.problems import FAMILIES, generate_problems, sample_problem
from mrt_star.toy.tokenizer import char_encoder
from mrt_star.toy.traces import (
    TOY_TEMPLATE,
    TraceStyle,
    WarmTrace,
    arithmetic_facts,
    forced_answer_text,
    make_trace,
)

# Bump when the world (problems, trace grammar, training recipe) changes so cached builds are redone.
WORLD_VERSION = "toy-world-5"
REPORT_FILE = "build_report.json"
EVAL_SEED_OFFSET = 7919  # held-out problems come from a different stream than training problems
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
    eval_problems: int  # held-out problems per format
    max_new_tokens: int
    difficulty: int
    seed: int


VARIANTS: dict[str, dict[str, Any]] = {
    "default": dict(hidden_size=96, layers=4, heads=4, intermediate_size=288, steps=1500, batch_size=16,
                    lr=3e-3, forced_share=0.2, drill_share=0.3, eval_problems=90, max_new_tokens=400),
    "micro": dict(hidden_size=64, layers=3, heads=4, intermediate_size=192, steps=600, batch_size=8,
                  lr=5e-3, forced_share=0.2, drill_share=0.4, eval_problems=12, max_new_tokens=250),
}


@dataclass
class ToyBuildConfig:
    """Build and warm-start the embedded toy model (`mrt-star toy build`)."""

    output: str | None = option(None, "model folder to write; omitted: <cache>/toy/<variant>-<config hash>")
    variant: str = option("default", "default (the toy world's model, a few minutes) or micro (seconds, for tests)",
                          choices=tuple(VARIANTS))
    seed: int = option(0, "random seed (data, initialisation, evaluation samples)")
    overwrite: bool = option(False, "rebuild even if the folder already holds a finished build")
    steps: int | None = option(None, "optimizer steps (default: the variant's)")
    batch_size: int | None = option(None, "examples per step (default: the variant's)")
    lr: float | None = option(None, "peak AdamW learning rate (default: the variant's)")
    hidden_size: int | None = option(None, "model width (default: the variant's)")
    layers: int | None = option(None, "transformer layers (default: the variant's)")
    eval_problems: int | None = option(None, "held-out problems per format for the build report (default: the variant's)")
    difficulty: int = option(2, "problem difficulty the model is trained on (1-3)", choices=(1, 2, 3))


def recipe_of(cfg: ToyBuildConfig) -> Recipe:
    """Return the variant's knobs with the config's overrides applied."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown toy variant {cfg.variant!r}; choose one of {', '.join(VARIANTS)}")
    knobs = dict(VARIANTS[cfg.variant])
    for name in ("steps", "batch_size", "lr", "hidden_size", "layers", "eval_problems"):
        if getattr(cfg, name) is not None:
            knobs[name] = getattr(cfg, name)
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
                      style: TraceStyle = TraceStyle()) -> list[Segments]:
    """Return the build's examples: arithmetic drills, whole traces and forced-prover examples.

    Problems in `exclude` (the held-out set) are never trained on; `heads` and `end` come from
    `prompt_heads` and the tokenizer's end token.
    """
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
        j = rng.randrange(len(trace.episodes) + 1) if rng.random() < recipe.forced_share else None
        out.append(example_segments(heads, end, trace, j))
    return out


def drill_segments(rng: random.Random, difficulty: int, n_facts: int = 16) -> Segments:
    """Return a drill as segments: one fact per line, trained only on the results."""
    segments = []
    for op, result in arithmetic_facts(rng, difficulty, n_facts):
        segments += [(op + "=", False), (result + "\n", True)]
    return segments


def example_segments(heads: dict[str, str], end: str, trace: WarmTrace, j: int | None) -> Segments:
    """Return the example as (text, trained on?) segments; `heads` maps a format to its rendered prompt.

    A whole trace trains on everything after the prompt. A forcing example (prefix j) trains on the
    prefix (ordinary trace text) and the forced answer, but not on the force text, so the model never
    learns to give up on its own.
    """
    head = heads[trace.fmt].replace(_PROBLEM_SLOT, trace.problem)
    if j is None:
        return [(head, False), (trace.text + end, True)]
    prefix = "".join(trace.episodes[:j])
    return [(head, False), (prefix, True), (FORCE_TEXT[trace.fmt], False),
            (forced_answer_text(trace.fmt, trace.supported[j]) + end, True)]


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


# --- evaluation -----------------------------------------------------------------------------------


def sample_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                       batch_size: int = 64) -> list[str]:
    """Return one temperature-1 sample per rendered prompt (batched `generate`, left padding)."""
    import torch

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], add_special_tokens=False, padding=True,
                        return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def evaluate(model, tokenizer, recipe: Recipe) -> dict[str, Any]:
    """Return held-out numbers: per format first-attempt and final accuracy, backtrack rate, prover J(-1)."""
    from mrt_star.formats.chat import render_chat
    from mrt_star.formats.episodes import split_episodes
    from mrt_star.formats.prompts import BACKTRACK_RE, FORCE_TEXT, user_prompt
    from mrt_star.grading.extract import last_boxed
    from mrt_star.toy.traces import TOY_TEMPLATE, toy_value

    problems = eval_problems(recipe)
    report: dict[str, Any] = {"per_format": {}}
    for i, fmt in enumerate(FORMATS):
        users = [{"role": "user", "content": user_prompt(p["problem"], TOY_TEMPLATE[fmt])} for p in problems]
        texts = sample_completions(model, tokenizer, [render_chat(tokenizer, [u]) for u in users],
                                   recipe.max_new_tokens, recipe.seed + i)
        refs = [toy_value(p["answer"]) for p in problems]
        final = [toy_value(last_boxed(t)) == r for t, r in zip(texts, refs, strict=True)]
        first = [toy_value(last_boxed(split_episodes(t, fmt)[0])) == r for t, r in zip(texts, refs, strict=True)]
        # The prover on the empty prefix: how often a forced answer with no work is right (J(-1)).
        forced = [render_chat(tokenizer, [u, {"role": "assistant", "content": FORCE_TEXT[fmt]}]) for u in users]
        answers = sample_completions(model, tokenizer, forced, 24, recipe.seed + 10 + i)
        if fmt != "open":
            answers = ["\\boxed{" + a for a in answers]
        empty = [toy_value(last_boxed(a)) == r for a, r in zip(answers, refs, strict=True)]
        row = {
            "first_attempt_accuracy": _mean(first),
            "final_accuracy": _mean(final),
            "boxed_rate": _mean([last_boxed(t) is not None for t in texts]),
            "mean_chars": _mean([len(t) for t in texts]),
            "prover_empty_prefix_accuracy": _mean(empty),
            "final_accuracy_by_family": {
                fam: _mean([ok for ok, p in zip(final, problems, strict=True) if p["family"] == fam]) for fam in FAMILIES
            },
            "example": texts[0],
        }
        if fmt == "backtrack":
            row["backtrack_rate"] = _mean([bool(BACKTRACK_RE.search(t)) for t in texts])
        report["per_format"][fmt] = row
    rows = report["per_format"].values()
    report["first_attempt_accuracy"] = _mean([r["first_attempt_accuracy"] for r in rows])
    report["final_accuracy"] = _mean([r["final_accuracy"] for r in rows])
    report["backtrack_rate"] = report["per_format"]["backtrack"]["backtrack_rate"]
    report["eval_problems"] = len(problems)
    return report


def eval_problems(recipe: Recipe) -> list[dict]:
    """Return the held-out problems of a build (the same for every format)."""
    return generate_problems(recipe.eval_problems, seed=recipe.seed + EVAL_SEED_OFFSET, difficulty=recipe.difficulty)


def _mean(xs) -> float:
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else 0.0


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

    from mrt_star.console import summary_table
    from mrt_star.toy.tokenizer import build_tokenizer

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
