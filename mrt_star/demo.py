"""`make demo` / `make experiment`: MRT vs STaR on the embedded toy world, end to end.

The demo builds the toy model, runs the loop for the MRT and STaR rules from the same base (shared
round-1 samples, the same SFT-set size per problem), evaluates base, STaR and MRT on held-out problems
and prints the comparison. The experiment adds the `shortest` control and several seeds and reports
paired differences (MRT − STaR, MRT − shortest) with their spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RECIPES = Path("recipes/toy")
METRICS = ("accuracy", "first_attempt_accuracy", "mean_tokens", "regret")
# The experiment evaluates on more held-out problems: with 60, one model's accuracy swings by ±0.035.
EXPERIMENT_EVAL_LIMIT = 200
# Round-1 filter statistics: does "most progress" pick something other than "shortest correct"?
PICK_STATS = ("mrt_pick_equals_shortest", "mrt_pick_equals_shortest_contested", "contested_problems")


def _load_recipe(name: str) -> dict[str, Any]:
    from mrt_star.config import load_yaml

    return load_yaml(RECIPES / name)


def _fresh_if_stale(stage: Any, cfg: Any) -> Path:
    """Run a demo stage; an output left by an older demo config (e.g. after an upgrade) is replaced, not refused.

    The demo owns its output folder, so `make demo` re-run after a change starts over where the config changed
    and resumes where it did not (the store still refuses folders that are not mrt-star's).
    """
    import dataclasses

    from mrt_star.console import console
    from mrt_star.store import StoreError

    try:
        return Path(stage(cfg))
    except StoreError as err:
        if "different config" not in str(err):
            raise
        console.print(f"[yellow]{cfg.output}: made by an older demo config; starting it over[/yellow]")
        return Path(stage(dataclasses.replace(cfg, overwrite=True)))


def _run_seed(seed: int, rules: list[str], out: Path, fast: bool, eval_limit: int | None = None) -> dict[str, Any]:
    from mrt_star.config import build_config
    from mrt_star.eval.stage import EvalConfig, run_eval
    from mrt_star.loop import RunConfig, run_loop

    run_recipe = _load_recipe("run.yaml")
    eval_recipe = _load_recipe("eval.yaml")
    if fast:  # the micro model and a tiny world: checks the plumbing in a minute, measures nothing
        run_recipe.update(model="toy-micro", limit=8, rounds=1)
        run_recipe["filter"] = {**run_recipe.get("filter", {}), "min_j_end": -1}
        eval_recipe.update(limit=6)
    elif eval_limit:
        eval_recipe.update(limit=eval_limit)
    run_cfg = build_config(RunConfig, {**run_recipe, "rules": rules, "seed": seed,
                                       "output": str(out / f"seed-{seed}" / "run")}, source="recipes/toy/run.yaml")
    run_dir = _fresh_if_stale(run_loop, run_cfg)
    summary = json.loads((run_dir / "run_summary.json").read_text())
    finals = {r["rule"]: r["model_out"] for r in summary if r["round"] == run_cfg.rounds}
    models = [run_cfg.model, *[finals[rule] for rule in rules]]
    eval_cfg = build_config(EvalConfig, {**eval_recipe, "models": models, "labels": ["base", *rules], "seed": 1000 + seed,
                                         "output": str(out / f"seed-{seed}" / "eval")}, source="recipes/toy/eval.yaml")
    eval_dir = _fresh_if_stale(run_eval, eval_cfg)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    first_mrt = next((r["filter"] for r in summary if r["rule"] == "mrt" and r["round"] == 1), {})
    return {"seed": seed, "metrics": metrics, "run_dir": str(run_dir), "eval_dir": str(eval_dir),
            **{key: first_mrt.get(key) for key in PICK_STATS}}


def _metric(metrics: dict[str, Any], label: str, key: str) -> float | None:
    model = metrics.get("models", {}).get(label, {})
    value = model.get(key)
    if isinstance(value, dict):  # e.g. regret per budget: take the largest budget
        value = value[max(value, key=lambda b: float(b))]
    return value if isinstance(value, (int, float)) else None


def paired_differences(results: list[dict[str, Any]], a: str, b: str) -> dict[str, dict[str, float]]:
    """Return mean and standard deviation over seeds of metric(a) − metric(b) for each metric."""
    out = {}
    for key in METRICS:
        diffs = [x - y for r in results
                 if (x := _metric(r["metrics"], a, key)) is not None and (y := _metric(r["metrics"], b, key)) is not None]
        if diffs:
            out[key] = {"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                        "n": len(diffs)}
    return out


def _positive(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the demo (or the experiment) and return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m mrt_star.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", action="store_true", help="add the shortest control and 3 seeds")
    parser.add_argument("--seeds", type=_positive, default=None, help="number of seeds (default 1, experiment 3)")
    parser.add_argument("--output", default="outputs/demo", help="where runs, evaluations and plots go")
    parser.add_argument("--eval-limit", type=_positive, default=None,
                        help="held-out problems per evaluation (default: recipes/toy/eval.yaml's; experiment 200)")
    parser.add_argument("--fast", action="store_true", help="a tiny run for tests (micro-sized budgets)")
    args = parser.parse_args(argv)
    from mrt_star.console import comparison_table, console, quiet_library_progress

    quiet_library_progress()
    from mrt_star.errors import UserError

    rules = ["mrt", "star", "shortest"] if args.experiment else ["mrt", "star"]
    seeds = list(range(args.seeds or (3 if args.experiment else 1)))
    out = Path(args.output) / ("experiment" if args.experiment else "demo")
    start = time.time()
    try:
        eval_limit = args.eval_limit or (EXPERIMENT_EVAL_LIMIT if args.experiment else None)
        results = [_run_seed(seed, rules, out, args.fast, eval_limit) for seed in seeds]
    except UserError as err:
        print(f"mrt-star demo: error: {err}", file=sys.stderr)
        return 1
    labels = ["base", *rules]
    rows = []
    for label in labels:
        row: list[Any] = [label]
        for key in METRICS:
            values = [v for r in results if (v := _metric(r["metrics"], label, key)) is not None]
            row.append(f"{statistics.fmean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")
                       if values else "-")
        rows.append(row)
    comparison_table(f"MRT vs STaR on the toy world ({len(seeds)} seed(s), held-out problems)",
                     ["model", *METRICS], rows)
    report: dict[str, Any] = {"seeds": seeds, "rules": rules, "results": results,
                              "seconds": round(time.time() - start, 1),
                              "paired": {f"mrt-{other}": paired_differences(results, "mrt", other)
                                         for other in rules if other != "mrt"}}
    for name, diffs in report["paired"].items():
        comparison_table(f"paired difference {name} over seeds", ["metric", "mean", "std", "n"],
                         [[k, v["mean"], v["std"], v["n"]] for k, v in diffs.items()])
    for key in PICK_STATS:
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            report[key] = statistics.fmean(values)
    if "mrt_pick_equals_shortest" in report:
        console.print(f"round 1: MRT's pick equals the shortest correct trace for {report['mrt_pick_equals_shortest']:.0%} "
                      f"of problems; {report.get('mrt_pick_equals_shortest_contested') or 0:.0%} of the "
                      f"{report.get('contested_problems') or 0:.0f} problems whose correct traces differ in length")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"done in {report['seconds']:.0f} s; report: {out / 'report.json'}; plots: {results[0]['eval_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
