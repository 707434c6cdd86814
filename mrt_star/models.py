"""Model names → loadable folders: the embedded toy models by name, anything else as given."""

from __future__ import annotations

from pathlib import Path

# toy, toy-micro: the character-level toy world; toy-bpe, toy-bpe-llama: tiny real-architecture models
# with Qwen2.5's BPE and the R1-distill / Llama-3.1 chat templates (mrt_star.toy.bpe), for plumbing tests.
TOY_MODELS = ("toy", "toy-micro", "toy-bpe", "toy-bpe-llama")


def resolve_model(name: str) -> str:
    """Return a path or Hub id that `from_pretrained` accepts; toy names build the toy model on first use."""
    if name in TOY_MODELS:
        from mrt_star.toy import resolve_toy_model

        return str(resolve_toy_model(name))
    path = Path(name).expanduser()
    return str(path) if path.exists() else name
