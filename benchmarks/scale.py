"""Scale-out: the generate stage on 1 and 2 Ray workers vs the local backend, same prompts and seed.

Prints one table (sampling seconds: from the first shard sent to the last one written, as the manifest
records them; wall seconds add the cluster start and the model loads):
- ray, 2 workers vs ray, 1 worker: throughput ratio (target >= 1.7x on 2 cores, one torch thread each);
- ray, 1 worker vs local: Ray's overhead (target <= 10%).
Every run must give the same rows (checked).

    python benchmarks/scale.py                    # default toy model, 48 problems
    python benchmarks/scale.py --model toy-micro
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="toy (default), toy-micro, or any model folder/id")
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()

    import torch

    from mrt_star.console import comparison_table
    from mrt_star.generate import GenerateConfig, run_generate
    from mrt_star.store import read_manifest, read_rows
    from mrt_star.toy.problems import generate_problems

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        problems = Path(tmp) / "problems.jsonl"
        problems.write_text("".join(json.dumps(p) + "\n" for p in generate_problems(args.problems, seed=11)))
        base = {"input": str(problems), "model": args.model, "n": args.n, "max_new_tokens": args.max_new_tokens,
                "shard_size": args.shard_size, "grading": "hendrycks", "seed": 3}
        runs, reference = {}, None
        for label, scale in (("local", {}), ("ray, 1 worker", {"backend": "ray", "workers": 1}),
                             ("ray, 2 workers", {"backend": "ray", "workers": 2})):
            start = time.perf_counter()
            out = run_generate(GenerateConfig(output=f"{tmp}/{len(runs)}", **base, **scale))
            wall = time.perf_counter() - start
            rows = read_rows(out)
            reference = reference if reference is not None else rows
            assert rows == reference, f"{label}: rows differ from the local run"
            tokens = sum(r["num_tokens"] for r in rows)
            runs[label] = (read_manifest(out)["timings"]["sampling_seconds"], wall, tokens)
    local, one, two = runs["local"][0], runs["ray, 1 worker"][0], runs["ray, 2 workers"][0]
    table = [[label, f"{s:.1f}", f"{w:.1f}", f"{t / s:,.0f}"] for label, (s, w, t) in runs.items()]
    table += [["2 workers / 1 worker (throughput)", f"{one / two:.2f}x", "", "target >= 1.7x"],
              ["ray 1 worker vs local (overhead)", f"{one / local - 1:+.1%}", "", "target <= +10%"]]
    comparison_table(f"scale-out: {args.problems} problems x {args.n} samples, {args.model}, shards of "
                     f"{args.shard_size}, identical rows in every run",
                     ["run", "sampling s", "wall s", "tokens/s"], table)


if __name__ == "__main__":
    main()
