"""The version floors in pyproject.toml cover every library API the code calls (and what is installed meets them)."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# package -> (lowest version that has every API we call, the API that sets it)
NEEDED = {
    "transformers": ("4.56", "from_pretrained(dtype=...) (finetune, engines); TrainingArguments.use_liger_kernel"),
    "trl": ("0.23", "SFTConfig.model_init_kwargs['dtype'] (0.23 renamed torch_dtype), max_length, "
                    "completion_only_loss, packing; the collator takes a `labels` column as is"),
    "accelerate": ("1.7", "recipes/accelerate/fsdp.yaml: fsdp_version 2 (FSDP2)"),
    "peft": ("0.18.1", "LoraConfig(target_modules='all-linear'); first release importable with transformers 5"),
    "huggingface-hub": ("0.30", "HfApi.create_commit with CommitOperationDelete, list_repo_files, create_branch"),
}
EXTRAS = {
    "vllm": ("0.19.1", "first vLLM on transformers 5 (earlier ones require transformers < 5)"),
    "deepspeed": ("0.16", "recipes/accelerate/zero3.yaml (ZeRO-3 through accelerate)"),
}


def _floors() -> dict[str, Version]:
    import tomllib

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    specs = list(project["dependencies"]) + [s for group in project["optional-dependencies"].values() for s in group]
    floors = {}
    for spec in specs:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)", spec)
        if match:
            floors[match.group(1).lower()] = Version(match.group(3))
    return floors


@pytest.mark.parametrize("package", [*NEEDED, *EXTRAS])
def test_each_floor_is_at_least_what_the_code_calls(package):
    needed, api = {**NEEDED, **EXTRAS}[package]
    floors = _floors()
    assert package in floors, f"{package} has no >= floor in pyproject.toml (needed for {api})"
    assert floors[package] >= Version(needed), f"{package}>={floors[package]} admits versions without {api}"


@pytest.mark.parametrize("package", list(NEEDED))
def test_the_installed_versions_meet_the_floors(package):
    assert Version(version(package)) >= _floors()[package]


def test_the_deepspeed_and_ray_extras_exist():
    import tomllib

    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert {"vllm", "deepspeed", "ray"} <= set(extras)
