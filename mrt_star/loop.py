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

A rule label names a filter rule (`mrt`, `star`, `shortest`) or `mrt-trace`: rule mrt at `mrt_level: trace`,
so the episode- and trace-level MRT rules can run side by side. Folders and `run_summary.json` use the label.

With `equal_sft_size` (the default) every rule after the first is cut to the first rule's SFT row count in
each round, so a comparison is not won by simply training on more rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.config import ConfigError, build_config, check_config, config_to_dict, option
from mrt_star.errors import UserError
from mrt_star.filter import RULES, FilterConfig, run_filter
from mrt_star.finetune import FinetuneConfig, run_finetune
from mrt_star.generate import GenerateConfig, run_generate
from mrt_star.options import ModelOptions, ProblemOptions, StageIO
from mrt_star.score import ScoreConfig, run_score

# The stages of a round: recipe section → (config class, stage function). Keys the loop sets per round.
STAGES: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "generate": (GenerateConfig, run_generate),
    "score": (ScoreConfig, run_score),
    "filter": (FilterConfig, run_filter),
    "finetune": (FinetuneConfig, run_finetune),
}
LOOP_KEYS: dict[str, tuple[str, ...]] = {
    "generate": ("seed", "input", "output", "model"),
    "score": ("seed", "input", "output", "model"),
    "filter": ("seed", "input", "output", "rule", "match_count_of"),
    "finetune": ("seed", "input", "output", "model", "overwrite"),
}
# Rule labels of the run → the filter keys they set. A label's keys win over the recipe's `filter` section, which
# still applies to every other label (e.g. `filter: {mrt_level: trace}` makes plain `mrt` trace-level).
RULE_LABELS: dict[str, dict[str, str]] = {**{rule: {"rule": rule} for rule in RULES},
                                          "mrt-trace": {"rule": "mrt", "mrt_level": "trace"}}
# Problem-source options of the run are the generate stage's too (the loop writes the problems once).
SHARED_WITH_GENERATE = ("split", "subset", "problem_column", "answer_column", "id_column")


@dataclass
class RunConfig(StageIO, ModelOptions, ProblemOptions):
    """Options of `mrt-star run`; per-stage options go in the `generate`/`score`/`filter`/`finetune` maps."""

    output: str | None = option("runs/mrt-star", "run folder (one subfolder per round and stage)")
    rounds: int = option(2, "number of STaR rounds", at_least=1)
    rules: list[str] = option(["mrt"], "filter rule(s); several run side by side from shared round-1 samples; "
                              "mrt-trace is rule mrt at mrt_level trace (whatever `filter` says; its mrt_level "
                              "applies to plain mrt), to compare both MRT levels in one run", choices=tuple(RULE_LABELS))
    generate: dict = option({}, "options of the generate stage (keys of `mrt-star generate --help`; JSON or YAML "
                            "flow text on the command line)")
    score: dict = option({}, "options of the score stage (keys of `mrt-star score --help`)")
    filter: dict = option({}, "options of the filter stage (keys of `mrt-star filter --help`); `rule` is set by each "
                            "rule label")
    finetune: dict = option({}, "options of the finetune stage (keys of `mrt-star finetune --help`)")
    resample_problems: bool = option(False, "draw a fresh toy problem set each round (toy input only)")
    finetune_launcher: str | None = option(None, "accelerate config file (e.g. recipes/accelerate/zero3.yaml): each "
                                           "round's fine-tune runs as an `accelerate launch` subprocess after "
                                           "sampling has freed the GPUs (default: in this process)")
    finetune_processes: int = option(1, "processes (GPUs) of the launched fine-tune; global batch = per-device "
                                     "batch × accumulation × processes", at_least=1)
    equal_sft_size: bool = option(True, "cut every other rule's SFT set to the first rule's row count in each round, "
                                  "so rules are compared at equal SFT sizes")


def stage_config(cfg: RunConfig, stage: str, fixed: dict[str, Any]) -> Any:
    """Return the config of one stage: the recipe's section plus the keys the loop sets, checked in full."""
    cls, _ = STAGES[stage]
    options = getattr(cfg, stage)
    clash = sorted(set(options) & set(LOOP_KEYS[stage]))
    if clash:
        raise ConfigError(f"{stage}: {clash[0]!r} is set by the loop for each round; remove it from the recipe")
    return build_config(cls, {**options, **fixed}, source=f"run recipe, section {stage!r}")


def check_run(cfg: RunConfig, engines_installed: bool = True) -> None:
    """Build and check every stage's config (and the model and engine names) before anything runs.

    A misspelt key anywhere in a recipe fails here, in seconds, instead of after hours of sampling.
    `engines_installed` also checks that the engines the recipe names can be imported here.
    """
    check_config(cfg)
    check_model_name(cfg.model_name())
    placeholder = {"input": "<previous stage>", "output": "<run folder>", "seed": cfg.seed}
    model = {"model": cfg.model_name()}
    stage_config(cfg, "generate", {**placeholder, **model})
    stage_config(cfg, "score", {**placeholder, **model})
    for rule in cfg.rules:
        stage_config(cfg, "filter", {**placeholder, **RULE_LABELS[rule]})
    stage_config(cfg, "finetune", {**placeholder, **model, "overwrite": True})
    from mrt_star.finetune_launch import check_launcher

    check_launcher(cfg.finetune_launcher, cfg.finetune_processes)
    for stage in ("generate", "score"):
        chosen = getattr(cfg, stage).get("engine")
        if chosen == "vllm":
            from mrt_star.engines import VLLM_HINT, vllm_installed

            if engines_installed and not vllm_installed():
                raise UserError(f"{stage}: engine 'vllm' is not installed: {VLLM_HINT}, or use engine: transformers")


def check_model_name(name: str) -> None:
    """Raise UserError for a model that can be neither a toy name, an existing folder nor a Hub id."""
    import re

    from mrt_star.models import TOY_MODELS

    if name in TOY_MODELS or Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")):
        raise UserError(f"model: no such folder {name!r}")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
        raise UserError(f"model: {name!r} is neither {', '.join(TOY_MODELS)}, an existing folder nor a Hub id (ORG/NAME)")


def _call(cfg: RunConfig, stage: str, fixed: dict[str, Any]) -> Path:
    """Run one stage with the recipe's options plus the loop's keys; return its output folder."""
    _, run = STAGES[stage]
    return Path(run(stage_config(cfg, stage, fixed)))


def _finetuned(folder: Path) -> bool:
    return (folder / "training_summary.json").exists()


def _write_problems(cfg: RunConfig, path: Path, seed: int) -> Path:
    from mrt_star.data import load_problems, problem_source

    if path.exists():
        return path
    rows = load_problems(problem_source(cfg, seed=seed))
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
    traces = _call(cfg, "generate", {**io, "input": str(problems), "output": str(base / "traces"), "model": model})
    scored = _call(cfg, "score", {**io, "input": str(traces), "output": str(base / "scored"), "model": model})
    fixed = {**io, "input": str(scored), "output": str(own / "sft"), **RULE_LABELS[rule]}
    first = cfg.rules[0]
    if cfg.equal_sft_size and rule != first:
        fixed["match_count_of"] = str(run_dir / first / f"round-{round_index}" / "sft")
    sft = _call(cfg, "filter", fixed)
    model_dir = own / "model"
    kept = _summary(sft).get("kept_rows")
    if kept == 0:  # nothing to learn from: the next round samples from the same model again
        from mrt_star.console import console

        console.print(f"[yellow]{rule} round {round_index}: the filter kept no traces; the model is carried over unchanged")
        return {"rule": rule, "round": round_index, "model_in": model, "model_out": model,
                "generate": _summary(traces), "score": _summary(scored), "filter": _summary(sft), "finetune": {}}
    if not _finetuned(model_dir):
        fixed = {**io, "input": str(sft), "output": str(model_dir), "model": model, "overwrite": True}
        if cfg.finetune_launcher:
            from mrt_star.finetune_launch import launch_finetune

            launch_finetune(stage_config(cfg, "finetune", fixed), cfg.finetune_launcher, cfg.finetune_processes)
        else:
            _call(cfg, "finetune", fixed)
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
    from mrt_star import output_guard
    from mrt_star.models import resolve_model
    from mrt_star.store import StoreError, resume_or_refuse

    check_run(cfg)
    run_dir = Path(cfg.output or "runs/mrt-star")
    settings = run_dir / "run_config.json"
    output_guard.check_not_file(run_dir)
    if output_guard.has_content(run_dir) and not settings.exists():
        raise StoreError(f"{run_dir} exists and is not an mrt-star run folder; choose another --output")
    output_guard.acquire(run_dir)  # one run per folder until the process exits
    current = config_to_dict(cfg)
    old = {"config": json.loads(settings.read_text())} if settings.exists() else None
    if resume_or_refuse(run_dir, "a run", old, {"config": current}, cfg.overwrite) == "fresh" and settings.exists():
        output_guard.remove_ours(run_dir, "run")  # refuses anything mrt-star did not write
    run_dir.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(current, indent=2) + "\n")
    base_model = resolve_model(cfg.model_name())
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
