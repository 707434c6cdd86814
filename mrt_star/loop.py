"""`mrt-star run`: the multi-round MRT-STaR loop — generate, score, filter, fine-tune, repeat.

Round k samples with round k−1's model. Several rules can run side by side from the same base: round 1's
traces and scores are shared (same samples for every rule), then each rule keeps its own data and
models. Every stage writes through the store, so a killed run re-run with the same command continues at
the stage (and shard) where it stopped.

Layout of `--output RUN`:
    RUN/problems.jsonl            the problems every round samples
    RUN/round-1/{traces,scored}   shared by all rules
    RUN/<rule>/round-1/{sft,model}
    RUN/<rule>/round-k/{traces,scored,sft,model}   for k ≥ 2
    RUN/run_summary.json          the closing table's numbers

With `equal_sft_size` (the default) every rule after the first is cut to the first rule's SFT row count in
each round, so a comparison is not won by simply training on more rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.config import StageIO, build_config, config_to_dict, option
from mrt_star.errors import UserError

RULES = ("mrt", "star", "shortest")


@dataclass
class RunConfig(StageIO):
    """Options of `mrt-star run`; per-stage options go in the `generate`/`score`/`filter`/`finetune` maps."""

    output: str | None = option("runs/mrt-star", "run folder (one subfolder per round and stage)")
    rounds: int = option(2, "number of STaR rounds")
    rules: list[str] = option(["mrt"], "filter rule(s); several run side by side from shared round-1 samples",
                              choices=RULES)
    generate: dict = option({}, "options of the generate stage (keys of `mrt-star generate --help`)")
    score: dict = option({}, "options of the score stage (keys of `mrt-star score --help`)")
    filter: dict = option({}, "options of the filter stage (keys of `mrt-star filter --help`); `rule` is set per run")
    finetune: dict = option({}, "options of the finetune stage (keys of `mrt-star finetune --help`)")
    resample_problems: bool = option(False, "draw a fresh toy problem set each round (toy input only)")
    equal_sft_size: bool = option(True, "cut every other rule's SFT set to the first rule's row count in each round, "
                                  "so rules are compared at equal SFT sizes")


def _stage(module: str, config: str, function: str):
    import importlib

    mod = importlib.import_module(module)
    return getattr(mod, config), getattr(mod, function)


def _call(module: str, config: str, function: str, options: dict[str, Any], fixed: dict[str, Any], where: str) -> Path:
    """Build a stage config from the recipe's options plus the loop's fixed keys, run it, return its output."""
    cls, run = _stage(module, config, function)
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise UserError(f"{where}: {clash[0]!r} is set by the loop for each round; remove it from the recipe")
    cfg = build_config(cls, {**options, **fixed}, source=where)
    return Path(run(cfg))


def _finetuned(folder: Path) -> bool:
    return (folder / "training_summary.json").exists()


def _write_problems(cfg: RunConfig, path: Path, seed: int) -> Path:
    from mrt_star.data import ProblemSource, load_problems

    if path.exists():
        return path
    rows = load_problems(ProblemSource(source=cfg.input or "toy", limit=cfg.limit, seed=seed))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    tmp.replace(path)
    return path


def _summary(folder: Path) -> dict[str, Any]:
    from mrt_star.store import read_manifest

    try:
        return read_manifest(folder).get("summary", {})
    except UserError:
        return {}


def run_round(cfg: RunConfig, rule: str, round_index: int, model: str, problems: Path, run_dir: Path) -> dict:
    """Run one round of one rule and return its numbers; skips stages whose outputs are complete."""
    shared = round_index == 1
    base = run_dir / "round-1" if shared else run_dir / rule / f"round-{round_index}"
    own = run_dir / rule / f"round-{round_index}"
    io = {"seed": cfg.seed + round_index - 1}
    traces = _call("mrt_star.generate", "GenerateConfig", "run_generate", cfg.generate,
                   {**io, "input": str(problems), "output": str(base / "traces"), "model": model}, "generate")
    scored = _call("mrt_star.score", "ScoreConfig", "run_score", cfg.score,
                   {**io, "input": str(traces), "output": str(base / "scored"), "model": model}, "score")
    fixed = {**io, "input": str(scored), "output": str(own / "sft"), "rule": rule}
    first = cfg.rules[0]
    if cfg.equal_sft_size and rule != first:
        fixed["match_count_of"] = str(run_dir / first / f"round-{round_index}" / "sft")
    sft = _call("mrt_star.filter", "FilterConfig", "run_filter", cfg.filter, fixed, "filter")
    model_dir = own / "model"
    kept = _summary(sft).get("kept_rows")
    if kept == 0:  # nothing to learn from: the next round samples from the same model again
        from mrt_star.console import console

        console.print(f"[yellow]{rule} round {round_index}: the filter kept no traces; the model is carried over unchanged")
        return {"rule": rule, "round": round_index, "model_in": model, "model_out": model,
                "generate": _summary(traces), "score": _summary(scored), "filter": _summary(sft), "finetune": {}}
    if not _finetuned(model_dir):
        _call("mrt_star.train", "FinetuneConfig", "run_finetune", cfg.finetune,
              {**io, "input": str(sft), "output": str(model_dir), "model": model, "overwrite": True}, "finetune")
    train = json.loads((model_dir / "training_summary.json").read_text())
    return {"rule": rule, "round": round_index, "model_in": model, "model_out": str(model_dir),
            "generate": _summary(traces), "score": _summary(scored), "filter": _summary(sft), "finetune": train}


def _table(results: list[dict[str, Any]]) -> None:
    from mrt_star.console import comparison_table

    def pick(d: dict, *keys: str) -> Any:
        for key in keys:
            if key in d:
                return d[key]
        return "-"

    rows = [[r["rule"], r["round"], pick(r["generate"], "final_accuracy", "accuracy"),
             pick(r["generate"], "first_attempt_accuracy"), pick(r["score"], "mean_j_end"),
             pick(r["filter"], "kept_rows", "kept"), pick(r["finetune"], "final_loss")] for r in results]
    comparison_table("mrt-star run: per round", ["rule", "round", "trace acc", "first-attempt acc",
                                                  "mean J end", "SFT rows", "final loss"], rows)


def run_loop(cfg: RunConfig) -> Path:
    """Run `rounds` rounds for each rule and return the run folder (resumable at stage granularity)."""
    from mrt_star.models import resolve_model

    if cfg.rounds < 1:
        raise UserError(f"rounds: must be at least 1, got {cfg.rounds}")
    run_dir = Path(cfg.output or "runs/mrt-star")
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = run_dir / "run_config.json"
    current = config_to_dict(cfg)
    if settings.exists() and not cfg.overwrite:
        old = json.loads(settings.read_text())
        if {k: v for k, v in old.items() if k != "overwrite"} != {k: v for k, v in current.items() if k != "overwrite"}:
            raise UserError(f"{run_dir} holds a run with a different config; pass --overwrite or another --output")
    elif settings.exists() and cfg.overwrite:
        import shutil

        shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    settings.write_text(json.dumps(current, indent=2) + "\n")
    base_model = resolve_model(cfg.model)
    results = []
    models = {rule: base_model for rule in cfg.rules}
    for round_index in range(1, cfg.rounds + 1):
        seed = cfg.seed + (round_index - 1 if cfg.resample_problems else 0)
        problems = _write_problems(cfg, run_dir / f"problems-round-{round_index}.jsonl" if cfg.resample_problems
                                   else run_dir / "problems.jsonl", seed)
        for rule in cfg.rules:
            result = run_round(cfg, rule, round_index, models[rule], problems, run_dir)
            models[rule] = result["model_out"]
            results.append(result)
    (run_dir / "run_summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    _table(results)
    return run_dir
