"""The columns of every dataset a stage writes, in one place (dataset cards and docs read these)."""

from __future__ import annotations

PROBLEMS = {
    "problem_id": "stable id: the source's id column, or a content hash of problem+answer",
    "problem": "the problem statement",
    "answer": "the reference answer (LaTeX, no \\boxed)",
}

TRACES = {
    **PROBLEMS,
    "format": "trace format: backtrack | linearized | open",
    "sample_index": "index of this trace among the problem's --n samples",
    "prompt": "chat messages before the assistant turn (list of {role, content})",
    "completion": "the full assistant trace text",
    "episodes": "list of {text, num_tokens}; the texts concatenate exactly to `completion`",
    "num_tokens": "completion tokens of the whole trace",
    "finish_reason": "stop | length",
    "final_answer": "answer extracted from the trace's last \\boxed{} (null if none)",
    "correct": "whether final_answer matches the reference under the run's grading mode",
    "first_attempt_correct": "whether the first episode alone ends in a correct answer (null if it has no answer)",
    "engine": "engine name", "model": "model path or id",
    "temperature": "sampling temperature", "top_p": "nucleus sampling", "max_new_tokens": "token cap per call",
    "seed": "sampling seed",
}

SCORED = {
    **TRACES,
    "episodes": "list of {text, num_tokens}: the trace cut with the score stage's episode options",
    "j_tokens": "token position of each prefix (0 for the empty prefix, then cumulative episode tokens)",
    "j_values": "J(j) for j=-1..L-1 under the run's estimator: the prover's success rate after each prefix "
                "(the last one is the forced answer after the whole trace)",
    "progress": "r_prg(j) = J(j) - J(j-1) for each episode",
    "cumulative_progress": "J(L-1) - J(-1)",
    "j_start": "J(-1): the prover on the empty prefix",
    "j_end": "J after the whole trace (open traces: closed with \\n</think>, or answered after their own </think>)",
    "forced_final_correct": "J after the whole trace > 0.5 (correct after forced termination)",
    "regret": "list of {budget, value}: normalized cumulative regret on the token axis",
    "estimator": "sample | likelihood: which estimator j_values holds",
    "j_sample": "J per prefix from K sampled forced answers (null if not run)",
    "j_likelihood": "J per prefix as exp(log-prob) of the reference answer after the force text (null if not run)",
    "prover_answers": "per prefix, the K forced answers: list of list of {text, answer, correct, num_tokens} "
                      "(empty lists under the likelihood estimator alone)",
    "prover_rollouts": "prover samples (+ likelihood passes) spent on this trace; a prefix shared with an earlier "
                       "trace of the shard (e.g. the empty prefix) is charged to that trace",
    "prover_tokens": "forced-answer tokens spent on this trace (same charging rule)",
    "prover_prompt_tokens": "rendered prompt+prefix tokens of the prefills charged to this trace (one per prefix)",
    "prover_skipped_prefixes": "prefixes too long for the prover's context; their J holds the previous value",
}

SFT = {
    "problem_id": "problem id",
    "prompt": "conversational prompt (list of {role, content}); loss is not taken on it",
    "completion": "conversational completion (one assistant message); the training target",
    "messages": "prompt + completion as one conversation",
    "prefix": "for suffix-only training: assistant text given as context (may be empty)",
    "suffix": "for suffix-only training: assistant text trained on",
    "rule": "filter rule that kept this row: mrt | star | shortest",
    "cumulative_progress": "the trace's cumulative progress (null when the input was not scored)",
    "num_tokens": "completion tokens",
    "format": "trace format: backtrack | linearized | open",
    "sample_index": "index of the trace among its problem's samples",
    "answer": "the reference answer",
    "j_end": "J after the whole (possibly trimmed) trace (null when the input was not scored)",
    "trimmed": "whether trailing episodes with negative progress were cut off",
}
