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
from typing import Any

from mrt_star.config import StageIO, config_to_dict, option
from mrt_star.errors import UserError
from mrt_star.formats.episodes import BACKTRACK_UNITS, EpisodeOptions, split_episodes
from mrt_star.progress.prover import ESTIMATORS, ProverOptions, ProverQuery, prover_queries, run_prover

NEEDED_COLUMNS = ("problem_id", "answer", "format", "prompt", "completion")


@dataclass
class ScoreConfig(StageIO):
    """Options of `mrt-star score` (prover, estimator, episodes, regret budgets, engine)."""

    model: str | None = option(None, "prover model; omitted: the model that generated the traces")
    k: int = option(8, "forced answers sampled per prefix (parity: 8)")
    temperature: float = option(0.7, "prover sampling temperature (parity: 0.6-0.7)")
    top_p: float = option(1.0, "prover nucleus sampling")
    max_new_tokens: int = option(64, "tokens per forced answer (toy default; parity for thinking models: 4096)")
    estimator: str = option("sample", "how J is estimated: sample (K graded forced answers, parity) or likelihood "
                            "(exp log-prob of the reference answer after the force text)", choices=ESTIMATORS)
    compare_estimators: bool = option(False, "also run the other estimator and report their agreement")
    budgets: list[int] = option([128, 256, 512], "token budgets C for normalized regret")
    min_paragraphs: int = option(3, "open format: paragraphs an episode needs before a marker may split it")
    max_splits: int = option(48, "open format: at most this many split points (parity 45-49)")
    group_size: int = option(1, "open format: merge consecutive episodes in groups of this size (parity 3-5)")
    backtrack_unit: str = option("attempt", "backtrack format: one episode per attempt (parity) or per numbered step "
                                 "(J after every step; more prover calls)", choices=BACKTRACK_UNITS)
    grading: str = option("symbolic", "answer grading mode (see mrt_star.grading; 'hendrycks' for parity)",
                          choices=("symbolic", "hendrycks"))
    grade_prefix_too: bool = option(False, "parity flag: grade prefix + forced answer (a \\boxed{} in the prefix "
                                    "may count), as the reference notebooks did")
    share_prefixes: bool = option(True, "ask each distinct forced prefix once (e.g. a problem's empty prefix)")
    chat_template: str | None = option(None, "chat template (a Jinja file or template text); omitted: the one the "
                                       "traces were generated with, if any")
    engine: str = option("transformers", "engine: transformers or vllm", choices=("transformers", "vllm"))
    engine_options: dict = option({}, "engine options (e.g. {batch_size: 64, device: cuda} or vLLM settings)")
    shard_size: int = option(64, "traces per shard; all their prefixes go to the engine in one call")
    dry_run: bool = option(False, "print the number of prover calls and the tokens they would spend; write nothing")

    def prover_options(self, seed: int | None = None) -> ProverOptions:
        """Return the prover settings (both estimators when comparing them)."""
        estimators = tuple(ESTIMATORS) if self.compare_estimators else (self.estimator,)
        return ProverOptions(k=self.k, temperature=self.temperature, top_p=self.top_p,
                             max_new_tokens=self.max_new_tokens, estimators=estimators,
                             grade_prefix_too=self.grade_prefix_too, share_prefixes=self.share_prefixes,
                             seed=seed)

    def episode_options(self) -> EpisodeOptions:
        """Return the segmentation options."""
        return EpisodeOptions(min_paragraphs=self.min_paragraphs, max_splits=self.max_splits,
                              group_size=self.group_size, backtrack_unit=self.backtrack_unit)


# --- input ------------------------------------------------------------------------------------------


def check_input(cfg: ScoreConfig) -> dict[str, Any]:
    """Return the input's manifest after checking it is a finished generate output with trace columns."""
    import pyarrow.parquet as pq

    from mrt_star.store import read_manifest, shard_files

    if not cfg.input:
        raise UserError("input: pass the traces folder written by `mrt-star generate` (--input DIR)")
    if not Path(cfg.input).is_dir():
        raise UserError(f"input: {cfg.input} is not a folder; pass the output folder of `mrt-star generate`")
    manifest = read_manifest(cfg.input)
    if manifest.get("stage") != "generate":
        raise UserError(f"input: {cfg.input} is a {manifest.get('stage')!r} output; score reads a `generate` output")
    if manifest.get("status") != "complete":
        raise UserError(f"input: {cfg.input} is an unfinished generate output; re-run generate to finish it")
    shards = shard_files(cfg.input)
    if shards:
        names = set(pq.read_schema(shards[0]).names)
        missing = [c for c in NEEDED_COLUMNS if c not in names]
        if missing:
            raise UserError(f"input: {cfg.input} lacks the trace column(s) {', '.join(missing)}")
    for name in ("k", "max_new_tokens", "shard_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name}: must be at least 1, got {getattr(cfg, name)}")
    if any(b <= 0 for b in cfg.budgets):
        raise UserError(f"budgets: every budget must be positive, got {cfg.budgets}")
    return manifest


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

    options = cfg.prover_options(seed)
    episode_options = cfg.episode_options()
    queries: list[ProverQuery] = []
    spans, episodes_of = [], []
    for row in rows:
        episodes = trace_episodes(engine, row, episode_options)
        episodes_of.append(episodes)
        qs = prover_queries(list(row["prompt"]), [e["text"] for e in episodes], row["format"], row["answer"])
        spans.append((len(queries), len(queries) + len(qs)))
        queries.extend(qs)
    results = run_prover(engine, grader, queries, options)
    out = []
    for row, episodes, (a, b) in zip(rows, episodes_of, spans, strict=True):
        mine = results[a:b]
        j_sample = _held([r.j_sample for r in mine]) if "sample" in options.estimators else None
        j_likelihood = _held([r.j_likelihood for r in mine]) if "likelihood" in options.estimators else None
        j_values = j_sample if cfg.estimator == "sample" else j_likelihood
        metrics = trace_metrics(j_values, [e["num_tokens"] for e in episodes], cfg.budgets)
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

    answer = pa.struct([("text", pa.string()), ("answer", pa.string()), ("correct", pa.bool_()),
                        ("num_tokens", pa.int64())])
    added = {
        "episodes": pa.list_(pa.struct([("text", pa.string()), ("num_tokens", pa.int64())])),
        "j_tokens": pa.list_(pa.int64()),
        "j_values": pa.list_(pa.float64()),
        "progress": pa.list_(pa.float64()),
        "cumulative_progress": pa.float64(),
        "j_start": pa.float64(),
        "j_end": pa.float64(),
        "forced_final_correct": pa.bool_(),
        "regret": pa.list_(pa.struct([("budget", pa.float64()), ("value", pa.float64())])),
        "estimator": pa.string(),
        "j_sample": pa.list_(pa.float64()),
        "j_likelihood": pa.list_(pa.float64()),
        "prover_answers": pa.list_(pa.list_(answer)),
        "prover_rollouts": pa.int64(),
        "prover_tokens": pa.int64(),
        "prover_prompt_tokens": pa.int64(),
        "prover_skipped_prefixes": pa.int64(),
    }
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

    return resolve_model(cfg.model or manifest.get("config", {}).get("model") or "toy")


def _chat_template(cfg: ScoreConfig, manifest: dict[str, Any]) -> str | None:
    # The prover must see prompts rendered as the traces were: reuse generate's template override.
    return cfg.chat_template or manifest.get("config", {}).get("chat_template")


def engine_kwargs(cfg: ScoreConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Return the engine's options (engine_options win over the inherited chat template)."""
    template = _chat_template(cfg, manifest)
    return {**({"chat_template": template} if template else {}), **cfg.engine_options}


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
            episodes = trace_episodes(counter, row, cfg.episode_options())
            qs += prover_queries(list(row["prompt"]), [e["text"] for e in episodes], row["format"], row["answer"])
        unique, _ = _unique(qs, cfg.share_prefixes)
        calls += len(unique)
        queries.append((qs, unique))
    all_qs = [q for qs, _ in queries for q in qs]
    distinct = list(dict.fromkeys(q for _, unique in queries for q in unique))
    lengths = dict(zip(distinct, counter.count_tokens([render_chat(tokenizer, q.messages()) for q in distinct]), strict=True))
    k = cfg.k
    sampled = cfg.compare_estimators or cfg.estimator == "sample"
    return {
        "traces": len(rows),
        "shards (engine calls)": len(queries),
        "prefixes": len(all_qs),
        "prover calls (distinct prefixes)": calls,
        "rollouts": calls * k if sampled else 0,
        "prefix tokens encoded (one prefill per call)": sum(lengths[q] for _, u in queries for q in u),
        "prefix tokens if every rollout re-encoded its prefix": sum(lengths[q] for q in all_qs) * k,
        "max answer tokens (calls x K x max_new_tokens)": calls * k * cfg.max_new_tokens if sampled else 0,
        "likelihood passes": calls if (cfg.compare_estimators or cfg.estimator == "likelihood") else 0,
    }


# --- stage ------------------------------------------------------------------------------------------


def _default_output(cfg: ScoreConfig) -> Path:
    return Path(cfg.output) if cfg.output else Path(f"{str(cfg.input).rstrip('/')}-scored")


def run_score(cfg: ScoreConfig) -> Path:
    """Return the scored-traces folder after scoring every trace of `cfg.input` (resumable)."""
    from mrt_star.console import console, stage_progress, summary_table
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

    config = {**config_to_dict(cfg), "resolved_model": model_path}
    store = Store(output, "score", config, fingerprint(cfg.input), cfg.overwrite)
    if store.complete:
        console.print(f"score: {output} is already complete (pass --overwrite to redo it)")
        return output
    schema = scored_schema(_input_schema(cfg.input))
    todo = [i for i in range(len(shards)) if not store.is_done(i)]
    timings = store.manifest.setdefault("timings", {})
    if todo:
        from mrt_star.engines import load_engine
        from mrt_star.grading import Grader

        engine = load_engine(cfg.engine, model_path, **engine_kwargs(cfg, manifest))
        grader = Grader(mode=cfg.grading)
        start = time.time()
        try:
            with stage_progress() as bar:
                task = bar.add_task("score", total=len(rows), completed=sum(len(shards[i]) for i in range(len(shards))
                                                                            if i not in todo), info="")
                for i in todo:
                    scored = score_rows(shards[i], engine, grader, cfg, seed=cfg.seed + i)
                    store.write_shard(i, scored, schema=schema)
                    mean_end = sum(r["j_end"] for r in scored) / len(scored)
                    bar.update(task, advance=len(shards[i]), info=f"shard {i}: mean J end {mean_end:.2f}")
        finally:
            engine.close()
            grader.close()
        timings["prover_seconds"] = round(timings.get("prover_seconds", 0.0) + time.time() - start, 3)
        timings["engine_stats"] = _stats(engine)
    summary = summarize(read_rows(output, require_complete=False), cfg)
    path = store.finish(summary, counts={"traces": len(rows)})
    summary_table(f"score: {len(rows)} traces → {output}", summary)
    return path


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
        agreement = estimator_agreement([a for a, _ in pairs], [b for _, b in pairs], eps=0.5 / cfg.k)
        summary.update({f"estimators: {k}": v for k, v in agreement.items() if k not in ("prefixes", "episodes")})
    return summary
