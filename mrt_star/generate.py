"""`mrt-star generate`: sample reasoning traces for problems, in the backtracking, linearized or open format.

How each format is sampled lives in `mrt_star.trace_sampling`.

Rows follow `mrt_star.schemas.TRACES`. Shards hold whole problems and are written atomically, so a
killed run re-run with the same command resumes at the first missing shard. Everything that can be
wrong with the input (problems, model, chat template, options) is checked before the output folder
is created; a prompt too long for the model's context is skipped and counted, not fatal.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mrt_star.config import config_to_dict, option
from mrt_star.errors import UserError
from mrt_star.formats.prompts import (
    DEFAULT_TEMPLATE,
    prompt_messages,
    user_prompt,
)
from mrt_star.options import (
    RENAMED,
    EngineOptions,
    FormatOptions,
    GradingOptions,
    ModelOptions,
    ProblemOptions,
    PromptOptions,
    SamplingOptions,
    ScaleOptions,
    StageIO,
)
from mrt_star.trace_sampling import BACKTRACK_POINTS, BACKTRACK_VARIANTS, SAMPLERS, Trace, derive_seed

# Two answers that need a symbolic worker each: grading them starts the worker pool.
GRADER_WARMUP = (("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"))


@dataclass
class GenerateConfig(StageIO, ModelOptions, ProblemOptions, FormatOptions, PromptOptions, SamplingOptions,
                     GradingOptions, EngineOptions, ScaleOptions):
    """Options of `mrt-star generate` (trace format, sampling, engine, backtrack and linearized knobs)."""

    RENAMED: ClassVar[dict[str, str]] = RENAMED

    backtrack_point: str = option("random", "backtrack: the step the revision goes back to: random (uniform over "
                                  "the attempt's steps) or marked (where the model itself began a backtrack line; "
                                  "random when it did not)", choices=BACKTRACK_POINTS)
    backtrack_variant: str = option("shared_prefix", "backtrack: shared_prefix (after 'Backtrack to Line k' the "
                                    "steps before k are copied and the model redoes step k on), no_shared_prefix "
                                    "(the model redoes step k on right after the backtrack line) or restart "
                                    "('Backtrack to beginning', everything redone)", choices=BACKTRACK_VARIANTS)
    explicit_backtrack: bool = option(False, "backtrack: one plain call per trace; the model writes its own "
                                      "backtrack lines (or none)")
    stop_at_first_correct: bool = option(False, "linearized: end a chain after its first correct attempt")
    continue_after_eos: bool = option(False, "linearized: start another attempt even when the model ended its "
                                      "turn instead of writing the attempt separator")
    shard_size: int = option(32, "problems per output shard (the unit of resume)", at_least=1)


# --- checks ------------------------------------------------------------------------------------------


def check_options(cfg: GenerateConfig) -> None:
    """Raise UserError for option values no run can use."""
    if cfg.prompt_template != "auto":
        try:
            user_prompt("x", cfg.prompt_template)
        except ValueError as err:
            raise UserError(f"prompt_template: {err}") from None


def is_toy_model(name: str, tokenizer: Any) -> bool:
    """Return True for the embedded toy models and models fine-tuned from them (same chat template)."""
    from mrt_star.models import TOY_MODELS
    from mrt_star.toy.tokenizer import CHAT_TEMPLATE

    return name in TOY_MODELS or getattr(tokenizer, "chat_template", None) == CHAT_TEMPLATE


def resolve_template(cfg: GenerateConfig, tokenizer: Any) -> str:
    """Return the prompt template to use ('auto' resolved for the model at hand)."""
    if cfg.prompt_template != "auto":
        return cfg.prompt_template
    return f"toy-{cfg.format}" if is_toy_model(cfg.model_name(), tokenizer) else DEFAULT_TEMPLATE[cfg.format]


def grader_workers() -> int:
    """Return how many symbolic grading processes to run: up to 2, leaving one core to the sampler."""
    return max(1, min(2, (os.cpu_count() or 1) - 1))


class GraderWarmup:
    """Start a grader's symbolic workers in a background thread while the model loads.

    Each worker imports math-verify and sympy (seconds of CPU); started lazily they would stall the
    first shard. The grader's lock makes later calls wait for the warm-up rather than race it; `stop()`
    must run before the grader is closed, so no worker is started after its pool was shut.
    """

    def __init__(self, grader: Any):
        self.grader, self.cancelled = grader, threading.Event()
        self.thread = None
        if getattr(grader, "mode", None) == "symbolic":
            self.thread = threading.Thread(target=self._warm, name="mrt-star-grader-warmup", daemon=True)
            self.thread.start()

    def _warm(self) -> None:
        if self.cancelled.is_set():
            return
        try:
            self.grader.grade_many(GRADER_WARMUP)
        except Exception:  # a warm-up failure resurfaces, with its message, at the first real grading call
            pass

    def stop(self) -> None:
        """Cancel the warm-up if it has not begun, else wait for it to end."""
        self.cancelled.set()
        if self.thread is not None:
            self.thread.join()


# --- rows ----------------------------------------------------------------------------------------------


def measure_traces(engine: Any, cfg: GenerateConfig, traces: list[Trace]) -> list[tuple[list[str], list[int], int]]:
    """Return, per trace, (its episodes, their token counts, the whole trace's token count)."""
    from mrt_star.formats.episodes import split_episodes

    episodes = [split_episodes(t.text, cfg.format) for t in traces]
    flat = [e for eps in episodes for e in eps]
    counts = engine.count_tokens(flat + [t.text for t in traces])
    out, at = [], 0
    for eps, total in zip(episodes, counts[len(flat) :], strict=True):
        out.append((eps, counts[at : at + len(eps)], total))
        at += len(eps)
    return out


def trace_rows(grader: Any, cfg: GenerateConfig, traces: list[Trace],
               measured: list[tuple[list[str], list[int], int]]) -> list[dict[str, Any]]:
    """Return the TRACES rows of measured traces: the whole trace and its first episode graded."""
    grades = grader.grade_many([(t.text, t.item["answer"]) for t in traces]
                               + [(m[0][0], t.item["answer"]) for t, m in zip(traces, measured, strict=True)])
    finals, firsts = grades[: len(traces)], grades[len(traces) :]
    rows = []
    for t, (eps, counts, total), final, first in zip(traces, measured, finals, firsts, strict=True):
        it = t.item
        rows.append({
            "problem_id": str(it["problem_id"]), "problem": it["problem"], "answer": str(it["answer"]),
            "format": cfg.format, "sample_index": t.sample_index, "prompt": list(it["prompt"]),
            "completion": t.text, "episodes": [{"text": e, "num_tokens": n} for e, n in zip(eps, counts, strict=True)],
            "num_tokens": total, "finish_reason": t.finish_reason, "final_answer": final.extracted,
            "correct": bool(final.correct),
            "first_attempt_correct": None if first.extracted is None else bool(first.correct),
            "engine": cfg.engine, "model": cfg.model_name(), "temperature": float(cfg.temperature),
            "top_p": float(cfg.top_p), "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
        })
    return rows


def traces_schema():
    """Return the parquet schema of a traces shard (`mrt_star.schemas.TRACES`)."""
    from mrt_star.schemas import TRACES, arrow_schema

    return arrow_schema(TRACES)


def summarize(rows: list[dict[str, Any]], skipped: int, tokens_per_second: float | None) -> dict[str, Any]:
    """Return the closing numbers: counts, tokens, boxed share, first-attempt and final accuracy, skips."""
    from mrt_star.grading.extract import last_boxed

    n = len(rows)

    def share(values: list[Any]) -> float:
        return round(sum(bool(v) for v in values) / n, 4) if n else 0.0

    tokens = sum(r["num_tokens"] for r in rows)
    summary = {
        "traces": n, "problems": len({r["problem_id"] for r in rows}), "skipped_prompts": skipped,
        "tokens": tokens, "mean_tokens": round(tokens / n, 1) if n else 0.0,
        "mean_episodes": round(sum(len(r["episodes"]) for r in rows) / n, 3) if n else 0.0,
        "boxed_share": share([last_boxed(r["completion"]) is not None for r in rows]),
        "length_share": share([r["finish_reason"] == "length" for r in rows]),
        "first_attempt_accuracy": share([r["first_attempt_correct"] for r in rows]),
        "final_accuracy": share([r["correct"] for r in rows]),
    }
    if tokens_per_second is not None:
        summary["tokens_per_second"] = round(tokens_per_second, 1)
    return summary


# --- the stage -----------------------------------------------------------------------------------------


def _open_existing(output: Path, cfg: GenerateConfig, config: dict, fp: str):
    """Return the Store of an existing output folder of this command (None when there is none yet)."""
    from mrt_star.store import MANIFEST, Store, check_output_path

    check_output_path(output)  # fail before the model load, not after it
    if cfg.overwrite or not (output / MANIFEST).exists():
        return None
    return Store(output, "generate", config, fp, overwrite=False)


def prepare_items(engine: Any, cfg: GenerateConfig, problems: list[dict]) -> list[dict[str, Any]]:
    """Return problems with their prompt messages and whether the prompt fits the model's context.

    Rendering every prompt here also checks the chat template before anything is written.
    """
    from mrt_star.engines.base import Request

    template = resolve_template(cfg, engine.tokenizer)
    items = [{**p, "prompt": prompt_messages(p["problem"], template, cfg.system_prompt)} for p in problems]
    lengths = engine.count_tokens([engine.render(Request(it["prompt"])) for it in items])
    for it, length in zip(items, lengths, strict=True):
        it["fits"] = length + 1 <= engine.max_context
    return items


def sample_shard(engine: Any, grader: Any, cfg: GenerateConfig, index: int, part: list[dict]) -> tuple[list, list]:
    """Return (traces, their measures) of shard `index`: its seed comes from the run seed and the shard alone."""
    kept = [it for it in part if it["fits"]]
    traces = SAMPLERS[cfg.format](engine, grader, cfg, kept, derive_seed(cfg.seed, index)) if kept else []
    return traces, measure_traces(engine, cfg, traces)


class TraceShards:
    """A Ray worker's job in generate: one engine and grader that turn a shard of problems into trace rows."""

    def __init__(self, cfg: GenerateConfig, model_path: str):
        from mrt_star.engines import load_engine
        from mrt_star.grading import Grader

        self.cfg, self.grader = cfg, Grader(**cfg.grader_kwargs(), workers=1)
        self.engine = load_engine(cfg.engine, model_path, **cfg.engine_kwargs(seed=cfg.seed))

    def prepare(self, problems: list[dict]) -> list[dict[str, Any]]:
        return prepare_items(self.engine, self.cfg, problems)

    def run(self, index: int, part: list[dict]) -> list[dict[str, Any]]:
        traces, measured = sample_shard(self.engine, self.grader, self.cfg, index, part)
        return trace_rows(self.grader, self.cfg, traces, measured)

    def close(self) -> None:
        self.engine.close()
        self.grader.close()


def run_generate(cfg: GenerateConfig) -> Path:
    """Return the traces folder after sampling `n` traces per problem of `cfg.input` (resumable)."""
    from mrt_star.console import console, summary_table
    from mrt_star.data import load_problems, problem_source
    from mrt_star.models import resolve_model
    from mrt_star.scale import check_scale, without_scale
    from mrt_star.store import Store, fingerprint, read_rows

    check_options(cfg)
    check_scale(cfg)
    output = Path(cfg.output or f"traces-{cfg.format}")
    problems = load_problems(problem_source(cfg))
    model_path = resolve_model(cfg.model_name())
    config = without_scale({**config_to_dict(cfg), "resolved_model": model_path})
    fp = fingerprint(cfg.input or "toy")
    existing = _open_existing(output, cfg, config, fp)
    if existing is not None and existing.complete:
        console.print(f"generate: {output} is already complete (pass --overwrite to redo it)")
        return output

    def open_store():  # called after the checks that need the model, so a failed check writes nothing
        return existing or Store(output, "generate", config, fp, cfg.overwrite)

    run = _generate_on_ray if cfg.backend == "ray" else _generate_here
    store, items, seconds, tokens, stats = run(cfg, problems, model_path, open_store)
    skipped = sum(not it["fits"] for it in items)
    timings = store.manifest.setdefault("timings", {})
    timings["sampling_seconds"] = round(timings.get("sampling_seconds", 0.0) + seconds, 3)
    timings.update(stats)
    rate = tokens / seconds if tokens and seconds > 0 else None
    summary = summarize(read_rows(output, require_complete=False), skipped, rate)
    path = store.finish(summary, counts={"problems": len(items), "skipped_prompts": skipped})
    summary_table(f"generate: {summary['traces']} {cfg.format} traces → {output}", summary)
    return path


def _shards_to_do(store: Any, cfg: GenerateConfig, items: list[dict]) -> list[tuple[int, list[dict]]]:
    from mrt_star.store import chunk

    return [(i, part) for i, part in chunk(items, cfg.shard_size) if not store.is_done(i)]


def _generate_here(cfg: GenerateConfig, problems: list[dict], model_path: str, open_store: Any):
    """Sample the missing shards in this process; return (store, items, seconds, tokens, timings to record)."""
    from mrt_star.console import stage_progress
    from mrt_star.engines import load_engine
    from mrt_star.grading import Grader

    grader = Grader(**cfg.grader_kwargs(), workers=grader_workers())
    warmup = GraderWarmup(grader)
    try:
        engine = load_engine(cfg.engine, model_path, **cfg.engine_kwargs(seed=cfg.seed))
    except BaseException:
        warmup.stop()
        grader.close()
        raise
    try:
        items = prepare_items(engine, cfg, problems)
        store = open_store()  # only now is anything written
        todo = _shards_to_do(store, cfg, items)
        start, schema = time.perf_counter(), traces_schema()
        with stage_progress() as bar, ThreadPoolExecutor(max_workers=1) as writer:
            task = bar.add_task(f"generate {cfg.format}", total=len(items),
                                completed=len(items) - sum(len(p) for _, p in todo), info="")

            def finish_shard(i: int, size: int, traces: list[Trace], measured: list) -> None:
                # Off the main thread: grading (in the grader's worker processes) and writing overlap
                # with sampling the next shard. The tokenizer stays on the main thread.
                store.write_shard(i, trace_rows(grader, cfg, traces, measured), schema=schema)
                rate = engine.stats.completion_tokens / max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=size, info=f"{rate:,.0f} tok/s")

            pending = None
            for i, part in todo:
                traces, measured = sample_shard(engine, grader, cfg, i, part)
                if pending is not None:
                    pending.result()  # at most one shard in flight; its errors surface here
                pending = writer.submit(finish_shard, i, len(part), traces, measured)
            if pending is not None:
                pending.result()
        seconds = time.perf_counter() - start
    finally:
        engine.close()
        warmup.stop()
        grader.close()
    tokens = engine.stats.completion_tokens if todo else 0
    return store, items, seconds, tokens, {"engine_stats": engine.stats.as_dict()}


def _generate_on_ray(cfg: GenerateConfig, problems: list[dict], model_path: str, open_store: Any):
    """Sample the missing shards on Ray workers, writing each here; same return as `_generate_here`."""
    from mrt_star.console import stage_progress
    from mrt_star.scale import WorkerPool, ray_session

    with ray_session(cfg), WorkerPool(cfg, "mrt_star.generate:TraceShards", (cfg, model_path), "generate") as pool:
        items = pool.call_one("prepare", problems)
        store = open_store()
        todo = _shards_to_do(store, cfg, items)
        start, schema, tokens = time.perf_counter(), traces_schema(), 0
        with stage_progress() as bar:
            task = bar.add_task(f"generate {cfg.format} ({cfg.workers} Ray workers)", total=len(items),
                                completed=len(items) - sum(len(p) for _, p in todo), info="")
            sizes = dict((i, len(part)) for i, part in todo)

            def write(i: int, rows: list[dict[str, Any]]) -> None:
                nonlocal tokens
                store.write_shard(i, rows, schema=schema)
                tokens += sum(r["num_tokens"] for r in rows)
                bar.update(task, advance=sizes[i], info=f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f} tok/s")

            pool.run(todo, write)
        seconds, stats = time.perf_counter() - start, pool.engine_stats()
        tokens = stats.get("completion_tokens", tokens) if todo else 0  # as the local run counts them
        return store, items, seconds, tokens, {"scale": pool.stats(), "engine_stats": stats}
