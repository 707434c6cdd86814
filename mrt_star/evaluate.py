"""`mrt-star eval`: sample, grade and compare one or more models — pass@k, maj@k vs tokens, J curves, regret.

Modes:
- standard: n independent traces per problem (the model decides when to stop).
- linearized: sequential attempts; attempt i is generated with the most recent `window` attempts in
  context (sliding window, so the chain can run past the context length), up to `max_attempts`.
- history: the input is a traces folder; the model continues each trace's first episode n times.

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

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.config import StageIO, config_to_dict, option
from mrt_star.errors import UserError
from mrt_star.formats.prompts import FORMATS
from mrt_star.grading import GRADING_MODES

MODES = ("standard", "linearized", "history")
SHARDS_PER_MODEL = 10_000  # shard index = model index × this + chunk index


@dataclass
class EvalConfig(StageIO):
    """Options of `mrt-star eval`."""

    seed: int = option(1000, "sampling seed; with toy input also the problem seed (not the training seed 0, "
                       "so the problems are held out)")
    models: list[str] = option(["toy"], "models to compare (comma-separated or a YAML list): 'toy', 'toy-micro', "
                               "folders or Hub ids; `--model` (one, or comma-separated) is used when this is "
                               "left at its default")
    labels: list[str] = option([], "display names of the models, in order (default: derived from the names)")
    mode: str = option("standard", "standard: n independent traces; linearized: sequential attempts with a "
                       "sliding window; history: continue the first episode of each trace of a traces folder",
                       choices=MODES)
    format: str = option("backtrack", "trace format (episodes are cut by its rules)", choices=FORMATS)
    template: str | None = option(None, "prompt template name or text with {problem} (default: toy-<format> for toy "
                                  "problems, else the format's default)")
    n: int = option(4, "samples per problem (per trace in history mode)")
    k: list[int] = option([1, 2, 4], "k values for pass@k (maj@k is reported for every k up to n)")
    maj_mode: str = option("expected", "maj@k over all k-subsets of the n samples (expected) or the first k (first)",
                           choices=("expected", "first"))
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling")
    max_new_tokens: int = option(512, "token cap per generation call (per attempt in linearized mode)")
    window: int = option(2, "linearized: most recent attempts kept in context")
    max_attempts: int = option(4, "linearized: attempts per chain at most")
    budgets: list[int] = option([], "token budgets for regret (default: 1/4, 1/2 and all of the token cap)")
    budget_forcing: bool = option(False, "also cut each trace at the budgets and force an answer (prover J curve)")
    forcing_k: int = option(4, "budget forcing: forced answers per cut")
    forcing_max_new_tokens: int = option(64, "budget forcing: token cap of a forced answer")
    grading: str = option("symbolic", "answer grading: symbolic (math-verify) or hendrycks (string "
                          "normalisation, parity with the reference numbers)", choices=GRADING_MODES)
    engine: str = option("transformers", "sampling engine: transformers or vllm")
    engine_options: dict = option({}, "engine options (e.g. {batch_size: 64} or vLLM settings)")
    shard_size: int = option(16, "problems per shard (the unit a killed run resumes at)")
    plots: bool = option(True, "write PNG plots")


# --- inputs -------------------------------------------------------------------------------------------


def model_names(cfg: EvalConfig) -> list[str]:
    """Return the models to evaluate: `models`, or `--model` when `models` is left at its default."""
    if cfg.models == ["toy"] and cfg.model != "toy":
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

    if cfg.template:
        return cfg.template
    source = cfg.input or "toy"
    return f"toy-{cfg.format}" if source == "toy" or source.startswith("toy:") else DEFAULT_TEMPLATE[cfg.format]


def load_items(cfg: EvalConfig) -> list[dict[str, Any]]:
    """Return what is evaluated: problems ({item_id, problem_id, problem, answer, prompt}) or, in history
    mode, traces to continue (also with `given` — the first episode — and its token count)."""
    from mrt_star.formats.prompts import prompt_messages

    if cfg.mode != "history":
        from mrt_star.data import ProblemSource, load_problems

        problems = load_problems(ProblemSource(source=cfg.input or "toy", limit=cfg.limit, seed=cfg.seed))
        template = _default_template(cfg)
        return [{"item_id": p["problem_id"], "problem_id": p["problem_id"], "problem": p["problem"],
                 "answer": p["answer"], "prompt": prompt_messages(p["problem"], template)} for p in problems]
    from mrt_star.formats.episodes import split_episodes
    from mrt_star.store import read_manifest, read_rows

    if not cfg.input or not Path(cfg.input).is_dir():
        raise UserError("input: history mode continues traces; pass --input with a traces folder (`mrt-star generate`)")
    manifest = read_manifest(cfg.input)
    rows = read_rows(cfg.input)
    if not rows or "completion" not in rows[0] or "prompt" not in rows[0]:
        raise UserError(f"input: {cfg.input} ({manifest.get('stage')}) has no traces (prompt, completion) to continue")
    rows = rows[: cfg.limit] if cfg.limit else rows
    items = []
    for row in rows:
        episodes = row.get("episodes") or []
        if episodes and isinstance(episodes[0], dict):
            given, given_tokens = episodes[0]["text"], episodes[0].get("num_tokens")
        else:
            given, given_tokens = split_episodes(row["completion"], row.get("format") or cfg.format)[0], None
        items.append({"item_id": f"{row['problem_id']}#{row.get('sample_index', 0)}", "problem_id": row["problem_id"],
                      "problem": row["problem"], "answer": row["answer"], "prompt": list(row["prompt"]),
                      "given": given, "given_tokens": given_tokens, "format": row.get("format") or cfg.format})
    return items


# --- sampling -----------------------------------------------------------------------------------------


def _budgets(cfg: EvalConfig) -> list[int]:
    if cfg.budgets:
        if any(b <= 0 for b in cfg.budgets):
            raise UserError("budgets: every budget must be positive")
        return sorted(set(cfg.budgets))
    cap = cfg.max_new_tokens * (cfg.max_attempts if cfg.mode == "linearized" else 1)
    return sorted({max(1, cap // 4), max(1, cap // 2), cap})


def _params(cfg: EvalConfig, n: int, seed: int, stop: tuple[str, ...] = (), max_new_tokens: int | None = None):
    from mrt_star.engines.base import SamplingParams

    return SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed, stop=stop,
                          max_new_tokens=max_new_tokens or cfg.max_new_tokens)


def _assistant(prompt: list[dict[str, str]], text: str):
    from mrt_star.engines.base import Request

    return Request([*prompt, {"role": "assistant", "content": text}] if text else list(prompt))


def sample_standard(engine: Any, cfg: EvalConfig, items: list[dict], seed: int) -> list[dict[str, Any]]:
    """Return one raw sample per (item, sample index): n independent traces per problem (or continuations)."""
    requests = [_assistant(it["prompt"], it.get("given") or "") for it in items]
    outputs = engine.generate(requests, _params(cfg, cfg.n, seed))
    raw = []
    for it, completions in zip(items, outputs, strict=True):
        given = it.get("given") or ""
        for s, c in enumerate(completions):
            raw.append({"item": it, "sample_index": s, "completion": given + c.text, "attempts": None,
                        "generated_tokens": c.completion_tokens, "finish_reason": c.finish_reason})
    return raw


def sample_linearized(engine: Any, cfg: EvalConfig, items: list[dict], seed: int) -> list[dict[str, Any]]:
    """Return one raw sample per (problem, sample index): a chain of attempts with a sliding context window."""
    from mrt_star.formats.prompts import ATTEMPT_SEPARATOR as SEP

    chains = [{"item": it, "sample_index": s, "attempts": [], "tokens": [], "finish_reason": "stop", "open": True}
              for it in items for s in range(cfg.n)]
    for attempt in range(cfg.max_attempts):
        active = [ch for ch in chains if ch["open"]]
        if not active:
            break
        requests = []
        for ch in active:
            recent = ch["attempts"][-cfg.window :] if cfg.window > 0 else []
            requests.append(_assistant(ch["item"]["prompt"], SEP.join(recent) + SEP if recent else ""))
        outputs = engine.generate(requests, _params(cfg, 1, seed + attempt, stop=(SEP,)))
        for ch, (c,) in zip(active, outputs, strict=True):
            ch["attempts"].append(c.text)
            ch["tokens"].append(c.completion_tokens)
            ch["finish_reason"] = c.finish_reason
            # Another attempt only when the model asked for one by writing the separator.
            wants_more = c.finish_reason == "stop" and (c.stop_reason == SEP or SEP in (c.stop_reason or ""))
            ch["open"] = wants_more
    return [{"item": ch["item"], "sample_index": ch["sample_index"], "completion": SEP.join(ch["attempts"]),
             "attempts": ch["tokens"], "generated_tokens": sum(ch["tokens"]), "finish_reason": ch["finish_reason"]}
            for ch in chains]


def _episode_token_counts(engine: Any, raw: dict[str, Any], episodes: list[str]) -> list[int]:
    if raw["attempts"] is not None and len(raw["attempts"]) == len(episodes):
        return list(raw["attempts"])  # linearized: what each attempt's call generated
    counts = engine.count_tokens(episodes)
    given_tokens = raw["item"].get("given_tokens")
    if given_tokens is not None and counts:
        counts[0] = int(given_tokens)
    return counts


def _writes_answer(text: str) -> bool:
    """Return True when an episode may contain an answer (so the prefix ending with it is graded)."""
    try:
        from mrt_star.grading import extract_answer
    except ImportError:  # no extractor: grade every prefix
        return True
    return extract_answer(text) is not None


def grade_samples(engine: Any, grader: Any, cfg: EvalConfig, raw: list[dict[str, Any]], label: str,
                  model_path: str) -> list[dict[str, Any]]:
    """Return the per-sample rows: episodes, J at every episode end, final and first-attempt correctness."""
    from mrt_star.formats.episodes import split_episodes

    def fmt_of(r: dict[str, Any]) -> str:
        return "linearized" if cfg.mode == "linearized" else r["item"].get("format") or cfg.format

    split = [split_episodes(r["completion"], fmt_of(r)) if r["completion"] else [""] for r in raw]
    # A prefix's answer is the last one written, so only prefixes whose newest episode writes an answer
    # (and the whole trace) are graded; the others repeat the previous prefix's result.
    pairs, plans = [], []
    for r, episodes in zip(raw, split, strict=True):
        plan, acc = [], ""
        for j, piece in enumerate(episodes):
            acc += piece
            if j == len(episodes) - 1 or j == 0 or _writes_answer(piece):
                plan.append(len(pairs))
                pairs.append((acc, r["item"]["answer"]))
            else:
                plan.append(plan[-1])
        plans.append(plan)
    results = grader.grade_many(pairs)
    rows = []
    for r, episodes, plan in zip(raw, split, plans, strict=True):
        graded = [results[i] for i in plan]
        counts = _episode_token_counts(engine, r, episodes)
        j_tokens, total = [], 0
        for t in counts:
            total += int(t)
            j_tokens.append(float(total))
        final, first = graded[-1], graded[0]
        item = r["item"]
        given_tokens = int(item.get("given_tokens") or (counts[0] if item.get("given") else 0))
        rows.append({
            "model": label, "model_path": model_path, "mode": cfg.mode, "format": fmt_of(r),
            "item_id": item["item_id"], "problem_id": item["problem_id"], "problem": item["problem"],
            "answer": item["answer"], "sample_index": r["sample_index"], "prompt": item["prompt"],
            "completion": r["completion"],
            "episodes": [{"text": e, "num_tokens": int(t), "answer": g.extracted, "correct": bool(g.correct)}
                         for e, t, g in zip(episodes, counts, graded, strict=True)],
            "num_tokens": int(r["generated_tokens"]) + (given_tokens if item.get("given") else 0),
            "given_tokens": given_tokens if item.get("given") else 0,
            "finish_reason": r["finish_reason"], "final_answer": final.extracted, "correct": bool(final.correct),
            "first_attempt_correct": None if first.extracted is None else bool(first.correct),
            "j_tokens": j_tokens, "j_values": [1.0 if g.correct else 0.0 for g in graded],
        })
    return rows


def add_budget_forcing(engine: Any, grader: Any, cfg: EvalConfig, rows: list[dict[str, Any]], seed: int) -> None:
    """Add `forced_tokens`/`forced_values` to each row: J at each budget cut from forced answers."""
    from mrt_star.eval.metrics import budget_cuts
    from mrt_star.formats.prompts import forced_completion_text, forced_prefix

    tokenizer = engine.tokenizer
    requests, where = [], []
    for i, row in enumerate(rows):
        ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        cuts = budget_cuts(len(ids), _budgets(cfg))
        row["forced_tokens"], row["forced_values"] = [float(c) for c in cuts], []
        for c in cuts:
            prefix = tokenizer.decode(ids[:c]) if c < len(ids) else row["completion"]
            requests.append(_assistant(row["prompt"], forced_prefix(prefix, row["format"])))
            where.append(i)
    if not requests:
        return
    outputs = engine.generate(requests, _params(cfg, cfg.forcing_k, seed, max_new_tokens=cfg.forcing_max_new_tokens))
    pairs = [(forced_completion_text(rows[i]["format"], c.text), rows[i]["answer"])
             for i, group in zip(where, outputs, strict=True) for c in group]
    flat = iter(grader.grade_many(pairs))
    for i, group in zip(where, outputs, strict=True):
        flags = [next(flat).correct for _ in group]
        rows[i]["forced_values"].append(sum(map(bool, flags)) / len(flags) if flags else 0.0)


def sample_schema():
    """Return the parquet schema of the per-sample rows (fixed, so every shard loads as one dataset)."""
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    episode = pa.struct([("text", pa.string()), ("num_tokens", pa.int64()), ("answer", pa.string()),
                         ("correct", pa.bool_())])
    return pa.schema([
        ("model", pa.string()), ("model_path", pa.string()), ("mode", pa.string()), ("format", pa.string()),
        ("item_id", pa.string()), ("problem_id", pa.string()), ("problem", pa.string()), ("answer", pa.string()),
        ("sample_index", pa.int64()), ("prompt", pa.list_(message)), ("completion", pa.string()),
        ("episodes", pa.list_(episode)), ("num_tokens", pa.int64()), ("given_tokens", pa.int64()),
        ("finish_reason", pa.string()), ("final_answer", pa.string()), ("correct", pa.bool_()),
        ("first_attempt_correct", pa.bool_()), ("j_tokens", pa.list_(pa.float64())),
        ("j_values", pa.list_(pa.float64())), ("forced_tokens", pa.list_(pa.float64())),
        ("forced_values", pa.list_(pa.float64())),
    ])


# --- metrics ------------------------------------------------------------------------------------------


def _key(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def compute_metrics(rows: list[dict[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    """Return one model's metrics from its per-sample rows (see the module docstring for J and regret)."""
    from mrt_star.eval import metrics as M

    if not rows:
        raise UserError("no samples to score")
    budgets = _budgets(cfg)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["item_id"]].append(row)
    for g in groups.values():
        g.sort(key=lambda r: r["sample_index"])
    n = min(len(g) for g in groups.values())
    problems = []
    for g in groups.values():
        g = g[:n]
        flags = [r["correct"] for r in g]
        problems.append((M.vote_keys([r["final_answer"] for r in g], flags), flags, [r["num_tokens"] for r in g]))
    curves = [(r["j_tokens"], r["j_values"]) for r in rows]
    # The plot's token axis reaches the largest budget or the longest trace, whichever is longer.
    horizon = max([max(budgets), *[r["j_tokens"][-1] for r in rows if r["j_tokens"]]])
    grid = M.token_grid(horizon, 64)
    ks = list(range(1, n + 1))
    maj_points = M.maj_vs_tokens(problems, ks, cfg.maj_mode)
    longest = max(len(r["j_values"]) for r in rows)
    j_by_episode = [sum(r["j_values"][min(j, len(r["j_values"]) - 1)] for r in rows) / len(rows) for j in range(longest)]
    out: dict[str, Any] = {
        "model": rows[0]["model_path"], "mode": cfg.mode, "format": rows[0]["format"], "problems": len(groups),
        "samples": len(rows), "n": n,
        "accuracy": sum(r["correct"] for r in rows) / len(rows),
        "first_attempt_accuracy": sum(bool(r["first_attempt_correct"]) for r in rows) / len(rows),
        "mean_tokens": sum(r["num_tokens"] for r in rows) / len(rows),
        "mean_episodes": sum(len(r["j_values"]) for r in rows) / len(rows),
        "no_answer_rate": sum(r["final_answer"] is None for r in rows) / len(rows),
        "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows),
        "pass@k": {str(k): M.mean_pass_at_k([(n, sum(f)) for _, f, _ in problems], k) for k in cfg.k if 1 <= k <= n},
        "maj@k": {str(p["k"]): p["maj"] for p in maj_points},
        "maj_vs_tokens": maj_points,
        "accuracy_vs_tokens": {"tokens": grid, "accuracy": M.mean_curve(curves, grid)},
        "accuracy_at_budget": {_key(b): M.mean_curve(curves, [b])[0] for b in budgets},
        "j_by_episode": j_by_episode,
        "regret": {_key(b): v for b, v in M.mean_regret(curves, budgets).items()},
        "maj_regret": {_key(b): v for b, v in M.maj_curve_regret(maj_points, budgets).items()},
        "episode_regret_vs_maj": M.episode_regret(j_by_episode, [p["maj"] for p in maj_points]),
    }
    if rows[0].get("forced_tokens") is not None:
        forced = [(r["forced_tokens"], r["forced_values"]) for r in rows if r.get("forced_tokens")]
        out["forced_regret"] = {_key(b): v for b, v in M.mean_regret(forced, budgets).items()} if forced else {}
        out["forced_accuracy_at_budget"] = {_key(b): M.mean_curve(forced, [b])[0] for b in budgets} if forced else {}
    return out


# --- the stage ----------------------------------------------------------------------------------------


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
        from mrt_star.engines import load_engine

        engine = load_engine(cfg.engine, model_path, **cfg.engine_options)
        try:
            for i, part in todo:
                progress.update(task, info=f"{label}: shard {i + 1}/{len(pieces)}")
                seed = cfg.seed + i
                sampler = sample_linearized if cfg.mode == "linearized" else sample_standard
                rows = grade_samples(engine, grader, cfg, sampler(engine, cfg, part, seed), label, model_path)
                if cfg.budget_forcing:
                    add_budget_forcing(engine, grader, cfg, rows, seed)
                store.write_shard(index * SHARDS_PER_MODEL + i, rows, schema=sample_schema())
                progress.update(task, advance=1)
        finally:
            engine.close()
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
    from mrt_star.store import Store, fingerprint

    if cfg.n < 1:
        raise UserError(f"n: must be at least 1, got {cfg.n}")
    if cfg.mode == "linearized" and (cfg.max_attempts < 1 or cfg.window < 0):
        raise UserError("linearized mode needs max_attempts >= 1 and window >= 0")
    names = model_names(cfg)
    labels = model_labels(cfg, names)
    items = load_items(cfg)
    budgets = _budgets(cfg)
    if not items:
        raise UserError("input: nothing to evaluate")
    out = Path(cfg.output or "outputs/eval")
    paths = [resolve_model(name) for name in names]
    config = {**config_to_dict(cfg), "resolved_models": paths,
              "model_fingerprints": [_model_fingerprint(p) for p in paths], "template_used": _default_template(cfg)}
    source = cfg.input if cfg.mode == "history" else {"items": [(it["item_id"], it["answer"]) for it in items]}
    store = Store(out, "eval", config, fingerprint(source), overwrite=cfg.overwrite)

    from mrt_star.grading import Grader

    results: dict[str, dict[str, Any]] = {}
    shards_per_model = -(-len(items) // cfg.shard_size)
    with Grader(cfg.grading) as grader, stage_progress() as progress:
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
    top = _key(max(budgets))
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
