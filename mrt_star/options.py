"""Option groups: every concept a stage takes is declared once here, with one name, default, help and choices.

Stage configs compose the groups they need (`class GenerateConfig(StageIO, ModelOptions, EngineOptions, ...)`),
so `--help`, recipes and error messages say the same thing in every verb. Renamed options live in `RENAMED`
with their new name: an old recipe or flag fails with one line that names the replacement.

Cheap to import (no torch): the CLI builds parsers from these classes before any stage module loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mrt_star.config import option
from mrt_star.engines import ENGINES
from mrt_star.formats.prompts import FORMATS
from mrt_star.grading import GRADING_MODES, PERCENT_POLICIES

ESTIMATORS = ("sample", "likelihood", "adaptive")
BACKTRACK_UNITS = ("attempt", "step")
REGRET_AXES = ("thinking", "parity")  # mrt_star.progress.regret.REGRET_AXES (kept cheap to import)
DTYPES = ("auto", "float32", "bfloat16", "float16")

# Old option names → their new names, for every stage (a recipe or flag that uses one fails naming the new one).
RENAMED: dict[str, str] = {
    "template": "prompt_template",
    "forcing_k": "prover_k",
    "forcing_max_new_tokens": "prover_max_new_tokens",
    "data_parallel_size": "workers",  # model replicas are Ray workers now: --backend ray --workers N
}
# Renames that depend on the stage: score's `k`/`temperature`/... were the prover's, eval's `k` was pass@k's.
STAGE_RENAMED: dict[str, dict[str, str]] = {
    "score": {"k": "prover_k"},
    "eval": {"k": "k_values"},
}


@dataclass
class StageIO:
    """Input and output"""

    input: str | None = option(None, "where the stage reads: a previous stage's output folder or a problem set "
                               "(local .jsonl/.json/.parquet/.csv, a Hub dataset id, or 'toy')")
    output: str | None = option(None, "output folder (parquet shards + manifest.json)")
    limit: int | None = option(None, "use only the first N input rows", at_least=1)
    seed: int = option(0, "random seed")
    overwrite: bool = option(False, "replace an existing output made with a different config")


@dataclass
class ModelOptions:
    """Model"""

    model: str | None = option(None, "model: 'toy' (embedded, built on first use), 'toy-micro', a local folder or a "
                               "Hub id; omitted: 'toy' (score, finetune: the model that generated the traces)")

    def model_name(self, default: str = "toy") -> str:
        """Return the model to load: the one given, else `default`."""
        return self.model or default


@dataclass
class ProblemOptions:
    """Problem source (a local file or a Hub dataset; columns are auto-detected unless named)"""

    split: str | None = option(None, "Hub dataset split to read; omitted: 'train', or the only split when there is one "
                               "(MATH-500 has only 'test')")
    subset: str | None = option(None, "Hub dataset configuration (subset) name")
    problem_column: str | None = option(None, "column holding the problem text; omitted: the first of problem, "
                                        "question, prompt")
    answer_column: str | None = option(None, "column holding the reference answer; omitted: the first of answer, "
                                       "final_answer, solution (a solution's last \\boxed{} is taken)")
    id_column: str | None = option(None, "column holding a problem id; omitted: the first of problem_id, id, "
                                   "unique_id, else a hash of problem and answer")
    skip_rows_without_answer: bool = option(False, "skip (and count) problems whose answer is null or empty instead "
                                            "of refusing them")


@dataclass
class FormatOptions:
    """Trace format"""

    format: str = option("backtrack", "trace format: backtrack (attempt, backtrack line, revision), linearized "
                         "(a chain of complete attempts) or open (free thinking)", choices=FORMATS)
    max_attempts: int = option(3, "linearized: at most this many attempts per chain", at_least=1)


@dataclass
class PromptOptions:
    """Prompt"""

    prompt_template: str = option("auto", "user prompt: a template name from mrt_star/formats/prompts.py or text "
                                  "with {problem}; auto: toy-<format> for toy models, else the format's default")
    system_prompt: str | None = option(None, "system message put before the problem")


@dataclass
class SamplingOptions:
    """Sampling"""

    n: int = option(4, "traces sampled per problem", at_least=1)
    temperature: float = option(1.0, "sampling temperature (0: greedy)", at_least=0)
    top_p: float = option(1.0, "nucleus sampling: keep the smallest token set with this much probability",
                         above=0, at_most=1)
    max_new_tokens: int = option(512, "token cap per engine call (one attempt, one revision, a whole open trace)",
                                at_least=1)


@dataclass
class EngineOptions:
    """Engine"""

    engine: str = option("transformers", "sampling engine", choices=ENGINES)
    chat_template: str | None = option(None, "chat template (a Jinja file or template text) to use instead of the "
                                       "tokenizer's (score: omitted means the one the traces were generated with)")
    dtype: str = option("auto", "weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16",
                        choices=DTYPES)
    device: str = option("auto", "transformers engine: auto, cpu, cuda or cuda:N")
    batch_size: int = option(64, "transformers engine: sequences decoded together", at_least=1)
    tensor_parallel_size: int = option(1, "vllm engine: GPUs per model replica", at_least=1)
    engine_options: dict = option({}, "further engine options (JSON or YAML flow text on the command line), e.g. "
                                  "{gpu_memory_utilization: 0.8, max_model_len: 8192}; they win over the fields above")

    def engine_kwargs(self, seed: int | None = None) -> dict[str, Any]:
        """Return the keyword arguments of `load_engine` for the chosen engine (engine_options win)."""
        common: dict[str, Any] = {"dtype": self.dtype}
        if self.chat_template:
            common["chat_template"] = self.chat_template
        if self.engine == "transformers":
            common.update(device=self.device, batch_size=self.batch_size)
        else:
            common.update(tensor_parallel_size=self.tensor_parallel_size, seed=seed)
        return {**common, **self.engine_options}


@dataclass
class GradingOptions:
    """Grading"""

    grading: str = option("symbolic", "answer grading: symbolic (math-verify with our normalisation rules) or "
                          "hendrycks (string normalisation, parity with the reference numbers)", choices=GRADING_MODES)
    percent_policy: str = option("strict", "a percent on one side only: strict (25\\% matches 25 only) or lenient "
                                 "(also the ratio 0.25 or \\frac14)", choices=PERCENT_POLICIES)

    def grader_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of `mrt_star.grading.Grader` these options set."""
        return {"mode": self.grading, "percent": self.percent_policy}


@dataclass
class ProverOptions:
    """Prover (forced answers that estimate J after each prefix)"""

    prover_k: int = option(8, "forced answers sampled per prefix (parity: 8)", at_least=1)
    prover_temperature: float = option(0.7, "prover sampling temperature (parity: 0.6-0.7)", at_least=0)
    prover_top_p: float = option(1.0, "prover nucleus sampling", above=0, at_most=1)
    prover_max_new_tokens: int = option(64, "tokens per forced answer (toy default; parity for thinking models: 4096)",
                                       at_least=1)


@dataclass
class EstimatorOptions:
    """Estimator (how J is computed from the prover)"""

    estimator: str = option("sample", "how J is estimated: sample (K graded forced answers, parity), likelihood "
                            "(exp log-prob of the reference answer after the force text) or adaptive (forced answers "
                            "two at a time until J is settled, at most K)", choices=ESTIMATORS)
    grade_prefix_too: bool = option(False, "parity flag: grade prefix + forced answer (a \\boxed{} in the prefix "
                                    "may count), as the reference notebooks did")
    share_prefixes: bool = option(True, "ask each distinct forced prefix once (e.g. a problem's empty prefix)")


@dataclass
class EpisodeOptions:
    """Episodes (how a trace is cut)"""

    min_paragraphs: int = option(3, "open format: paragraphs an episode needs before a marker may split it",
                                 at_least=1)
    max_splits: int = option(48, "open format: at most this many split points (parity 45-49)", at_least=0)
    group_size: int = option(1, "open format: merge consecutive episodes in groups of this size (parity 3-5)",
                            at_least=1)
    backtrack_unit: str = option("attempt", "backtrack format: one episode per attempt (parity) or per numbered step "
                                 "(J after every step; more prover calls)", choices=BACKTRACK_UNITS)
    paragraph_parity: bool = option(False, "parity flag, open format: paragraphs are exactly the pieces of "
                                    "splitting the thinking on '\\n\\n' (runs of 3+ newlines and empty "
                                    "paragraphs kept, as the reference keeps them)")


@dataclass
class RegretOptions:
    """Regret (the token axis J curves are integrated on)"""

    regret_axis: str = option("thinking", "token axis of the regret: thinking (thinking tokens of each prefix) or "
                              "parity (prompt + prefix + stop text + mean forced-answer tokens, as the reference "
                              "analysis counts)", choices=REGRET_AXES)


def episode_options(cfg: Any) -> EpisodeOptions:
    """Return just the episode options of a stage config (what `split_episodes` takes)."""
    return EpisodeOptions(min_paragraphs=cfg.min_paragraphs, max_splits=cfg.max_splits, group_size=cfg.group_size,
                          backtrack_unit=cfg.backtrack_unit,
                          paragraph_parity=getattr(cfg, "paragraph_parity", False))


@dataclass
class ScaleOptions:
    """Scale-out (engine replicas as Ray workers; see README's Scale-out section)"""

    backend: str = option("local", "where shards run: local (this process) or ray (N engine replicas as Ray actors; "
                          "pip install 'mrt-star[ray]')", choices=("local", "ray"))
    ray_address: str = option("", "ray backend: the cluster to use; empty: start a local one on 127.0.0.1 (stopped "
                              "at the end), auto: the cluster `ray start` runs on this machine, or an address")
    workers: int = option(1, "ray backend: engine replicas (Ray actors), each running whole shards; rows are the "
                          "same for any number of workers", at_least=1)
