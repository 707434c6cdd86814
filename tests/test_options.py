"""Option groups: one name, default, help and choices per concept in every verb; renamed options; dict options;
problem-source columns; `run` failing fast on a bad recipe; schemas; readable logs; no import cycle."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from mrt_star.cli import VERBS
from mrt_star.config import ConfigError, build_config, parse_config

# Concepts whose default is the stage's own on purpose (the unit or the role differs), said in their help.
STAGE_OWN = {"seed", "shard_size", "budgets", "output", "input", "dry_run"}
# The toy world's own tools write a model or a file, not a stage folder: their I/O flags say so.
TOOL_VERBS, TOOL_OWN = {"toy build", "toy problems", "push"}, {"overwrite"}


def _config_classes() -> dict[str, type]:
    out = {}
    for name, verb in VERBS.items():
        out[name] = getattr(importlib.import_module(verb.module), verb.config)
    return out


def _default(f):
    return f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else "<required>")


def test_every_concept_has_one_name_default_help_and_choices_across_verbs():
    seen: dict[str, tuple[str, object, str, tuple]] = {}
    shared = set()
    for verb, cls in _config_classes().items():
        for f in fields(cls):
            if f.name in STAGE_OWN or (verb in TOOL_VERBS and f.name in TOOL_OWN):
                continue
            spec = (_default(f), f.metadata.get("help"), f.metadata.get("choices"))
            if f.name in seen:
                shared.add(f.name)
                assert seen[f.name][1:] == spec, f"{f.name!r} differs between {seen[f.name][0]} and {verb}"
            else:
                seen[f.name] = (verb, *spec)
    # The groups really are shared: the engine, grading, prompt and prover concepts appear in several verbs.
    assert {"engine", "engine_options", "grading", "prompt_template", "prover_k", "model", "problem_column"} <= shared


@pytest.mark.parametrize("verb, argv, new", [
    ("score", ["--k", "4"], "--prover-k"),
    ("score", ["--max-new-tokens", "4"], "--prover-max-new-tokens"),
    ("eval", ["--template", "open"], "--prompt-template"),
    ("eval", ["--k", "1,2"], "--k-values"),
    ("eval", ["--forcing-k", "2"], "--prover-k"),
    ("finetune", ["--dtype", "bfloat16"], "--master-dtype"),
])
def test_old_flag_names_fail_naming_the_new_one(verb, argv, new):
    cls = _config_classes()[verb]
    with pytest.raises(ConfigError, match=f"was renamed to {new}"):
        parse_config(cls, argv)


def test_old_recipe_keys_fail_naming_the_new_one(tmp_path):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("template: open\n")
    with pytest.raises(ConfigError, match="'template' was renamed to 'prompt_template'"):
        parse_config(_config_classes()["eval"], ["--config", str(recipe)])


@pytest.mark.parametrize("text", ['{"max_grad_norm": 1.0, "optim": "adamw_torch"}', "{max_grad_norm: 1.0, optim: adamw_torch}"])
def test_dict_options_take_json_or_yaml_flow_text(text):
    cfg = parse_config(_config_classes()["finetune"], ["--extra", text])
    assert cfg.extra == {"max_grad_norm": 1.0, "optim": "adamw_torch"}
    run = parse_config(_config_classes()["run"], ["--generate", "{n: 2, format: open}", "--score", '{"prover_k": 2}'])
    assert run.generate == {"n": 2, "format": "open"} and run.score == {"prover_k": 2}
    gen = parse_config(_config_classes()["generate"], ["--engine-options", '{"attn_implementation": "sdpa"}'])
    assert gen.engine_kwargs()["attn_implementation"] == "sdpa"


@pytest.mark.parametrize("text", ["[1, 2]", "max_grad_norm", "{unclosed"])
def test_dict_options_refuse_what_is_not_a_mapping(text):
    with pytest.raises(ConfigError, match="extra: expected a mapping"):
        parse_config(_config_classes()["finetune"], ["--extra", text])


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "n: must be at least 1, got 0"),
    (["--limit", "0"], "limit: must be at least 1, got 0"),
    (["--limit", "-1"], "limit: must be at least 1, got -1"),
    (["--top-p", "0"], "top_p: must be greater than 0"),
    (["--temperature", "-0.5"], "temperature: must be at least 0"),
])
def test_numeric_ranges_are_checked_at_parse_time(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_config_classes()["generate"], argv)


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_help_works(verb):
    done = subprocess.run([sys.executable, "-m", "mrt_star.cli", *verb.split(), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: mrt-star" in done.stdout, done.stderr


def test_help_shows_the_option_groups():
    help_text = subprocess.run([sys.executable, "-m", "mrt_star.cli", "score", "--help"], capture_output=True,
                               text=True).stdout
    for title in ("Input and output", "Prover", "Episodes", "Engine", "Grading", "options of this verb"):
        assert title in help_text
    assert "--prover-k" in help_text and "--k " not in help_text
    filter_help = subprocess.run([sys.executable, "-m", "mrt_star.cli", "filter", "--help"], capture_output=True,
                                 text=True).stdout
    assert "--model" not in filter_help  # filter never loads a model


def test_problem_columns_are_named_on_the_command_line(tmp_path, micro_model):
    rows = [{"id": f"q{i}", "question": f"Compute {i} + {i}. Put the answer in \\boxed{{}}.", "final_answer": str(2 * i),
             "answer": "unrelated", "difficulty": "easy", "solution": "unrelated \\boxed{0}"} for i in range(1, 4)]
    src = tmp_path / "set.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "traces"
    done = subprocess.run([sys.executable, "-m", "mrt_star.cli", "generate", "--input", str(src), "--model", str(micro_model),
                           "--problem-column", "question", "--answer-column", "final_answer", "--id-column", "id",
                           "--limit", "2", "--n", "1", "--max-new-tokens", "16", "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from mrt_star.store import read_rows

    got = sorted((r["problem_id"], r["problem"][:9], r["answer"]) for r in read_rows(out))
    assert got == [("q1", "Compute 1", "2"), ("q2", "Compute 2", "4")]


def test_column_detection_failure_lists_the_columns_found(tmp_path):
    from mrt_star.data import ProblemError, load_problems

    src = tmp_path / "set.jsonl"
    src.write_text(json.dumps({"text": "1+1", "target": "2", "meta": 1}) + "\n")
    with pytest.raises(ProblemError, match="columns are text, target, meta; name it with --problem-column"):
        load_problems(str(src))
    with pytest.raises(ProblemError, match="no column 'id' for the id; columns are text, target, meta"):
        load_problems(str(src), problem_column="text", answer_column="target", id_column="id")


def test_a_dataset_whose_only_split_is_test_is_read_without_naming_it():
    from mrt_star.data import ProblemError, pick_split

    assert pick_split({"test": "T"}, "x") == "T"
    assert pick_split({"train": "A", "test": "T"}, "x") == "A"
    with pytest.raises(ProblemError, match=r"several splits \(dev, test\) and none is 'train'; choose one with --split"):
        pick_split({"dev": 1, "test": 2}, "x")


def test_run_with_a_misspelt_key_fails_before_sampling(tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text(Path("recipes/toy/run.yaml").read_text().replace("  learning_rate: 1.0e-3", "  learning_rat: 1.0e-5"))
    out = tmp_path / "run"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mrt_star.cli", "run", "--config", str(recipe), "--output", str(out)],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 2 and "learning_rat" in done.stderr and "did you mean 'learning_rate'" in done.stderr
    assert done.stderr.count("\n") == 1 and elapsed < 5, (elapsed, done.stderr)
    assert not out.exists()  # nothing sampled, nothing written


@pytest.mark.parametrize("section, text, message", [
    ("score", "k: 4", "'k' was renamed to 'prover_k'"),
    ("generate", "format: essay", "format: 'essay' is not one of backtrack, linearized, open"),
    ("filter", "rule: star", "'rule' is set by the loop for each round"),
    ("generate", "n: 0", "n: must be at least 1"),
])
def test_run_checks_every_section_before_round_one(section, text, message):
    from mrt_star.config import load_yaml
    from mrt_star.loop import RunConfig, check_run

    values = load_yaml("recipes/toy/run.yaml")
    key, value = text.split(": ")
    values[section] = {**values.get(section, {}), key: value}
    with pytest.raises(Exception, match=message):
        check_run(build_config(RunConfig, values))


def test_run_refuses_a_model_that_cannot_exist():
    from mrt_star.errors import UserError
    from mrt_star.loop import RunConfig, check_run

    with pytest.raises(UserError, match="no such folder"):
        check_run(RunConfig(model="./no/such/model"))
    with pytest.raises(UserError, match="neither"):
        check_run(RunConfig(model="not a model id!"))


def test_every_written_column_is_documented_with_its_arrow_type():
    import pyarrow as pa

    from mrt_star import schemas
    from mrt_star.filter import sft_schema
    from mrt_star.generate import traces_schema
    from mrt_star.score import scored_schema

    assert traces_schema().names == list(schemas.TRACES)
    assert sft_schema().names == list(schemas.SFT)
    scored = scored_schema(traces_schema())
    assert set(scored.names) == set(schemas.SCORED)
    for name in scored.names:
        assert scored.field(name).type == schemas.arrow_type(schemas.SCORED[name].type)
    for columns in (*schemas.DATASETS.values(), schemas.EVAL_METRICS):
        assert all(col.meaning and isinstance(col.meaning, str) for col in columns.values())
    assert isinstance(schemas.arrow_schema(schemas.EVAL_SAMPLES), pa.Schema)


def test_readme_column_tables_come_from_the_schema_module():
    assert schemas_markdown() in Path("README.md").read_text()


def schemas_markdown() -> str:
    from mrt_star.schemas import markdown

    return markdown()


def test_tables_keep_full_column_names_when_stdout_is_not_a_terminal():
    code = ("from mrt_star.console import comparison_table; comparison_table('t', ['model', 'first-attempt accuracy', "
            "'regret@300 tokens', 'maj@4 accuracy', 'pass@max k', 'mean tokens per sample'], [['base', 0.5, 0.1, 0.2, 0.3, 99.0]])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    for name in ("first-attempt accuracy", "regret@300 tokens", "mean tokens per sample"):
        assert name in done.stderr, done.stderr


def test_loading_a_model_prints_no_library_progress_bar(micro_model):
    code = f"from mrt_star.engines import load_engine; e = load_engine('transformers', {str(micro_model)!r}, device='cpu'); e.close()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "it/s]" not in done.stderr


def _imports(path: Path) -> set[str]:
    """Return the mrt_star modules a module imports at module level (what can form an import cycle)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mrt_star"):
            for alias in node.names:  # `from pkg import sub` imports the submodule when there is one
                sub = Path(*f"{node.module}.{alias.name}".split("."))
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                out.add(f"{node.module}.{alias.name}" if is_module else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mrt_star")}
    return out


def test_no_import_cycle_and_no_oversized_module():
    root = Path("mrt_star")
    graph = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        graph[name] = _imports(path)
        assert len(path.read_text().splitlines()) <= 440, f"{path} is over ~400 lines"
    # `from pkg import sub` depends on the submodule, not on the package's __init__.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if d != name}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if nxt in graph and not state.get(nxt):
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in graph:
        if not state.get(node):
            visit(node, [node])


def test_rows_without_answer_can_be_skipped_from_the_command_line(tmp_path):
    from mrt_star.data import ProblemError, load_problems, problem_source

    src = tmp_path / "set.jsonl"
    src.write_text(json.dumps({"problem": "1+1", "answer": 2}) + "\n" + json.dumps({"problem": "2+2", "answer": None}) + "\n")
    refused = parse_config(_config_classes()["generate"], ["--input", str(src)])
    with pytest.raises(ProblemError, match="row 1"):
        load_problems(problem_source(refused))
    skipping = parse_config(_config_classes()["generate"], ["--input", str(src), "--skip-rows-without-answer"])
    assert [r["answer"] for r in load_problems(problem_source(skipping))] == ["2"]
