"""Sampling engines behind one protocol (`Engine`): `transformers` (CPU/GPU) and `vllm` (CUDA, optional).

Importing this package is cheap: torch, transformers and vLLM load only when an engine is created.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

from mrt_star.engines.base import (
    Completion,
    Engine,
    EngineStats,
    PromptTooLong,
    Request,
    SamplingParams,
)
from mrt_star.errors import UserError

ENGINES = ("transformers", "vllm")
VLLM_HINT = "pip install 'mrt-star[vllm]' (vLLM needs a CUDA GPU)"


def vllm_installed() -> bool:
    """Return True when the vllm package can be imported (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def available_engines() -> list[str]:
    """Return the engines that can run on this machine (vllm only when installed and CUDA is present)."""
    engines = ["transformers"]
    if vllm_installed():
        import torch

        if torch.cuda.is_available():
            engines.append("vllm")
    return engines


def _engine_class(kind: str) -> type:
    if kind == "transformers":
        from mrt_star.engines.transformers_engine import TransformersEngine

        return TransformersEngine
    if kind == "vllm":
        if not vllm_installed():
            raise UserError(f"engine 'vllm' is not installed: {VLLM_HINT}, or use --engine transformers")
        from mrt_star.engines.vllm_engine import VLLMEngine

        return VLLMEngine
    raise UserError(f"unknown engine {kind!r}; choose one of: {', '.join(ENGINES)}")


def engine_options(kind: str) -> list[str]:
    """Return the option names an engine accepts (its constructor's keyword arguments)."""
    params = inspect.signature(_engine_class(kind).__init__).parameters
    return [p for p in params if p not in ("self", "model") and params[p].kind != inspect.Parameter.VAR_KEYWORD]


def load_engine(kind: str, model: str, **options: Any) -> Engine:
    """Return a ready engine of `kind` for `model` (a path, a Hub id, or a toy model name).

    Options are the engine's constructor arguments; unknown ones raise UserError naming the valid ones.
    Options set to None are dropped, so callers can pass their config fields through unchanged.
    """
    from mrt_star.console import quiet_library_progress
    from mrt_star.models import resolve_model

    quiet_library_progress()
    cls = _engine_class(kind)
    options = {k: v for k, v in options.items() if v is not None}
    accepts_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    unknown = sorted(set(options) - set(engine_options(kind)))
    if unknown and not accepts_any:
        raise UserError(f"engine {kind!r}: unknown option {unknown[0]!r}; valid options: "
                        f"{', '.join(engine_options(kind))}")
    return cls(resolve_model(str(model)), **options)


__all__ = ["ENGINES", "Completion", "Engine", "EngineStats", "PromptTooLong", "Request", "SamplingParams",
           "available_engines", "engine_options", "load_engine", "vllm_installed"]
