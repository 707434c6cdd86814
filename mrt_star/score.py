"""`mrt-star score`: cut traces into episodes and measure each episode's progress with a prover.

Reads a finished `generate` output, re-cuts every trace into episodes with this stage's options, asks
the prover for J after every prefix (all prefixes of a shard in one batched engine call), and writes
the trace rows with the `schemas.SCORED` columns added: the J curve on the token axis, per-episode
progress, cumulative progress, normalized regret at the given budgets, and every prover answer.
Shards hold whole problems (so a problem's traces share their empty-prefix answers) and are
resumable: a killed run re-run with the same command continues at the first unfinished shard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mrt_star.config import check_config, config_to_dict, option
from mrt_star.formats.episodes import split_episodes
from mrt_star.options import (
    RENAMED,
    STAGE_RENAMED,
    EngineOptions,
    EpisodeOptions,
    EstimatorOptions,
    GradingOptions,
    ModelOptions,
    ProverOptions,
    RegretOptions,
    ScaleOptions,
    StageIO,
    episode_options,
)
from mrt_star.progress.prover import ProverOptions as ProverSettings
from mrt_star.progress.prover import ProverQuery, prover_queries, run_prover

NEEDED_COLUMNS = ("problem_id", "answer", "format", "prompt", "completion")


@dataclass
class ScoreConfig(StageIO, ModelOptions, ProverOptions, EstimatorOptions, EpisodeOptions, GradingOptions,
                  EngineOptions, ScaleOptions, RegretOptions):
    """Options of `mrt-star score` (prover, estimator, episodes, regret budgets and axis, engine)."""

    RENAMED: ClassVar[dict[str, str]] = {**RENAMED, **STAGE_RENAMED["score"], "temperature": "prover_temperature",
                                         "top_p": "prover_top_p", "max_new_tokens": "prover_max_new_tokens"}

    compare_estimators: bool = option(False, "also run the other estimator and report their agreement")
    budgets: list[int] = option([128, 256, 512], "token budgets C for normalized regret", at_least=1)
    shard_size: int = option(64, "traces per shard; all their prefixes go to the engine in one call", at_least=1)
    dry_run: bool = option(False, "print the number of prover calls and the tokens they would spend; write nothing")

    def prover_settings(self, seed: int | None = None) -> ProverSettings:
        """Return the prover settings (both estimators when comparing them)."""
        sampled = "adaptive" if self.estimator == "adaptive" else "sample"
        estimators = (sampled, "likelihood") if self.compare_estimators else (self.estimator,)
        return ProverSettings(k=self.prover_k, temperature=self.prover_temperature, top_p=self.prover_top_p,
                              max_new_tokens=self.prover_max_new_tokens, estimators=estimators,
                              grade_prefix_too=self.grade_prefix_too, share_prefixes=self.share_prefixes,
                              seed=seed)


# --- input ------------------------------------------------------------------------------------------


def check_input(cfg: ScoreConfig) -> dict[str, Any]:
    """Return the input's manifest after checking it is a finished generate output with trace columns."""
    from mrt_star.store import read_stage_input

    check_config(cfg)
    return read_stage_input(cfg.input, ("generate",), "score", NEEDED_COLUMNS)


def problem_shards(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Return rows packed into shards of about `size` traces that never split a problem's traces."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["problem_id"], []).append(row)
    shards, current = [], []
    for group in groups.values():
        if current and len(current) + len(group) > size:
            shards.append(current)
            current = []
        current.extend(group)
    if current:
        shards.append(current)
    return shards


# --- scoring ----------------------------------------------------------------------------------------


def trace_episodes(engine_or_counter: Any, row: dict[str, Any], options: EpisodeOptions) -> list[dict[str, Any]]:
    """Return the trace's episodes as [{text, num_tokens}] under `options` (token counts reused when the cut
    matches the generate stage's)."""
    texts = split_episodes(row["completion"], row["format"], options)
    old = row.get("episodes") or []
    if [e["text"] for e in old] == texts and all(e.get("num_tokens") is not None for e in old):
        return [{"text": e["text"], "num_tokens": int(e["num_tokens"])} for e in old]
    counts = engine_or_counter.count_tokens(texts)
    return [{"text": t, "num_tokens": int(n)} for t, n in zip(texts, counts, strict=True)]


def score_rows(rows: list[dict[str, Any]], engine: Any, grader: Any, cfg: ScoreConfig,
               seed: int | None = None) -> list[dict[str, Any]]:
    """Return `rows` with the SCORED columns added; every prefix of every row goes to ONE prover call."""
    from mrt_star.progress.metrics import trace_metrics

    options = cfg.prover_settings(seed)
    episodes_cut = episode_options(cfg)
    queries: list[ProverQuery] = []
    spans, episodes_of = [], []
    for row in rows:
        episodes = trace_episodes(engine, row, episodes_cut)
        episodes_of.append(episodes)
        qs = prover_queries(list(row["prompt"]), [e["text"] for e in episodes], row["format"], row["answer"])
        spans.append((len(queries), len(queries) + len(qs)))
        queries.extend(qs)
    results = run_prover(engine, grader, queries, options)
    counted: dict[Any, int] = {}  # parity axis: token counts of each distinct prompt and force text
    out = []
    for row, episodes, (a, b) in zip(rows, episodes_of, spans, strict=True):
        mine = results[a:b]
        j_sample = _held([r.j_sample for r in mine]) if {"sample", "adaptive"} & set(options.estimators) else None
        j_likelihood = _held([r.j_likelihood for r in mine]) if "likelihood" in options.estimators else None
        j_values = j_likelihood if cfg.estimator == "likelihood" else j_sample
        axis = regret_axis(engine, row, mine, cfg, counted)
        metrics = trace_metrics(j_values, [e["num_tokens"] for e in episodes], cfg.budgets, **axis)
        charged = [r for r in mine if r.charged]
        out.append({
            **row,
            "episodes": episodes,
            **metrics,
            "estimator": cfg.estimator,
            "j_sample": j_sample,
            "j_likelihood": j_likelihood,
            "prover_answers": [r.answers for r in mine],
            "prover_rollouts": sum(len(r.answers) for r in charged) + sum(r.logprob is not None for r in charged),
            "prover_tokens": sum(a["num_tokens"] for r in charged for a in r.answers),
            "prover_prompt_tokens": sum(r.prompt_tokens for r in charged),
            "prover_skipped_prefixes": sum(r.skipped for r in mine),
        })
    return out


def regret_axis(engine: Any, row: dict[str, Any], results: list[Any], cfg: ScoreConfig,
                counted: dict[Any, int]) -> dict[str, Any]:
    """Return `trace_metrics`' axis arguments for one trace: none on the thinking axis; on the parity axis
    the rendered prompt's tokens, the force text's tokens and the mean forced-answer tokens per prefix.

    The prompt is the prover prefill's part before the trace (as eval counts it); answers count 0 under
    the likelihood estimator (nothing is sampled).
    """
    if cfg.regret_axis == "thinking":
        return {}
    from mrt_star.engines.base import Request
    from mrt_star.formats.prompts import force_text, think_opening

    prompt = tuple(tuple(sorted(m.items())) for m in row["prompt"])
    stop = force_text(row["format"], row["format"] != "open" or bool(think_opening(row["completion"])))
    for key, text in ((prompt, None), (stop, stop)):
        if key not in counted:
            text = engine.render(Request(list(row["prompt"]))) if text is None else text
            counted[key] = engine.count_tokens([text])[0]
    answers = [0.0 if cfg.estimator == "likelihood" or not r.answers else
               sum(a["num_tokens"] for a in r.answers) / len(r.answers) for r in results]
    return {"axis": "parity", "prompt_tokens": counted[prompt], "stop_tokens": counted[stop], "answer_tokens": answers}


def _held(values: list[float | None]) -> list[float]:
    """Return J values with a skipped prefix (too long for the context) holding the J before it (0 at first)."""
    out, last = [], 0.0
    for v in values:
        last = last if v is None else float(v)
        out.append(last)
    return out


def scored_schema(input_schema: Any) -> Any:
    """Return the output arrow schema: the input's trace columns plus typed SCORED columns.

    Explicit types keep every shard's schema the same (a shard where a column happens to be all null
    would otherwise get a null type and break loading all shards as one dataset).
    """
    import pyarrow as pa

    from mrt_star.schemas import SCORED, TRACES, arrow_type

    added = {name: arrow_type(col.type) for name, col in SCORED.items() if name not in TRACES or name == "episodes"}
    fields = [f if f.name not in added else pa.field(f.name, added[f.name]) for f in input_schema]
    fields += [pa.field(k, v) for k, v in added.items() if k not in input_schema.names]
    return pa.schema(fields)


def _input_schema(path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrt_star.store import shard_files

    return pa.unify_schemas([pq.read_schema(p) for p in shard_files(path)])


def _load_rows(cfg: ScoreConfig) -> list[dict[str, Any]]:
    from mrt_star.store import read_rows

    rows = read_rows(cfg.input)
    return rows[: cfg.limit] if cfg.limit is not None else rows


def _prover_model(cfg: ScoreConfig, manifest: dict[str, Any]) -> str:
    from mrt_star.models import resolve_model

    return resolve_model(cfg.model_name(manifest.get("config", {}).get("model") or "toy"))


def _chat_template(cfg: ScoreConfig, manifest: dict[str, Any]) -> str | None:
    # The prover must see prompts rendered as the traces were: reuse generate's template override.
    return cfg.chat_template or manifest.get("config", {}).get("chat_template")


def engine_kwargs(cfg: ScoreConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Return the engine's options: the engine group's, with the traces' chat template unless one is given."""
    template = _chat_template(cfg, manifest)
    return {**({"chat_template": template} if template else {}), **cfg.engine_kwargs(seed=cfg.seed)}


# --- dry run ----------------------------------------------------------------------------------------


def plan(rows: list[dict[str, Any]], tokenizer: Any, cfg: ScoreConfig) -> dict[str, Any]:
    """Return what scoring `rows` would cost: prover calls, rollouts, prefix and answer tokens."""
    from mrt_star.formats.chat import render_chat
    from mrt_star.progress.prover import _unique

    class _Counter:  # episode token counts from the tokenizer alone (no model load)
        def count_tokens(self, texts):
            return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    counter, queries, calls = _Counter(), [], 0
    for shard in problem_shards(rows, cfg.shard_size):
        qs = []
        for row in shard:
            episodes = trace_episodes(counter, row, episode_options(cfg))
            qs += prover_queries(list(row["prompt"]), [e["text"] for e in episodes], row["format"], row["answer"])
        unique, _ = _unique(qs, cfg.share_prefixes)
        calls += len(unique)
        queries.append((qs, unique))
    all_qs = [q for qs, _ in queries for q in qs]
    distinct = list(dict.fromkeys(q for _, unique in queries for q in unique))
    lengths = dict(zip(distinct, counter.count_tokens([render_chat(tokenizer, q.messages()) for q in distinct]), strict=True))
    k = cfg.prover_k
    sampled = cfg.compare_estimators or cfg.estimator in ("sample", "adaptive")  # adaptive: at most K
    likelihood = cfg.compare_estimators or cfg.estimator == "likelihood"
    return {
        "traces": len(rows),
        "shards (engine calls)": len(queries),
        "prefixes": len(all_qs),
        "prover calls (distinct prefixes)": calls,
        "rollouts": calls * k if sampled else 0,
        "prefix tokens encoded (one prefill per call)": sum(lengths[q] for _, u in queries for q in u),
        "prefix tokens if every rollout re-encoded its prefix": sum(lengths[q] for q in all_qs) * k,
        "max answer tokens (calls x K x prover_max_new_tokens)": calls * k * cfg.prover_max_new_tokens if sampled else 0,
        "likelihood passes": calls if likelihood else 0,
        "likelihood tokens encoded (transformers: a shared prefix of >= 512 tokens runs once)":
            sum(likelihood_tokens(tokenizer, u) for _, u in queries) if likelihood else 0,
    }


def likelihood_tokens(tokenizer: Any, queries: list[ProverQuery]) -> int:
    """Return the tokens the transformers engine runs to score `queries` (one engine call) by likelihood.

    The prefixes of one trace share their tokens: a group sharing at least `SHARED_PREFIX_MIN_TOKENS` runs
    its longest sequence once and then only each other's tail (`TransformersEngine._shared_logprobs`);
    every other sequence runs whole.
    """
    from mrt_star.engines.base import encode_text
    from mrt_star.engines.transformers_engine import _common_prefix, shared_prefix_groups
    from mrt_star.formats.chat import render_chat
    from mrt_star.progress.prover import ANSWER_CLOSE

    prompts = encode_text(tokenizer, [render_chat(tokenizer, q.messages(q.lead)) for q in queries])
    conts = encode_text(tokenizer, [q.answer + ANSWER_CLOSE for q in queries])
    seqs = [p + c for p, c in zip(prompts, conts, strict=True)]
    groups = shared_prefix_groups(seqs, conts)
    total = sum(len(seqs[i]) for i in set(range(len(seqs))) - {i for g in groups for i in g} if conts[i])
    for group in groups:
        trunk = seqs[group[0]]
        shares = sorted(((_common_prefix(seqs[i], trunk), i) for i in group[1:]), reverse=True)
        total += len(trunk) + sum(len(seqs[i]) - min(share, len(seqs[i]) - len(conts[i]) - 1) for share, i in shares)
    return total


# --- stage ------------------------------------------------------------------------------------------


def _default_output(cfg: ScoreConfig) -> Path:
    return Path(cfg.output) if cfg.output else Path(f"{str(cfg.input).rstrip('/')}-scored")


def run_score(cfg: ScoreConfig) -> Path:
    """Return the scored-traces folder after scoring every trace of `cfg.input` (resumable)."""
    from mrt_star.console import console, stage_progress, summary_table
    from mrt_star.scale import check_scale, without_scale
    from mrt_star.store import Store, fingerprint, read_rows

    manifest = check_input(cfg)
    rows = _load_rows(cfg)
    output = _default_output(cfg)
    model_path = _prover_model(cfg, manifest)
    shards = problem_shards(rows, cfg.shard_size)
    if cfg.dry_run:
        from mrt_star.engines.base import load_tokenizer

        tokenizer = load_tokenizer(model_path, _chat_template(cfg, manifest))
        summary_table(f"score --dry-run: {cfg.input} (nothing written, nothing sampled)", plan(rows, tokenizer, cfg))
        return output

    check_scale(cfg)
    config = without_scale({**config_to_dict(cfg), "resolved_model": model_path})
    store = Store(output, "score", config, fingerprint(cfg.input), cfg.overwrite)
    if store.complete:
        console.print(f"score: {output} is already complete (pass --overwrite to redo it)")
        return output
    schema = scored_schema(_input_schema(cfg.input))
    todo = [i for i in range(len(shards)) if not store.is_done(i)]
    timings = store.manifest.setdefault("timings", {})
    if todo:
        start = time.time()
        with stage_progress() as bar:
            task = bar.add_task("score", total=len(rows), completed=sum(len(shards[i]) for i in range(len(shards))
                                                                        if i not in todo), info="")

            def write(i: int, scored: list[dict[str, Any]]) -> None:
                store.write_shard(i, scored, schema=schema)
                mean_end = sum(r["j_end"] for r in scored) / len(scored)
                bar.update(task, advance=len(shards[i]), info=f"shard {i}: mean J end {mean_end:.2f}")

            run = _score_on_ray if cfg.backend == "ray" else _score_here
            timings.update(run(cfg, model_path, engine_kwargs(cfg, manifest), [(i, shards[i]) for i in todo], write))
        timings["prover_seconds"] = round(timings.get("prover_seconds", 0.0) + time.time() - start, 3)
    summary = summarize(read_rows(output, require_complete=False), cfg)
    path = store.finish(summary, counts={"traces": len(rows)})
    summary_table(f"score: {len(rows)} traces → {output}", summary)
    return path


class ScoreShards:
    """A worker's job in score: one prover engine and grader that turn a shard of traces into scored rows."""

    def __init__(self, cfg: ScoreConfig, model_path: str, engine_options: dict[str, Any]):
        from mrt_star.engines import load_engine
        from mrt_star.grading import Grader

        self.cfg, self.grader = cfg, Grader(**cfg.grader_kwargs())
        self.engine = load_engine(cfg.engine, model_path, **engine_options)

    def run(self, index: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # The seed comes from the run seed and the shard alone: the same rows on any worker.
        return score_rows(rows, self.engine, self.grader, self.cfg, seed=self.cfg.seed + index)

    def close(self) -> None:
        self.engine.close()
        self.grader.close()


def _score_here(cfg: ScoreConfig, model_path: str, engine_options: dict, jobs: list, write: Any) -> dict[str, Any]:
    """Score the shards in this process; return the timings to record (the engine's stats)."""
    worker = ScoreShards(cfg, model_path, engine_options)
    try:
        for i, shard in jobs:
            write(i, worker.run(i, shard))
    finally:
        worker.close()
    return {"engine_stats": _stats(worker.engine)}


def _score_on_ray(cfg: ScoreConfig, model_path: str, engine_options: dict, jobs: list, write: Any) -> dict[str, Any]:
    """Score the shards on Ray workers, writing each here as it arrives; return the pool's figures."""
    from mrt_star.scale import WorkerPool, ray_session

    with ray_session(cfg), WorkerPool(cfg, "mrt_star.score:ScoreShards", (cfg, model_path, engine_options),
                                      "score") as pool:
        pool.run(jobs, write)
        return {"scale": pool.stats(), "engine_stats": pool.engine_stats()}


def _stats(engine: Any) -> dict[str, Any]:
    stats = getattr(engine, "stats", None)
    return stats.as_dict() if hasattr(stats, "as_dict") else {}


def summarize(rows: list[dict[str, Any]], cfg: ScoreConfig) -> dict[str, Any]:
    """Return the closing numbers: mean J at start/end, progress shares, prover cost, estimator agreement."""
    from mrt_star.progress.metrics import estimator_agreement, score_summary

    summary = {"estimator": cfg.estimator, **score_summary(rows, cfg.budgets)}
    pairs = [(r["j_sample"], r["j_likelihood"]) for r in rows if r.get("j_sample") and r.get("j_likelihood")]
    if pairs:
        # Sampled J moves in steps of 1/K; a likelihood change under half a step counts as no change.
        agreement = estimator_agreement([a for a, _ in pairs], [b for _, b in pairs], eps=0.5 / cfg.prover_k)
        summary.update({f"estimators: {k}": v for k, v in agreement.items() if k not in ("prefixes", "episodes")})
    return summary
