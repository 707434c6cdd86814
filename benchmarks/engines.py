"""Engine throughput: batching, one prefill for n samples, and the generate stage's overhead.

Prints one table:
- batched vs one-by-one: the same prompts in one `generate` call vs one call per prompt (tokens/s);
- n samples from one prefill vs n separate requests: a prover-like load (long prefilled prefixes, short
  answers, n samples each); wall time and prompt tokens actually run through the model;
- the `generate` stage vs the bare engine on the same prompts and settings (tokens/s; target >= 0.95x).

    python benchmarks/engines.py                  # micro toy model
    python benchmarks/engines.py --model toy      # the default toy model
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _requests(problems, template: str, prefix: str = ""):
    from mrt_star.engines.base import Request
    from mrt_star.formats.prompts import prompt_messages

    out = []
    for p in problems:
        messages = prompt_messages(p["problem"], template)
        out.append(Request([*messages, {"role": "assistant", "content": prefix}] if prefix else messages))
    return out


def _timed(engine, requests, params, calls: int = 1):
    """Return (seconds, completion tokens, prompt tokens encoded) of `calls` generate calls over requests."""
    stats = engine.stats
    before = stats.completion_tokens, stats.prompt_tokens_encoded
    start = time.perf_counter()
    if calls == 1:
        engine.generate(requests, params)
    else:
        for r in requests:
            engine.generate([r], params)
    seconds = time.perf_counter() - start
    return seconds, stats.completion_tokens - before[0], stats.prompt_tokens_encoded - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="toy (default), toy-micro, or any model folder/id")
    parser.add_argument("--engine", default="transformers", help="transformers or vllm")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=32, help="problems per shard in the stage run")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt in the prefill comparison")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare/stage runs (best one counts)")
    parser.add_argument("--grading", nargs="+", default=["symbolic", "hendrycks"],
                        help="grading modes of the stage runs")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from mrt_star.engines import load_engine
    from mrt_star.engines.base import SamplingParams
    from mrt_star.generate import GenerateConfig, is_toy_model, run_generate
    from mrt_star.store import read_manifest
    from mrt_star.toy.problems import generate_problems

    options = {"batch_size": args.batch_size} if args.engine == "transformers" else {}
    engine = load_engine(args.engine, args.model, **options)
    problems = generate_problems(args.problems, seed=args.seed)
    template = "toy-open" if is_toy_model(args.model, engine.tokenizer) else "open"
    rows = []

    # 1. batching
    requests = _requests(problems, template)
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
    engine.generate(requests[:2], params)  # warm-up
    one = _timed(engine, requests, params, calls=len(requests))
    batched = _timed(engine, requests, params)
    rows.append(["one-by-one, n=1", f"{one[0]:.2f}", f"{one[1] / one[0]:,.0f}", f"{one[2]:,}", ""])
    rows.append(["batched, n=1", f"{batched[0]:.2f}", f"{batched[1] / batched[0]:,.0f}", f"{batched[2]:,}",
                 f"{(batched[1] / batched[0]) / (one[1] / one[0]):.2f}x tokens/s"])

    # 2. n samples from one prefill vs n separate requests (prover-like: long prefix, short answer)
    prefix = "<think>\n" + "".join(f"{i}+{i}={2 * i}.\n\n" for i in range(40))
    prefilled = _requests(problems[: max(1, args.problems // 4)], template, prefix)
    short = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=16, seed=args.seed)
    shared = _timed(engine, prefilled, short)
    separate = _timed(engine, [r for r in prefilled for _ in range(args.n)],
                      SamplingParams(n=1, temperature=1.0, max_new_tokens=16, seed=args.seed))
    rows.append([f"{args.n} separate requests x {len(prefilled)} prefixes", f"{separate[0]:.2f}",
                 f"{separate[1] / separate[0]:,.0f}", f"{separate[2]:,}", ""])
    rows.append([f"n={args.n} from one prefill x {len(prefilled)} prefixes", f"{shared[0]:.2f}",
                 f"{shared[1] / shared[0]:,.0f}", f"{shared[2]:,}",
                 f"{separate[0] / shared[0]:.2f}x faster, {separate[2] / max(shared[2], 1):.1f}x fewer prefill tokens"])

    # 3. the generate stage vs the bare engine, same prompts and settings (open format: one call per shard).
    # Alternating runs, best of --repeats: on a shared machine single timings swing by 2x.
    bare_params = SamplingParams(n=4, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
    bare_runs, stage_runs = [], {mode: [] for mode in args.grading}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problems.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in problems))
        for rep in range(args.repeats):
            bare_runs.append(_timed(engine, requests, bare_params))
            for mode in args.grading:
                cfg = GenerateConfig(input=str(path), output=str(Path(tmp) / f"traces-{mode}-{rep}"),
                                     model=args.model, format="open", n=4, max_new_tokens=args.max_new_tokens,
                                     engine=args.engine, batch_size=args.batch_size, prompt_template=template,
                                     shard_size=args.shard_size, seed=args.seed + rep, grading=mode)
                run_generate(cfg)
                timings = read_manifest(cfg.output)["timings"]
                stats = timings["engine_stats"]
                stage_runs[mode].append((timings["sampling_seconds"], stats["completion_tokens"],
                                         stats["prompt_tokens_encoded"], stats["generate_seconds"]))
    engine.close()
    bare = max(bare_runs, key=lambda r: r[1] / r[0])
    bare_rate = bare[1] / bare[0]
    rows.append([f"bare engine, n=4 (best of {args.repeats})", f"{bare[0]:.2f}", f"{bare_rate:,.0f}",
                 f"{bare[2]:,}", ""])
    for mode, runs in stage_runs.items():
        stage = max(runs, key=lambda r: r[1] / r[0])
        rate = stage[1] / stage[0]
        rows.append([f"generate stage, n=4, {mode} grading (best of {args.repeats})", f"{stage[0]:.2f}",
                     f"{rate:,.0f}", f"{stage[2]:,}",
                     f"{rate / bare_rate:.2f}x of bare tokens/s; engine {stage[3] / stage[0]:.0%} of stage time"])

    table = Table(title=f"engines: {args.engine} on {args.model}, {args.problems} problems, "
                        f"max_new_tokens {args.max_new_tokens}", title_justify="left")
    for i, name in enumerate(["run", "seconds", "tokens/s", "prompt tokens encoded", "ratio"]):
        table.add_column(name, justify="left" if i in (0, 4) else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
