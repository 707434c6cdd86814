"""Every column of every dataset a stage writes, in one place: its Arrow type and a one-line meaning.

Stages write their shards with `arrow_schema(...)` of these tables (a fixed schema, so a shard whose column
happens to be all null still loads with the others), the dataset card lists them, and the README's column
tables are `python -m mrt_star.schemas` (a test keeps them equal). Types are named here and built lazily,
so importing this module does not import pyarrow.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple


class Column(NamedTuple):
    """One column: its type name (see `arrow_type`) and what it holds."""

    type: str
    meaning: str


PROBLEMS = {
    "problem_id": Column("string", "stable id: the source's id column, or a content hash of problem+answer"),
    "problem": Column("string", "the problem statement"),
    "answer": Column("string", "the reference answer (LaTeX, no \\boxed), kept as text exactly as the source wrote it"),
}

TRACES = {
    **PROBLEMS,
    "format": Column("string", "trace format: backtrack | linearized | open"),
    "sample_index": Column("int64", "index of this trace among the problem's --n samples"),
    "prompt": Column("messages", "chat messages before the assistant turn (list of {role, content})"),
    "completion": Column("string", "the full assistant trace text"),
    "episodes": Column("episodes", "list of {text, num_tokens}; the texts concatenate exactly to `completion`"),
    "num_tokens": Column("int64", "completion tokens of the whole trace"),
    "finish_reason": Column("string", "stop | length"),
    "final_answer": Column("string", "answer extracted from the trace's last \\boxed{} (null if none)"),
    "correct": Column("bool", "whether final_answer matches the reference under the run's grading mode"),
    "first_attempt_correct": Column("bool", "whether the first episode alone ends in a correct answer (null if it "
                                            "has no answer)"),
    "engine": Column("string", "engine name"),
    "model": Column("string", "model path or id"),
    "temperature": Column("float64", "sampling temperature"),
    "top_p": Column("float64", "nucleus sampling"),
    "max_new_tokens": Column("int64", "token cap per call"),
    "seed": Column("int64", "sampling seed"),
}

SCORED = {
    **TRACES,
    "episodes": Column("episodes", "list of {text, num_tokens}: the trace cut with the score stage's episode options"),
    "j_tokens": Column("list<int64>", "token position of each prefix (0 for the empty prefix, then cumulative "
                                      "episode tokens)"),
    "j_values": Column("list<float64>", "J(j) for j=-1..L-1 under the run's estimator: the prover's success rate "
                                        "after each prefix (the last one is the forced answer after the whole trace)"),
    "progress": Column("list<float64>", "r_prg(j) = J(j) - J(j-1) for each episode"),
    "cumulative_progress": Column("float64", "J(L-1) - J(-1)"),
    "j_start": Column("float64", "J(-1): the prover on the empty prefix"),
    "j_end": Column("float64", "J after the whole trace (open traces: closed with \\n</think>, or answered after "
                               "their own </think>)"),
    "forced_final_correct": Column("bool", "J after the whole trace > 0.5 (correct after forced termination)"),
    "regret": Column("regret", "list of {budget, value}: normalized cumulative regret on the token axis"),
    "estimator": Column("string", "sample | likelihood | adaptive: which estimator j_values holds"),
    "j_sample": Column("list<float64>", "J per prefix from K sampled forced answers (null if not run)"),
    "j_likelihood": Column("list<float64>", "J per prefix as exp(log-prob) of the reference answer after the force "
                                            "text (null if not run)"),
    "prover_answers": Column("prover_answers", "per prefix, the K forced answers (adaptive: 2..K): list of list of "
                                               "{text, answer, correct, num_tokens} (empty lists under the likelihood "
                                               "estimator alone)"),
    "prover_rollouts": Column("int64", "prover samples (+ likelihood passes) spent on this trace; a prefix shared "
                                       "with an earlier trace of the shard (e.g. the empty prefix) is charged to that trace"),
    "prover_tokens": Column("int64", "forced-answer tokens spent on this trace (same charging rule)"),
    "prover_prompt_tokens": Column("int64", "rendered prompt+prefix tokens of the prefills charged to this trace "
                                            "(one per prefix)"),
    "prover_skipped_prefixes": Column("int64", "prefixes too long for the prover's context; their J holds the "
                                               "previous value"),
}

SFT = {
    "problem_id": Column("string", "problem id"),
    "prompt": Column("messages", "conversational prompt (list of {role, content}); loss is not taken on it"),
    "completion": Column("messages", "conversational completion (one assistant message); the training target"),
    "messages": Column("messages", "prompt + completion as one conversation; a chat template that strips "
                                   "<think> from assistant turns (DeepSeek-R1's) drops the thinking from it, so train "
                                   "open traces from prompt/completion (`mrt-star finetune` does)"),
    "prefix": Column("string", "for suffix-only training: assistant text given as context (may be empty)"),
    "suffix": Column("string", "for suffix-only training: assistant text trained on"),
    "rule": Column("string", "filter rule that kept this row: mrt | star | shortest"),
    "cumulative_progress": Column("float64", "J at the kept end minus J(-1) (null when the input was not scored)"),
    "num_tokens": Column("int64", "completion tokens"),
    "format": Column("string", "trace format: backtrack | linearized | open"),
    "sample_index": Column("int64", "index of the trace among its problem's samples"),
    "answer": Column("string", "the reference answer"),
    "j_end": Column("float64", "J after the whole (possibly trimmed) trace (null when the input was not scored)"),
    "trimmed": Column("bool", "whether the trace was cut: at its J peak and closed with a forced answer (mrt, episode "
                              "level), or trailing negative-progress episodes removed (trace level, trailing: trim)"),
}

EVAL_SAMPLES = {
    "model": Column("string", "display label of the evaluated model"),
    "model_path": Column("string", "the model's resolved folder or Hub id"),
    "mode": Column("string", "eval mode: standard | linearized | history"),
    "format": Column("string", "trace format whose rules cut the episodes"),
    "item_id": Column("string", "what was sampled: the problem id, or problem_id#sample_index of a continued trace"),
    "problem_id": Column("string", "problem id"),
    "problem": Column("string", "the problem statement"),
    "answer": Column("string", "the reference answer"),
    "sample_index": Column("int64", "index of this sample among the item's --n samples"),
    "prompt": Column("messages", "chat messages before the assistant turn"),
    "completion": Column("string", "the assistant text (a continued trace's given prefix included)"),
    "episodes": Column("graded_episodes", "list of {text, num_tokens, answer, correct}: each episode and the "
                                          "grade of the answer written by its end"),
    "num_tokens": Column("int64", "tokens of the completion (given prefix included)"),
    "given_tokens": Column("int64", "history mode: tokens of the given prefix (0 otherwise)"),
    "finish_reason": Column("string", "stop | length"),
    "final_answer": Column("string", "answer extracted from the whole completion (null if none)"),
    "correct": Column("bool", "whether final_answer matches the reference"),
    "first_attempt_correct": Column("bool", "whether the first episode's answer is correct (null if it has none)"),
    "j_tokens": Column("list<float64>", "token position of each episode end"),
    "j_values": Column("list<float64>", "J at each episode end: 1 if the last answer written so far is correct"),
    "forced_tokens": Column("list<float64>", "budget forcing: token positions of the cuts (null when off)"),
    "forced_values": Column("list<float64>", "budget forcing: share of the prover's forced answers correct at each cut"),
    "prompt_tokens": Column("int64", "tokens of the rendered prompt (the parity regret axis starts after them)"),
    "history_variant": Column("string", "history mode: restart / backtrack-shared / backtrack-unshared / "
                                        "no-rollout (null otherwise)"),
    "stop_tokens": Column("int64", "budget forcing / extrapolation: tokens of the force (stop) text"),
    "forced_answer_tokens": Column("list<float64>", "budget forcing: mean tokens of the forced answers at each cut"),
    "extensions": Column("int64", "extrapolation: times the extension word was appended to continue the trace"),
    "extension_tokens": Column("list<float64>", "extrapolation: the budgets (thinking tokens) an answer was forced at"),
    "extension_values": Column("list<float64>", "extrapolation: share of forced answers correct at each budget"),
    "extension_answer_tokens": Column("list<float64>", "extrapolation: mean forced-answer tokens at each budget"),
}

# `metrics.json` of an eval output: {"models": {label: {key: value}}}; the keys of one model's entry.
EVAL_METRICS = {
    "model": Column("string", "the model's resolved folder or Hub id"),
    "mode": Column("string", "eval mode"),
    "format": Column("string", "trace format"),
    "problems": Column("int64", "items evaluated"),
    "samples": Column("int64", "samples graded"),
    "n": Column("int64", "samples per item used for the voting metrics"),
    "accuracy": Column("float64", "share of samples whose final answer is correct"),
    "first_attempt_accuracy": Column("float64", "share of samples whose first episode's answer is correct"),
    "mean_tokens": Column("float64", "mean completion tokens per sample"),
    "mean_episodes": Column("float64", "mean episodes per sample"),
    "no_answer_rate": Column("float64", "share of samples with no extractable answer"),
    "truncated_rate": Column("float64", "share of samples cut by the token cap"),
    "pass@k": Column("map<string,float64>", "unbiased pass@k for each k of --k-values"),
    "maj@k": Column("map<string,float64>", "majority-vote accuracy for every k up to n"),
    "maj_vs_tokens": Column("list<struct>", "maj@k against the mean tokens k samples spend: {k, tokens, maj}"),
    "accuracy_vs_tokens": Column("struct", "{tokens, accuracy}: the mean J curve on a token grid"),
    "accuracy_at_budget": Column("map<string,float64>", "the mean J curve at each regret budget"),
    "j_by_episode": Column("list<float64>", "mean J after episode j"),
    "regret": Column("map<string,float64>", "normalized cumulative regret at each budget (token axis)"),
    "maj_regret": Column("map<string,float64>", "regret of the maj@k-vs-tokens curve (the voting baseline)"),
    "episode_regret_vs_maj": Column("float64", "episode-axis regret against maj@(j+1)"),
    "forced_regret": Column("map<string,float64>", "budget forcing: regret of the prover J curve (when on)"),
    "forced_accuracy_at_budget": Column("map<string,float64>", "budget forcing: prover J at each budget (when on)"),
    "regret_axis": Column("string", "token axis of every regret: thinking or parity (prompt + prefix [+ stop text "
                                    "+ mean answer tokens])"),
    "episode_comparator": Column("list<float64>", "per episode j: max(maj@(j+1), J after episode j+1), the "
                                                  "appendix's comparator"),
    "episode_regret": Column("list<float64>", "cumulative episode-axis regret after episode j against the "
                                              "comparator: mean over i<=j of (comparator_i - J_i)"),
    "by_history_variant": Column("map<string,struct>", "history mode: per variant {samples, accuracy, "
                                                       "no_answer_rate, mean_tokens}"),
    "training_length": Column("int64", "extrapolation: the token cap of training (--max-new-tokens); budgets past "
                                       "it are extrapolated"),
    "extrapolation_accuracy": Column("map<string,float64>", "extrapolation: forced-answer accuracy at each budget"),
    "extrapolation_regret": Column("map<string,float64>", "extrapolation: regret of the forced J curve at each "
                                                          "budget"),
    "mean_extensions": Column("float64", "extrapolation: mean times the extension word was appended per sample"),
}

DATASETS: dict[str, dict[str, Column]] = {
    "generate": TRACES, "score": SCORED, "filter": SFT, "eval": EVAL_SAMPLES,
}


def arrow_type(name: str) -> Any:
    """Return the pyarrow type a column type name stands for."""
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    episode = [("text", pa.string()), ("num_tokens", pa.int64())]
    answer = pa.struct([("text", pa.string()), ("answer", pa.string()), ("correct", pa.bool_()),
                        ("num_tokens", pa.int64())])
    types = {
        "string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
        "list<int64>": pa.list_(pa.int64()), "list<float64>": pa.list_(pa.float64()),
        "messages": pa.list_(message), "episodes": pa.list_(pa.struct(episode)),
        "graded_episodes": pa.list_(pa.struct([*episode, ("answer", pa.string()), ("correct", pa.bool_())])),
        "regret": pa.list_(pa.struct([("budget", pa.float64()), ("value", pa.float64())])),
        "prover_answers": pa.list_(pa.list_(answer)),
    }
    return types[name]


def arrow_schema(columns: dict[str, Column]) -> Any:
    """Return the pyarrow schema of a dataset's columns, in their documented order."""
    import pyarrow as pa

    return pa.schema([(name, arrow_type(col.type)) for name, col in columns.items()])


def meanings(columns: dict[str, Column]) -> dict[str, str]:
    """Return {column: meaning} (what the dataset card prints)."""
    return {name: col.meaning for name, col in columns.items()}


def markdown() -> str:
    """Return the README's column tables: one per dataset, with each column's Arrow type and meaning."""
    titles = {"generate": "traces (`generate`)", "score": "scored traces (`score`: the trace columns, plus)",
              "filter": "SFT rows (`filter`)", "eval": "eval samples (`eval`)"}
    out = []
    for stage, columns in DATASETS.items():
        shown = {k: v for k, v in columns.items() if stage != "score" or k not in TRACES or k == "episodes"}
        out += [f"#### {titles[stage]}", "", "| column | Arrow type | meaning |", "|---|---|---|"]
        out += [f"| `{name}` | {_type_text(col.type)} | {col.meaning.replace('|', '/')} |" for name, col in shown.items()]
        out.append("")
    out += ["#### eval metrics (`metrics.json`, per model)", "", "| key | type | meaning |", "|---|---|---|"]
    out += [f"| `{name}` | {col.type} | {col.meaning.replace('|', '/')} |" for name, col in EVAL_METRICS.items()]
    return "\n".join(out) + "\n"


def _type_text(name: str) -> str:
    return f"`{arrow_type(name)}`".replace("|", "/")


if __name__ == "__main__":
    sys.stdout.write(markdown())
