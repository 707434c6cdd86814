"""Every shipped recipe builds a valid config, its per-stage maps included (a typo fails here, not on a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrt_star.cli import VERBS
from mrt_star.config import build_config, load_yaml

RECIPES = sorted(p for p in Path("recipes").rglob("*.yaml") if "accelerate" not in p.parts)
STAGE_OF = {"generate": "generate", "score": "score", "filter": "filter", "finetune": "finetune", "eval": "eval"}


def _config_class(verb: str):
    import importlib

    spec = VERBS[verb]
    return getattr(importlib.import_module(spec.module), spec.config)


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p) for p in RECIPES])
def test_recipe_builds(recipe):
    values = load_yaml(recipe)
    verb = "run" if recipe.stem == "run" else STAGE_OF[recipe.stem]
    cfg = build_config(_config_class(verb), values, source=str(recipe))
    if verb == "run":
        from mrt_star.loop import check_run

        check_run(cfg, engines_installed=False)  # every stage section, built as the loop builds it


def test_recipes_exist_for_each_model_family():
    names = {str(p) for p in RECIPES}
    assert {"recipes/toy/run.yaml", "recipes/llama-3.1-8b-instruct/backtrack/run.yaml",
            "recipes/deepseek-r1-distill-qwen-1.5b/open/run.yaml"} <= names
