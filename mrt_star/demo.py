"""`make demo` / `make experiment`: MRT vs STaR on the embedded toy world, end to end.

The demo builds the toy model, runs the loop for the MRT and STaR rules from the same base (shared
round-1 samples, the same SFT-set size per problem), evaluates base, STaR and MRT on held-out problems
and prints the comparison. The experiment runs episode-level MRT, trace-level MRT (`mrt-trace`), STaR and
the `shortest` control over 10 seeds and reports each model's mean and the paired differences (MRT − STaR,
MRT − mrt-trace, MRT − shortest, each rule − base) with 95% intervals (`mrt_star.experiment`).
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
DEMO_RULES = ["mrt", "star"]
EXPERIMENT_RULES = ["mrt", "mrt-trace", "star", "shortest"]
# Ten seeds: with the seed-to-seed spread of MRT − STaR seen so far (sd ≈ 0.045), a 95% t-interval of ± 0.03.
EXPERIMENT_SEEDS = 10
# The experiment evaluates on more held-out problems: with 60, one model's accuracy swings by ±0.035.
EXPERIMENT_EVAL_LIMIT = 200
# Round-1 filter statistics: does "most progress" pick something other than "shortest correct"?
PICK_STATS = ("mrt_pick_equals_shortest", "mrt_pick_equals_shortest_contested", "contested_problems",
              "shortest_dominates_contested")


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
    from mrt_star.experiment import per_problem_accuracy
    from mrt_star.loop import RunConfig, run_loop
    from mrt_star.store import read_rows

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
    # Per-problem accuracy of every model: what the paired bootstrap over held-out problems resamples.
    per_problem = per_problem_accuracy(read_rows(eval_dir))
    return {"seed": seed, "metrics": metrics, "per_problem": per_problem, "run_dir": str(run_dir),
            "eval_dir": str(eval_dir), **{key: first_mrt.get(key) for key in PICK_STATS}}


def _number(key: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:{'+' if signed else ''}.{1 if key == 'mean_tokens' else 3}f}"


def _interval(key: str, low: float | None, high: float | None, signed: bool = False) -> str:
    return "-" if low is None else f"[{_number(key, low, signed)}, {_number(key, high, signed)}]"


def print_statistics(stats: dict[str, Any], seeds: int) -> None:
    """Print the models' means (one table per metric, or one table for a single seed) and the paired differences."""
    from mrt_star.console import comparison_table
    from mrt_star.experiment import METRICS

    models = stats["models"]
    if seeds == 1:
        comparison_table("MRT vs STaR on the toy world (1 seed, held-out problems)", ["model", *METRICS],
                         [[label, *[_number(k, m[k]["mean"]) if k in m else "-" for k in METRICS]]
                          for label, m in models.items()])
    else:
        for key in METRICS:
            boot = key == "accuracy"
            rows = [[label, _number(key, m[key]["mean"]), _interval(key, m[key]["low"], m[key]["high"]),
                     *([_interval(key, *m[key]["bootstrap"])] if boot and "bootstrap" in m[key] else [])]
                    for label, m in models.items() if key in m]
            comparison_table(f"{key}: mean over {seeds} seeds", ["model", "mean", "95% t-interval (seeds)",
                                                                 *(["95% bootstrap (problems)"] if boot else [])], rows)
    rows = []
    for diff in stats["differences"]:
        for key, d in diff["metrics"].items():
            boot = d.get("bootstrap")
            rows.append([f"{diff['a']} − {diff['b']}", key, _number(key, d["mean"], True),
                         _interval(key, d["low"], d["high"], True), _interval(key, *boot, True) if boot else "-",
                         f"{d['positive_seeds']}/{d['n']}"])
    comparison_table(f"paired differences over {seeds} seed(s)", ["difference", "metric", "mean",
                     "95% t-interval (seeds)", "95% bootstrap (problems)", "seeds > 0"], rows)


def _positive(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the demo (or the experiment) and return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m mrt_star.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", action="store_true",
                        help=f"rules {', '.join(EXPERIMENT_RULES)} over {EXPERIMENT_SEEDS} seeds, with 95%% intervals")
    parser.add_argument("--seeds", type=_positive, default=None,
                        help=f"number of seeds (default 1, experiment {EXPERIMENT_SEEDS})")
    parser.add_argument("--output", default="outputs/demo", help="where runs, evaluations and plots go")
    parser.add_argument("--eval-limit", type=_positive, default=None,
                        help="held-out problems per evaluation (default: recipes/toy/eval.yaml's; experiment 200)")
    parser.add_argument("--fast", action="store_true", help="a tiny run for tests (micro-sized budgets)")
    args = parser.parse_args(argv)
    from mrt_star.console import console, quiet_library_progress

    quiet_library_progress()
    from mrt_star.errors import UserError
    from mrt_star.experiment import summarize

    rules = EXPERIMENT_RULES if args.experiment else DEMO_RULES
    seeds = list(range(args.seeds or (EXPERIMENT_SEEDS if args.experiment else 1)))
    out = Path(args.output) / ("experiment" if args.experiment else "demo")
    start = time.time()
    try:
        eval_limit = args.eval_limit or (EXPERIMENT_EVAL_LIMIT if args.experiment else None)
        results = [_run_seed(seed, rules, out, args.fast, eval_limit) for seed in seeds]
    except UserError as err:
        print(f"mrt-star demo: error: {err}", file=sys.stderr)
        return 1
    report: dict[str, Any] = {"seeds": seeds, "rules": rules, "statistics": summarize(results, rules)}
    report["seconds"] = round(time.time() - start, 1)
    print_statistics(report["statistics"], len(seeds))
    for key in PICK_STATS:
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            report[key] = statistics.fmean(values)
    if "mrt_pick_equals_shortest" in report:
        console.print(f"round 1: MRT's pick equals the shortest correct trace for {report['mrt_pick_equals_shortest']:.0%} "
                      f"of problems; {report.get('mrt_pick_equals_shortest_contested') or 0:.0%} of the "
                      f"{report.get('contested_problems') or 0:.0f} problems per seed whose correct traces differ in "
                      f"length; on {report.get('shortest_dominates_contested') or 0:.0%} of those the shortest trace's "
                      "J curve is never below another correct trace's")
    report["results"] = results  # per seed: eval metrics, per-problem accuracy, folders, round-1 pick statistics
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"done in {report['seconds']:.0f} s; report: {out / 'report.json'}; plots: {results[0]['eval_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
