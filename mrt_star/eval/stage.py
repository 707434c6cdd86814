"""`mrt-star eval`: sample, grade and compare one or more models — pass@k, maj@k vs tokens, J curves, regret.

Modes:
- standard: n independent traces per problem (the model decides when to stop).
- linearized: sequential attempts; attempt i is generated with the most recent `window` attempts in
  context (sliding window, so the chain can run past the context length), up to `max_attempts`.
- history: the input is a traces folder; the model continues each trace n times under each history variant
  (`mrt_star.eval.history`); the continuation alone is graded unless `grade_given_too`.

J curve of a sample (ours, prover-free): at the end of episode j (token position = tokens of episodes
0..j), J_j = 1 if the last answer written in the prefix z_{0:j} is correct, else 0 — what the trace
would answer if stopped there. In linearized mode the episodes are the attempts, so this is J after
each attempt. Regret at budget C is the parity definition (`mrt_star.progress.regret`) averaged over
samples, which equals the regret of the mean curve ("accuracy vs tokens"). With `budget_forcing`,
each trace is also cut at the token budgets and a forced answer is sampled there (the prover of
DESIGN.md §3), giving a second, prover-based J curve per trace.

Output folder: parquet shards of per-sample rows (one shard per model and chunk of problems, written
through the store, so a killed run resumes), `metrics.json` ({"models": {label: metrics}}), PNG plots
and a printed comparison table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mrt_star.config import check_config, config_to_dict, option
from mrt_star.errors import UserError
from mrt_star.eval.extrapolate import add_extrapolation
from mrt_star.eval.history import HISTORY_VARIANTS
from mrt_star.eval.sampling import add_budget_forcing, grade_samples, sample_linearized, sample_standard
from mrt_star.eval.summary import compute_metrics, eval_budgets, metric_key
from mrt_star.options import (
    RENAMED,
    STAGE_RENAMED,
    EngineOptions,
    EpisodeOptions,
    FormatOptions,
    GradingOptions,
    ModelOptions,
    ProblemOptions,
    PromptOptions,
    ProverOptions,
    RegretOptions,
    SamplingOptions,
    ScaleOptions,
    StageIO,
)
from mrt_star.schemas import EVAL_SAMPLES, arrow_schema

MODES = ("standard", "linearized", "history")
SHARDS_PER_MODEL = 10_000  # shard index = model index × this + chunk index


@dataclass
class EvalConfig(StageIO, ModelOptions, ProblemOptions, FormatOptions, PromptOptions, SamplingOptions,
                 ProverOptions, GradingOptions, EngineOptions, EpisodeOptions, RegretOptions,
                 ScaleOptions):
    """Options of `mrt-star eval`."""

    RENAMED: ClassVar[dict[str, str]] = {**RENAMED, **STAGE_RENAMED["eval"]}

    seed: int = option(1000, "sampling seed; with toy input also the problem seed (not the training seed 0, "
                       "so the problems are held out)")
    models: list[str] = option(["toy"], "models to compare (comma-separated or a YAML list): 'toy', 'toy-micro', "
                               "folders or Hub ids; `--model` (one, or comma-separated) is used when this is "
                               "left at its default")
    labels: list[str] = option([], "display names of the models, in order (default: derived from the names)")
    mode: str = option("standard", "standard: n independent traces; linearized: sequential attempts with a "
                       "sliding window; history: continue each trace of a traces folder under --history-variants",
                       choices=MODES)
    history_variants: list[str] = option(["restart"], "history mode: what the model is given before it continues "
                                         "(comma-separated): restart, backtrack-shared, backtrack-unshared, "
                                         "no-rollout (mrt_star/eval/history.py)", choices=HISTORY_VARIANTS)
    grade_given_too: bool = option(False, "parity flag, history mode: grade the given prefix + continuation (an "
                                   "answer in the prefix counts) instead of the continuation alone")
    k_values: list[int] = option([1, 2, 4], "k values for pass@k (maj@k is reported for every k up to n)",
                                 at_least=1)
    maj_mode: str = option("expected", "maj@k over all k-subsets of the n samples (expected) or the first k (first)",
                           choices=("expected", "first"))
    window: int = option(2, "linearized: most recent attempts kept in context", at_least=0)
    budgets: list[int] = option([], "token budgets for regret (default: 1/4, 1/2 and all of the token cap)",
                                at_least=1)
    budget_forcing: bool = option(False, "also cut each trace at the budgets and force an answer (prover J curve)")
    extrapolate: bool = option(False, "budget-forcing extrapolation: extend each trace's thinking with the "
                               "extension word and force answers at --extrapolation-budgets (past the training "
                               "length too)")
    extrapolation_budgets: list[int] = option([], "extrapolation: thinking-token budgets to force answers at "
                                              "(default: 1/2, 1, 2 and 4 times --max-new-tokens)", at_least=1)
    extension_word: str = option("Wait", "extrapolation: the word appended to continue a trace past its end")
    max_extensions: int = option(8, "extrapolation: at most this many extensions per trace", at_least=0)
    shard_size: int = option(16, "problems per shard (the unit a killed run resumes at)", at_least=1)
    plots: bool = option(True, "write PNG plots")


# --- inputs -------------------------------------------------------------------------------------------


def model_names(cfg: EvalConfig) -> list[str]:
    """Return the models to evaluate: `models`, or `--model` when `models` is left at its default."""
    if cfg.models == ["toy"] and cfg.model and cfg.model != "toy":
        # `--model a,b` works too (a comma never appears in a model id or in our folder names).
        return [m.strip() for m in cfg.model.split(",") if m.strip()] if not Path(cfg.model).exists() else [cfg.model]
    if not cfg.models:
        raise UserError("models: give at least one model")
    return list(cfg.models)


def model_labels(cfg: EvalConfig, names: list[str]) -> list[str]:
    """Return one unique display label per model."""
    if cfg.labels:
        if len(cfg.labels) != len(names):
            raise UserError(f"labels: {len(cfg.labels)} labels for {len(names)} models")
        if len(set(cfg.labels)) != len(cfg.labels):
            raise UserError("labels: must be unique")
        return list(cfg.labels)
    labels: list[str] = []
    for name in names:
        path = Path(name)
        # A loop's model folder RUN/<rule>/round-k/model is named by rule and round.
        base = name if not path.exists() else (
            f"{path.parent.parent.name}/{path.parent.name}" if path.name == "model" else path.name)
        label, i = base, 2
        while label in labels:
            label, i = f"{base}-{i}", i + 1
        labels.append(label)
    return labels


def _model_fingerprint(path: str) -> str:
    """Return a short hash of a model folder's weight files (size and mtime), or of the id for Hub models."""
    folder = Path(path)
    h = hashlib.sha256(path.encode())
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _default_template(cfg: EvalConfig) -> str:
    from mrt_star.formats.prompts import DEFAULT_TEMPLATE

    if cfg.prompt_template != "auto":
        return cfg.prompt_template
    source = cfg.input or "toy"
    return f"toy-{cfg.format}" if source == "toy" or source.startswith("toy:") else DEFAULT_TEMPLATE[cfg.format]


def load_items(cfg: EvalConfig) -> list[dict[str, Any]]:
    """Return what is evaluated: problems ({item_id, problem_id, problem, answer, prompt}) or, in history
    mode, traces to continue (also with `given` — the first episode — and its token count)."""
    from mrt_star.formats.prompts import prompt_messages

    if cfg.mode != "history":
        from mrt_star.data import load_problems, problem_source

        problems = load_problems(problem_source(cfg))
        template = _default_template(cfg)
        return [{"item_id": p["problem_id"], "problem_id": p["problem_id"], "problem": p["problem"],
                 "answer": p["answer"], "prompt": prompt_messages(p["problem"], template)} for p in problems]
    from mrt_star.eval.history import history_items
    from mrt_star.options import episode_options
    from mrt_star.store import read_rows, read_stage_input

    if not cfg.history_variants:
        raise UserError("history_variants: give at least one")
    manifest = read_stage_input(cfg.input, ("generate", "score"), "eval --mode history",
                                ("problem_id", "problem", "answer", "prompt", "completion"))
    rows = read_rows(cfg.input)
    if not rows:
        raise UserError(f"input: {cfg.input} ({manifest.get('stage')}) has no traces to continue")
    rows = rows[: cfg.limit] if cfg.limit else rows
    return history_items(rows, list(cfg.history_variants), cfg.format, episode_options(cfg))


# --- the stage ----------------------------------------------------------------------------------------


class EvalShards:
    """A worker's job in eval: one model's engine that samples and grades a shard of items into rows."""

    def __init__(self, cfg: EvalConfig, model_path: str, label: str, grader: Any = None):
        from mrt_star.engines import load_engine
        from mrt_star.grading import Grader

        self.cfg, self.model_path, self.label = cfg, model_path, label
        self.own_grader = grader is None  # a Ray worker grades with its own single process
        self.grader = grader or Grader(**cfg.grader_kwargs(), workers=1)
        self.engine = load_engine(cfg.engine, model_path, **cfg.engine_kwargs(seed=cfg.seed))

    def run(self, shard: int, part: list[dict]) -> list[dict[str, Any]]:
        cfg, engine, grader = self.cfg, self.engine, self.grader
        seed = cfg.seed + shard % SHARDS_PER_MODEL  # from the run seed and the chunk alone: same rows on any worker
        sampler = sample_linearized if cfg.mode == "linearized" else sample_standard
        rows = grade_samples(engine, grader, cfg, sampler(engine, cfg, part, seed), self.label, self.model_path)
        if cfg.budget_forcing:
            add_budget_forcing(engine, grader, cfg, rows, seed)
        if cfg.extrapolate:
            add_extrapolation(engine, grader, cfg, rows, seed)
        return rows

    def close(self) -> None:
        self.engine.close()
        if self.own_grader:
            self.grader.close()


def _evaluate_model(cfg: EvalConfig, store: Any, index: int, name: str, label: str, items: list[dict],
                    grader: Any, progress: Any, task: Any) -> list[dict[str, Any]]:
    """Sample and grade one model's missing shards; return all its rows (finished shards are reused)."""
    from mrt_star.models import resolve_model
    from mrt_star.store import chunk

    model_path = resolve_model(name)
    pieces = list(chunk(items, cfg.shard_size))
    todo = [(i, part) for i, part in pieces if not store.is_done(index * SHARDS_PER_MODEL + i)]
    progress.update(task, advance=len(pieces) - len(todo))
    if todo:
        def write(shard: int, rows: list[dict[str, Any]]) -> None:
            store.write_shard(shard, rows, schema=arrow_schema(EVAL_SAMPLES))
            progress.update(task, advance=1, info=f"{label}: shard {shard % SHARDS_PER_MODEL + 1}/{len(pieces)}")

        jobs = [(index * SHARDS_PER_MODEL + i, part) for i, part in todo]
        if cfg.backend == "ray":
            from mrt_star.scale import WorkerPool

            with WorkerPool(cfg, "mrt_star.eval.stage:EvalShards", (cfg, model_path, label), f"eval-{index}") as pool:
                pool.run(jobs, write)
                store.manifest.setdefault("timings", {})["scale"] = pool.stats()
        else:
            worker = EvalShards(cfg, model_path, label, grader)
            try:
                for shard, part in jobs:
                    write(shard, worker.run(shard, part))
            finally:
                worker.close()
    return [r for r in _read_shards(store.path) if r["model"] == label]


def _read_shards(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from mrt_star.store import shard_files

    rows: list[dict[str, Any]] = []
    for shard in shard_files(path):
        rows.extend(pq.read_table(shard).to_pylist())
    return rows


def run_eval(cfg: EvalConfig) -> Path:
    """Return the output folder with per-sample shards, metrics.json, plots; print the comparison table."""
    from mrt_star.console import comparison_table, console, stage_progress
    from mrt_star.models import resolve_model
    from mrt_star.scale import check_scale, ray_session, without_scale
    from mrt_star.store import Store, fingerprint

    check_config(cfg)
    names = model_names(cfg)
    labels = model_labels(cfg, names)
    items = load_items(cfg)
    budgets = eval_budgets(cfg)
    if not items:
        raise UserError("input: nothing to evaluate")
    out = Path(cfg.output or "outputs/eval")
    paths = [resolve_model(name) for name in names]
    check_scale(cfg)
    config = {**without_scale(config_to_dict(cfg)), "resolved_models": paths,
              "model_fingerprints": [_model_fingerprint(p) for p in paths], "template_used": _default_template(cfg)}
    source = cfg.input if cfg.mode == "history" else {"items": [(it["item_id"], it["answer"]) for it in items]}
    store = Store(out, "eval", config, fingerprint(source), overwrite=cfg.overwrite)

    from mrt_star.grading import Grader

    results: dict[str, dict[str, Any]] = {}
    shards_per_model = -(-len(items) // cfg.shard_size)
    cluster = ray_session(cfg) if cfg.backend == "ray" else contextlib.nullcontext()
    with cluster, Grader(**cfg.grader_kwargs()) as grader, stage_progress() as progress:
        task = progress.add_task("eval", total=shards_per_model * len(names), info="")
        for index, (name, label) in enumerate(zip(names, labels, strict=True)):
            rows = _evaluate_model(cfg, store, index, name, label, items, grader, progress, task)
            results[label] = compute_metrics(rows, cfg)

    metrics = {"mode": cfg.mode, "format": cfg.format, "budgets": budgets, "labels": labels, "models": results,
               "j_definition": "J_j = 1 if the last answer in the trace prefix through episode j is correct; regret "
                               "is the parity token-axis definition averaged over samples"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    plots = []
    if cfg.plots:
        from mrt_star.eval.plots import plot_all

        plots = [p.name for p in plot_all(results, out)]
    top = metric_key(max(budgets))
    n_max = str(max(m["n"] for m in results.values()))
    rows = [[label, m["accuracy"], m["first_attempt_accuracy"], m["maj@k"].get(n_max, "-"),
             m["pass@k"].get(max(m["pass@k"], key=int), "-") if m["pass@k"] else "-",
             m["mean_tokens"], m["regret"][top]] for label, m in results.items()]
    comparison_table(f"mrt-star eval ({cfg.mode}, {len(items)} items × {cfg.n} samples) → {out}",
                     ["model", "accuracy", "first-attempt acc", f"maj@{n_max}", "pass@max k", "mean tokens",
                      f"regret@{top}"], rows)
    summary = {label: {k: m[k] for k in ("accuracy", "first_attempt_accuracy", "mean_tokens")} | {"regret": m["regret"]}
               for label, m in results.items()}
    store.finish(summary=summary, counts={"models": len(names), "items": len(items), "plots": plots})
    console.print(f"metrics: {out / 'metrics.json'}")
    return out
