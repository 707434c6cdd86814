"""Config precedence (flags > recipe > defaults) and one-line errors, on real YAML files."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from mrt_star.config import ConfigError, option, parse_config
from mrt_star.options import ModelOptions, StageIO


@dataclass
class DemoConfig(StageIO, ModelOptions):
    k: int = option(8, "prover samples per prefix")
    temperature: float = option(0.7, "sampling temperature")
    rule: str = option("mrt", "filter rule", choices=("mrt", "star", "shortest"))
    budgets: list[int] = option([64, 128], "token budgets")
    dry_run: bool = option(False, "only count")


@dataclass
class NeedsRepo:
    repo_id: str = option(help="Hub repo id ORG/NAME")


def test_defaults_recipe_and_flags_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("k: 4\ntemperature: 0.9\nrule: star\nbudgets: [10, 20, 30]\n")
    assert parse_config(DemoConfig, []).k == 8
    from_recipe = parse_config(DemoConfig, ["--config", str(recipe)])
    assert (from_recipe.k, from_recipe.temperature, from_recipe.rule, from_recipe.budgets) == (4, 0.9, "star", [10, 20, 30])
    both = parse_config(DemoConfig, ["--config", str(recipe), "--k", "2", "--budgets", "5,6", "--dry-run"])
    assert (both.k, both.temperature, both.budgets, both.dry_run) == (2, 0.9, [5, 6], True)
    assert parse_config(DemoConfig, ["--no-dry-run", "--limit", "3"]).limit == 3


@pytest.mark.parametrize(
    "recipe, argv, message",
    [
        ("kk: 3\n", [], "unknown key 'kk'; did you mean 'k'? valid keys: "),
        ("k: three\n", [], "k: expected int, got 'three'"),
        ("k: 2.5\n", [], "k: expected int"),
        ("rule: best\n", [], "rule: 'best' is not one of mrt, star, shortest"),
        ("", ["--temperature", "hot"], "temperature: expected float"),
        ("- a\n- b\n", [], "expected a mapping"),
        ("k: [\n", [], "not valid YAML"),
        ("", ["--bogus", "1"], "unrecognized arguments: --bogus"),
    ],
)
def test_errors_name_the_key(tmp_path, recipe, argv, message):
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_config(DemoConfig, ["--config", str(path), *argv])
    assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_missing_required_and_missing_recipe(tmp_path):
    with pytest.raises(ConfigError, match="repo_id: required; set it in the recipe or pass --repo-id"):
        parse_config(NeedsRepo, [])
    assert parse_config(NeedsRepo, ["--repo-id", "me/data"]).repo_id == "me/data"
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(NeedsRepo, ["--config", str(tmp_path / "absent.yaml")])


def test_help_lists_fields_with_their_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(DemoConfig, ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--k K" in out and "prover samples per prefix" in out and "choices: mrt, star, shortest" in out
