"""Grading throughput and accuracy: `Grader.grade_many` against math-verify called directly.

For each labelled set (tests/data/grading_cases.jsonl: short boxed answers; grading_real_outputs.jsonl: what
Llama-3, Qwen2.5 and R1 really write, unboxed answers and free-form references included) it repeats the
cases to --pairs (completion, reference) pairs, and grades the distinct pairs and then the repeated ones
three ways: math-verify's `parse` + `verify` per pair in this process on the main thread (its SIGALRM timeouts), a new `Grader` (worker
start-up and its result cache included), and a warm `Grader` with the result cache off. Prints pairs/s,
the ratio to direct math-verify on the same pairs, and accuracy against the labels.

    python benchmarks/grading.py                      # 3000 pairs, 2 workers
    python benchmarks/grading.py --pairs 1000 --workers 1
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SETS = {"cases": DATA / "grading_cases.jsonl", "real": DATA / "grading_real_outputs.jsonl"}


def _cases(path: Path) -> list[dict]:
    """Return the labelled rows of one set, the label under "correct" (the real set calls it "label")."""
    rows = [json.loads(line) for line in path.open()]
    return [{**r, "correct": r.get("correct", r.get("label"))} for r in rows]


def _workload(cases: list[dict], n: int) -> tuple[list[tuple[str, str]], list[bool]]:
    picked = [cases[i % len(cases)] for i in range(n)]
    return [(c["completion"], c["reference"]) for c in picked], [c["correct"] for c in picked]


def _direct(pairs: list[tuple[str, str]]) -> tuple[list[bool], float]:
    """Return math-verify's verdicts and seconds, the way its README calls it (gold boxed, default configs)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    start = time.perf_counter()
    verdicts = [bool(verify(parse("\\boxed{" + ref + "}"), parse(completion))) for completion, ref in pairs]
    return verdicts, time.perf_counter() - start


def _grader(pairs: list[tuple[str, str]], workers: int, cache: bool, warm: bool) -> tuple[list[bool], float, dict]:
    """Return a fresh Grader's verdicts, seconds and counters; unless `warm`, worker start-up is timed too."""
    from mrt_star.grading import Grader

    with Grader(workers=workers, cache_size=100_000 if cache else 0) as grader:
        if warm:
            grader.grade_many([("\\boxed{x+1}", "1+x")] * 2 * workers)  # start the workers outside the clock
        start = time.perf_counter()
        results = grader.grade_many(pairs)
        seconds = time.perf_counter() - start
        return [r.correct for r in results], seconds, grader.cache_info()


def _accuracy(verdicts: list[bool], labels: list[bool]) -> float:
    return sum(v == y for v, y in zip(verdicts, labels, strict=True)) / len(labels)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sets", default="cases,real", help="labelled sets to run, of: " + ", ".join(SETS))
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)  # wide enough for the table even when the output is not a terminal

    table, counters, sizes = [], {}, {}
    for set_name in args.sets.split(","):
        cases = _cases(SETS[set_name])
        distinct, distinct_labels = _workload(cases, len(cases))
        pairs, labels = _workload(cases, args.pairs)
        sizes[set_name] = {"distinct": len(distinct), "pairs": len(pairs)}
        console.print(f"{set_name}: grading {len(distinct)} distinct labelled pairs, then {len(pairs)} pairs repeating them")
        # Distinct first: math-verify keeps its own caches, so the repeated workload would warm them.
        for workload, todo, truth in (("distinct", distinct, distinct_labels), ("repeated", pairs, labels)):
            direct, t_direct = _direct(todo)
            rows = [("math-verify direct", direct, t_direct, "-")]
            for name, cache, warm in (("Grader, cold", True, False), ("Grader, warm, no cache", False, True)):
                verdicts, seconds, info = _grader(todo, args.workers, cache, warm)
                rows.append((name, verdicts, seconds, info["timeouts"]))
                counters[f"{set_name} {workload}: {name}"] = info
            table += [[set_name, workload, name, f"{len(todo) / t:.0f}", f"{t_direct / t:.2f}x", f"{t:.2f}",
                       f"{_accuracy(v, truth):.1%}", to] for name, v, t, to in rows]
    out = Table(title=f"grading throughput, {args.workers} workers", title_justify="left")
    for i, column in enumerate(["set", "pairs", "grader", "pairs/s", "vs direct", "seconds", "accuracy", "timeouts"]):
        out.add_column(column, justify="left" if i < 3 else "right")
    for row in table:
        out.add_row(*map(str, row))
    console.print(out)
    console.print("math-verify direct: parse + verify per pair, this process, main thread (SIGALRM timeouts).\n"
                  "Grader, cold: a new Grader; worker start-up and its result cache included.\n"
                  "Grader, warm, no cache: workers started outside the clock, result cache off.")
    result = {"sets": sizes, "workers": args.workers, "counters": counters,
              "rows": [dict(zip(["set", "workload", "grader", "pairs_per_s", "ratio", "seconds", "accuracy", "timeouts"],
                                r, strict=True)) for r in table]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
