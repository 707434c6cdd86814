"""The `mrt-star` command: a thin shell that turns a command line into a stage config and calls the stage.

No logic lives here. Stage modules are imported only when their verb runs, so `mrt-star --help`
stays fast (torch, transformers and trl are imported inside the stages).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from mrt_star import __version__


@dataclass(frozen=True)
class Verb:
    """Where a verb's config dataclass and stage function live."""

    module: str
    config: str
    function: str
    summary: str
    positional: tuple[str, ...] = ()


VERBS: dict[str, Verb] = {
    "generate": Verb("mrt_star.generate", "GenerateConfig", "run_generate",
                     "sample backtracking, linearized or open-ended reasoning traces for problems"),
    "score": Verb("mrt_star.score", "ScoreConfig", "run_score",
                  "cut traces into episodes and measure each episode's progress with a prover"),
    "filter": Verb("mrt_star.filter", "FilterConfig", "run_filter",
                   "keep traces by rule (mrt: episodes that make progress, star: correct, shortest) as an SFT dataset"),
    "finetune": Verb("mrt_star.finetune", "FinetuneConfig", "run_finetune",
                     "fine-tune a model on a filtered SFT dataset with TRL (full or LoRA)"),
    "run": Verb("mrt_star.loop", "RunConfig", "run_loop",
                "the multi-round loop: generate, score, filter, fine-tune, repeat with the new model"),
    "eval": Verb("mrt_star.eval.stage", "EvalConfig", "run_eval",
                 "pass@k, maj@k vs tokens, cumulative regret and plots for one or more models"),
    "grade": Verb("mrt_star.grade", "GradeConfig", "run_grade",
                  "grade a JSONL of completions against references; agreement with labels per kind"),
    "push": Verb("mrt_star.hub", "PushConfig", "run_push",
                 "upload a stage's dataset to the Hugging Face Hub with a generated dataset card",
                 positional=("input",)),
    "push-model": Verb("mrt_star.push_model", "PushModelConfig", "run_push_model",
                       "upload a fine-tuned model folder to the Hub with a card linking its dataset",
                       positional=("input",)),
    "toy problems": Verb("mrt_star.toy.problems", "ToyProblemsConfig", "run_toy_problems",
                         "write procedural toy problems (addition chains, fractions, linear equations)"),
    "toy build": Verb("mrt_star.toy.build", "ToyBuildConfig", "run_toy_build",
                      "build and warm-start the embedded tiny model (cached; --model toy uses it)"),
}


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = [f"mrt-star {__version__}: MRT-STaR — fine-tune LLMs on reasoning traces that make progress.", "",
             "usage: mrt-star VERB [--config RECIPE.yaml] [--flag value ...]", "", "verbs:"]
    lines += [f"  {name:<{width}}  {verb.summary}" for name, verb in VERBS.items()]
    lines += ["", "options:", "  -h, --help     show this message; `mrt-star VERB --help` shows a verb's flags",
              "  --version      print the version", "",
              "Every verb reads a YAML recipe with --config; flags override it (precedence: flags > recipe > defaults)."]
    return "\n".join(lines)


def _find_verb(argv: list[str]) -> tuple[str | None, list[str]]:
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in VERBS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv and argv[0] in VERBS:
        return argv[0], argv[1:]
    return None, argv


def _fail(verb: str, message: str, code: int) -> int:
    print(f"mrt-star {verb}: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run `mrt-star`; return the exit code (0 ok, 1 failed stage or bad input, 2 bad config/usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("MRT_STAR_LIBRARY_PROGRESS", "0") in ("", "0"):  # see console.quiet_library_progress
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"mrt-star {__version__}")
        return 0
    name, rest = _find_verb(argv)
    if name is None:
        hint = "toy problems | toy build" if argv[0] == "toy" else ", ".join(VERBS)
        return _fail(argv[0], f"unknown verb {' '.join(argv[:1])!r}; choose one of: {hint}", 2)
    verb = VERBS[name]
    try:
        module = importlib.import_module(verb.module)
    except ModuleNotFoundError as err:
        if err.name == verb.module:
            return _fail(name, "not implemented yet", 1)
        raise
    from mrt_star.config import parse_config
    from mrt_star.errors import UserError

    config_cls = getattr(module, verb.config)
    try:
        cfg = parse_config(config_cls, rest, prog=f"mrt-star {name}", description=verb.summary,
                           positional=verb.positional)
        getattr(module, verb.function)(cfg)
    except UserError as err:
        return _fail(name, str(err), err.exit_code)
    except KeyboardInterrupt:
        return _fail(name, "interrupted; re-run the same command to resume", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
