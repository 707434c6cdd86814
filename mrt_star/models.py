"""Model names → loadable folders: the embedded toy models by name, anything else as given."""

from __future__ import annotations

from pathlib import Path

TOY_MODELS = ("toy", "toy-micro")


def resolve_model(name: str) -> str:
    """Return a path or Hub id that `from_pretrained` accepts; toy names build the toy model on first use."""
    if name in TOY_MODELS:
        from mrt_star.toy import resolve_toy_model

        return str(resolve_toy_model(name))
    path = Path(name).expanduser()
    return str(path) if path.exists() else name
