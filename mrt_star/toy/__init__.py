"""The embedded toy world: procedural problems and a tiny character-level model built locally.

`resolve_toy_model("toy")` returns the folder of the default build (building it on first use, a few
minutes on a laptop CPU); `"toy-micro"` is a much smaller build for fast tests. `"toy-bpe"` (Qwen2,
Qwen2.5 BPE, R1-distill template) and `"toy-bpe-llama"` (Llama, same BPE, Llama-3.1 template) are tiny
real-architecture models for testing real tokenizers and templates (`mrt_star.toy.bpe`). This import is
cheap: torch is only loaded when a build is needed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TOY_VARIANTS = {"toy": "default", "toy-micro": "micro"}
BPE_VARIANTS = ("toy-bpe", "toy-bpe-llama")


def default_cache_dir() -> Path:
    """Return the cache root: `$MRT_STAR_CACHE` or `~/.cache/mrt-star`."""
    root = os.environ.get("MRT_STAR_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "mrt-star"


def resolve_toy_model(name: str) -> Path:
    """Return the folder of the toy model called `name` (see TOY_VARIANTS, BPE_VARIANTS), building it if missing."""
    if name in BPE_VARIANTS:
        from mrt_star.toy.bpe import resolve_bpe_model

        return resolve_bpe_model(name)
    if name not in TOY_VARIANTS:
        raise ValueError(f"unknown toy model {name!r}; choose one of {', '.join([*TOY_VARIANTS, *BPE_VARIANTS])}")
    from mrt_star.toy.build import ToyBuildConfig, build_dir, is_built, run_toy_build

    cfg = ToyBuildConfig(variant=TOY_VARIANTS[name])
    folder = build_dir(cfg)
    if is_built(folder):
        return folder
    print(f"mrt-star: building the {name!r} model into {folder} (first use; cached afterwards)", file=sys.stderr)
    return run_toy_build(cfg)


__all__ = ["BPE_VARIANTS", "TOY_VARIANTS", "default_cache_dir", "resolve_toy_model"]
