"""Scoring cost and estimator agreement: what the prover spends per trace, and sample vs likelihood J.

Samples toy traces (or reads a `generate` output given with --traces), then scores them twice with the
same engine: the sampled estimator (K forced answers per prefix) and the likelihood estimator (one
teacher-forced pass per prefix). Prints per-trace prover tokens and wall time, the prefix tokens the
engine actually encoded (EngineStats) against the naive count L·K·prefix (every rollout re-encoding its
prefix, nothing shared), and how well the two estimators agree.

    python benchmarks/scoring.py                      # micro toy model, a small sample
    python benchmarks/scoring.py --model toy --problems 40 --samples 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _traces(args, workdir: Path) -> str:
    if args.traces:
        return args.traces
    from mrt_star.config import build_config
    from mrt_star.generate import GenerateConfig, run_generate
    from mrt_star.toy.problems import generate_problems

    # Toy problems written to a file so generate reads them like any problem set.
    problems = workdir / "problems.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate_problems(args.problems, seed=args.seed)))
    cfg = build_config(GenerateConfig, {"input": str(problems), "output": str(workdir / "traces"),
                                        "model": args.model, "n": args.samples, "format": args.format,
                                        "seed": args.seed}, source="benchmark")
    return str(run_generate(cfg))


def _score(engine, grader, rows, cfg, shard_size: int):
    """Return (scored rows, seconds, engine stats delta, naive prefix tokens) for one estimator."""
    from mrt_star.score import problem_shards, score_rows

    stats = engine.stats
    before = (stats.prompt_tokens_encoded, stats.prompt_tokens_requested, stats.completion_tokens)
    start = time.perf_counter()
    out = []
    for i, shard in enumerate(problem_shards(rows, shard_size)):
        out += score_rows(shard, engine, grader, cfg, seed=cfg.seed + i)
    seconds = time.perf_counter() - start
    after = (stats.prompt_tokens_encoded, stats.prompt_tokens_requested, stats.completion_tokens)
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return out, seconds, delta


def _naive_prefix_tokens(engine, rows, k: int) -> int:
    """Return Σ over traces and prefixes of K × rendered prompt+prefix tokens (nothing shared or cached)."""
    from mrt_star.engines.base import Request
    from mrt_star.progress.prover import prover_queries

    texts = [engine.render(Request(q.messages())) for r in rows
             for q in prover_queries(list(r["prompt"]), [e["text"] for e in r["episodes"]], r["format"], r["answer"])]
    return k * sum(engine.count_tokens(texts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-micro")
    parser.add_argument("--traces", help="a generate output folder (default: sample toy traces)")
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--format", default="backtrack")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--engine", default="transformers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--long-trace", action="store_true", help="score one synthetic ~16k-token thinking trace "
                        "with the likelihood estimator on toy-bpe (see long_trace)")
    parser.add_argument("--agreement", action="store_true", help="sign(progress) of fixed K, adaptive and likelihood "
                        "J against a large-K sampled reference, and each one's prover cost (see agreement_vs_reference)")
    parser.add_argument("--reference-k", type=int, default=64, help="--agreement: samples per prefix of the reference")
    args = parser.parse_args(argv)
    if args.long_trace:
        return long_trace(args)
    if args.agreement:
        return agreement_vs_reference(args)

    from dataclasses import replace

    from mrt_star.console import comparison_table, console
    from mrt_star.engines import load_engine
    from mrt_star.grading import Grader
    from mrt_star.models import resolve_model
    from mrt_star.progress.metrics import estimator_agreement
    from mrt_star.score import ScoreConfig
    from mrt_star.store import read_rows

    with tempfile.TemporaryDirectory() as tmp:
        rows = read_rows(_traces(args, Path(tmp)))
    model_path = resolve_model(args.model)
    engine = load_engine(args.engine, model_path)
    grader = Grader(mode="symbolic")
    base = ScoreConfig(prover_k=args.k, prover_max_new_tokens=args.max_new_tokens, seed=args.seed, shard_size=args.shard_size)
    sampled, t_sample, d_sample = _score(engine, grader, rows, replace(base, estimator="sample"), args.shard_size)
    likely, t_like, d_like = _score(engine, grader, rows, replace(base, estimator="likelihood"), args.shard_size)
    naive = _naive_prefix_tokens(engine, sampled, args.k)
    engine.close()

    n = len(rows)
    prefixes = sum(len(r["j_values"]) for r in sampled)
    # Sampled J moves in steps of 1/K; a likelihood change under half a step counts as no change.
    agreement = estimator_agreement([r["j_sample"] for r in sampled], [r["j_likelihood"] for r in likely],
                                    eps=0.5 / args.k)
    result = {
        "model": args.model, "engine": args.engine, "traces": n, "prefixes": prefixes, "k": args.k,
        "sample": {"seconds": t_sample, "seconds_per_trace": t_sample / n,
                   "prover_tokens_per_trace": sum(r["prover_tokens"] for r in sampled) / n,
                   "rollouts": sum(r["prover_rollouts"] for r in sampled),
                   "prefix_tokens_encoded": d_sample[0], "prefix_tokens_requested": d_sample[1],
                   "prefix_tokens_naive": naive, "mean_j_start": sum(r["j_start"] for r in sampled) / n,
                   "mean_j_end": sum(r["j_end"] for r in sampled) / n},
        "likelihood": {"seconds": t_like, "seconds_per_trace": t_like / n, "prefix_tokens_encoded": d_like[0],
                       "mean_j_start": sum(r["j_start"] for r in likely) / n,
                       "mean_j_end": sum(r["j_end"] for r in likely) / n},
        "agreement": agreement,
    }
    s, lk = result["sample"], result["likelihood"]
    comparison_table(f"scoring cost: {n} traces, {prefixes} prefixes, K={args.k} ({args.model}, {args.engine})",
                     ["measure", "sample", "likelihood"], [
                         ["wall seconds", s["seconds"], lk["seconds"]],
                         ["seconds per trace", s["seconds_per_trace"], lk["seconds_per_trace"]],
                         ["prover answer tokens per trace", s["prover_tokens_per_trace"], 0],
                         ["prover rollouts", s["rollouts"], "-"],
                         ["prefix tokens encoded (EngineStats)", s["prefix_tokens_encoded"], lk["prefix_tokens_encoded"]],
                         ["prefix tokens requested (distinct prefixes x K)", s["prefix_tokens_requested"], "-"],
                         ["naive L·K·prefix tokens (nothing shared)", naive, "-"],
                         ["mean J start", s["mean_j_start"], lk["mean_j_start"]],
                         ["mean J end", s["mean_j_end"], lk["mean_j_end"]]])
    comparison_table("sample vs likelihood J", ["measure", "value"],
                     [[k, "-" if v is None else v] for k, v in agreement.items()])
    if s["prefix_tokens_encoded"]:
        console.print(f"prefix reuse: {naive / s['prefix_tokens_encoded']:.1f}x fewer prefix tokens encoded than "
                      f"L·K·prefix; likelihood is {t_sample / max(t_like, 1e-9):.1f}x faster than sampling")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def long_trace(args) -> int:
    """`--long-trace`: segment, plan (score --dry-run) and score with the likelihood estimator one synthetic
    ~16k-token R1 thinking trace of ~45 episodes on the toy-bpe model (real BPE, real R1 template), and
    half of it, so the time per token shows whether the cost grows linearly or quadratically."""
    from mrt_star.console import comparison_table
    from mrt_star.engines.base import load_tokenizer
    from mrt_star.formats.episodes import split_episodes
    from mrt_star.formats.prompts import prompt_messages
    from mrt_star.models import resolve_model
    from mrt_star.options import episode_options
    from mrt_star.schemas import TRACES, arrow_schema
    from mrt_star.score import ScoreConfig, plan, run_score
    from mrt_star.store import Store, read_manifest, read_rows
    from mrt_star.toy.bpe import synthetic_open_trace

    model = resolve_model("toy-bpe")
    tokenizer = load_tokenizer(str(model))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for paragraphs, splits in ((125, 22), (250, 44)):
            trace = synthetic_open_trace(paragraphs, seed=args.seed)
            tokens = len(tokenizer(trace, add_special_tokens=False)["input_ids"])
            row = {"problem_id": f"long-{paragraphs}", "problem": "What is 3+4?", "answer": "7", "format": "open",
                   "sample_index": 0, "prompt": prompt_messages("What is 3+4?", "open"), "completion": trace,
                   "episodes": None, "num_tokens": tokens, "finish_reason": "stop", "final_answer": "7",
                   "correct": True, "first_attempt_correct": None, "engine": "synthetic", "model": str(model),
                   "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768, "seed": args.seed}
            traces = Path(tmp) / f"traces-{paragraphs}"
            store = Store(traces, "generate", {"synthetic": paragraphs}, "synthetic")
            store.write_shard(0, [row], schema=arrow_schema(TRACES))
            store.finish()
            cfg = ScoreConfig(input=str(traces), output=str(Path(tmp) / f"scored-{paragraphs}"), model=str(model),
                              estimator="likelihood", max_splits=splits, seed=args.seed)
            start = time.perf_counter()
            episodes = split_episodes(trace, "open", episode_options(cfg))
            t_split = time.perf_counter() - start
            start = time.perf_counter()
            cost = plan([row], tokenizer, cfg)
            t_plan = time.perf_counter() - start
            start = time.perf_counter()
            out = run_score(cfg)
            t_score = time.perf_counter() - start
            scored = read_rows(out)[0]
            stats = read_manifest(out).get("timings", {}).get("engine_stats", {})
            results.append({"trace_tokens": tokens, "episodes": len(episodes), "segment_seconds": t_split,
                            "dry_run_seconds": t_plan, "dry_run_prefix_tokens": cost["prefix tokens encoded (one prefill per call)"],
                            "dry_run_prover_calls": cost["prover calls (distinct prefixes)"],
                            "score_seconds": t_score, "tokens_encoded": stats.get("prompt_tokens_encoded"),
                            "j_values": len(scored["j_likelihood"]),
                            "mean_j": sum(scored["j_likelihood"]) / len(scored["j_likelihood"])})
    half, full = results
    comparison_table("long open trace: toy-bpe, likelihood estimator, CPU", ["measure", "half", "full"],
                     [[k, half[k], full[k]] for k in full])
    growth = full["score_seconds"] / max(half["score_seconds"], 1e-9)
    token_growth = full["trace_tokens"] / half["trace_tokens"]
    print(f"score time grew {growth:.2f}x for {token_growth:.2f}x the tokens and "
          f"{full['episodes'] / half['episodes']:.2f}x the episodes")
    if args.json:
        Path(args.json).write_text(json.dumps({"long_trace": results}, indent=2) + "\n")
    return 0


# --- estimator agreement against a large-K reference (--agreement) ------------------------------------


def _run_estimator(engine, grader, queries, options):
    """Return (results, seconds, rollouts, answer tokens) of one prover run (each distinct prefix charged once)."""
    from mrt_star.progress.prover import run_prover

    start = time.perf_counter()
    results = run_prover(engine, grader, queries, options)
    seconds = time.perf_counter() - start
    charged = [r for r in results if r.charged]
    rollouts = sum(len(r.answers) for r in charged) + sum(r.logprob is not None for r in charged)
    tokens = sum(a["num_tokens"] for r in charged for a in r.answers)
    if "likelihood" in options.estimators:  # the teacher-forced answer tokens of each pass
        tokens += sum(engine.count_tokens([q.answer + "}" for q, r in zip(queries, results, strict=True)
                                           if r.charged and r.logprob is not None]))
    return results, seconds, rollouts, tokens


def _sign(x: float, eps: float) -> int:
    return 0 if abs(x) <= eps else (1 if x > 0 else -1)


def agreement_vs_reference(args) -> int:
    """Sign of progress from fixed K, adaptive and likelihood J against a K=`--reference-k` sampled reference.

    All prefixes of all traces go to the prover once per estimator (distinct prefixes asked once). A change
    of J within half a K-step (0.5/K) counts as no change for every estimator. "moving" episodes are those
    where the reference J changes. Cost is each estimator's rollouts (samples, or likelihood passes),
    answer tokens (sampled, or teacher-forced) and wall seconds, relative to fixed K.
    """
    from mrt_star.console import comparison_table
    from mrt_star.engines import load_engine
    from mrt_star.grading import Grader
    from mrt_star.models import resolve_model
    from mrt_star.progress.metrics import progress
    from mrt_star.progress.prover import ProverOptions, prover_queries
    from mrt_star.store import read_rows

    with tempfile.TemporaryDirectory() as tmp:
        rows = read_rows(_traces(args, Path(tmp)))
    engine = load_engine(args.engine, resolve_model(args.model))
    grader = Grader(mode="symbolic")
    queries, spans = [], []
    for r in rows:
        qs = prover_queries(list(r["prompt"]), [e["text"] for e in r["episodes"]], r["format"], r["answer"])
        spans.append((len(queries), len(queries) + len(qs)))
        queries += qs
    common = dict(temperature=0.7, max_new_tokens=args.max_new_tokens)
    runs = {
        "reference": ProverOptions(k=args.reference_k, seed=args.seed + 1000, **common),
        f"fixed K={args.k}": ProverOptions(k=args.k, seed=args.seed, **common),
        "adaptive": ProverOptions(k=args.k, seed=args.seed, estimators=("adaptive",), **common),
        "likelihood": ProverOptions(k=args.k, estimators=("likelihood",), **common),
    }
    measured = {name: _run_estimator(engine, grader, queries, opts) for name, opts in runs.items()}
    again = _run_estimator(engine, grader, queries, runs["adaptive"])[0]
    engine.close()
    grader.close()

    def curves(results, likelihood=False):
        values = [r.j_likelihood if likelihood else r.j_sample for r in results]
        return [[v or 0.0 for v in values[a:b]] for a, b in spans]

    eps = 0.5 / args.k
    reference = [p for c in curves(measured["reference"][0]) for p in progress(c)]
    moving = [_sign(p, eps) != 0 for p in reference]
    base_name = f"fixed K={args.k}"
    _, base_seconds, base_rollouts, base_tokens = measured[base_name]
    table, result = [], {"model": args.model, "traces": len(rows), "prefixes": len(queries),
                         "distinct_prefixes": len(set(queries)), "episodes": len(reference),
                         "moving_episodes": sum(moving), "reference_k": args.reference_k, "k": args.k,
                         "adaptive_deterministic": [r.answers for r in again] == [r.answers for r in
                                                                                   measured["adaptive"][0]]}
    for name, (results, seconds, rollouts, tokens) in measured.items():
        if name == "reference":
            continue
        mine = [p for c in curves(results, name == "likelihood") for p in progress(c)]
        same = [_sign(a, eps) == _sign(b, eps) for a, b in zip(mine, reference, strict=True)]
        on_moving = [s for s, m in zip(same, moving, strict=True) if m]
        row = {"sign_agreement": sum(same) / len(same), "sign_agreement_moving": sum(on_moving) / max(1, len(on_moving)),
               "rollouts": rollouts, "answer_tokens": tokens, "seconds": seconds,
               "rollouts_vs_fixed": rollouts / base_rollouts, "tokens_vs_fixed": tokens / max(1, base_tokens),
               "seconds_vs_fixed": seconds / base_seconds}
        result[name] = row
        table.append([name, row["sign_agreement"], row["sign_agreement_moving"], rollouts, tokens,
                      f"{row['rollouts_vs_fixed']:.2f}x", f"{row['tokens_vs_fixed']:.2f}x", f"{row['seconds_vs_fixed']:.2f}x"])
    comparison_table(f"sign(progress) vs K={args.reference_k} reference: {len(rows)} traces, {len(queries)} prefixes "
                     f"({result['distinct_prefixes']} distinct), {len(reference)} episodes ({sum(moving)} moving), "
                     f"{args.model}", ["estimator", "agreement", "agreement (reference moves)", "rollouts",
                                       "answer tokens", "rollouts vs K", "tokens vs K", "seconds vs K"], table)
    print(f"adaptive deterministic with the seed: {result['adaptive_deterministic']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"agreement": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
