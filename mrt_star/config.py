"""Stage configs as dataclasses, read from a YAML recipe and overridden by command-line flags.

Each field's `metadata["help"]` is its documentation and its `--help` line (as in TRL's configs).
Precedence: command line > YAML recipe > dataclass default. Every mistake (unknown key, wrong type,
missing required value, value outside `choices`) raises `ConfigError` with one line naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from mrt_star.errors import UserError

REQUIRED = object()  # marker default: the field must come from the recipe or the command line


class ConfigError(UserError, ValueError):
    """A recipe or command line that cannot become a config (exit code 2, like argparse)."""

    exit_code = 2


def option(default: Any = REQUIRED, help: str = "", choices: tuple | None = None, **kw) -> Any:
    """Return a dataclass field carrying its help text (and allowed values) for `--help` and errors."""
    meta = {"help": help, **({"choices": tuple(choices)} if choices else {})}
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class StageIO:
    """The I/O flags every stage verb shares."""

    input: str | None = option(None, "where the stage reads: a previous stage's output folder or a problem set "
                               "(local .jsonl/.json/.parquet/.csv, a Hub dataset id, or 'toy')")
    output: str | None = option(None, "output folder (parquet shards + manifest.json)")
    model: str = option("toy", "model: 'toy' (embedded, built on first use), 'toy-micro', a local folder or a Hub id")
    limit: int | None = option(None, "use only the first N input rows")
    seed: int = option(0, "random seed")
    overwrite: bool = option(False, "replace an existing output made with a different config")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """Return (the non-None type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), len(args) < len(typing.get_args(annotation))
    return annotation, False


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to the field's type, or raise ConfigError naming the field."""
    kind, nullable = _base_type(annotation)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and nullable):
        if nullable:
            return None
        raise ConfigError(f"{name}: a value is required (got none)")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typing.get_origin(kind) is list or kind is list:
            item = (typing.get_args(kind) or (str,))[0]
            items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
            return [_coerce(name, v.strip() if isinstance(v, str) else v, item) for v in items]
        if typing.get_origin(kind) is dict or kind is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        type_name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{name}: expected {type_name}, got {value!r}") from None
    return value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def build_config(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Return `cls(**values)` after checking keys, types, choices and required fields."""
    fields = _fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            value = _coerce(name, values[name], f.type)
        elif f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            value = REQUIRED
        if value is REQUIRED:
            raise ConfigError(f"{name}: required; set it in the recipe or pass --{name.replace('_', '-')}")
        choices = f.metadata.get("choices")
        if choices and value is not None:
            for v in value if isinstance(value, list) else [value]:
                if v not in choices:
                    raise ConfigError(f"{name}: {v!r} is not one of {', '.join(map(str, choices))}")
        kwargs[name] = value
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Return the mapping in a YAML recipe, or raise ConfigError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: no such file {str(p)!r}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {p}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: expected a mapping of key: value at the top level")
    return {k.replace("-", "_"): v for k, v in data.items()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other config error
        raise ConfigError(message)


def make_parser(cls: type, prog: str, description: str = "", positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """Return an argparse parser with `--config` and one `--flag` per field, help from field metadata."""
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", metavar="PATH.yaml", help="YAML recipe; flags given here override it")
    for name, f in _fields(cls).items():
        kind, _ = _base_type(f.type)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else REQUIRED)
        help_text = f.metadata.get("help", "")
        if default is REQUIRED:
            help_text += " (required)"
        kw = {"default": argparse.SUPPRESS, "help": help_text}
        if f.metadata.get("choices"):
            kw["help"] += f" [choices: {', '.join(map(str, f.metadata['choices']))}]"
        if default is not REQUIRED and default not in (None, [], {}):
            kw["help"] += f" (default: {default})"
        if name in positional:
            parser.add_argument(name, nargs="?", **kw)
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        if kind is bool:
            parser.add_argument(*flags, nargs="?", const="true", metavar="BOOL", **kw)
            parser.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_const", const="false",
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            parser.add_argument(*flags, metavar=name.upper(), **kw)
    return parser


def parse_config(cls: type, argv: list[str], prog: str = "mrt-star", description: str = "",
                 positional: tuple[str, ...] = ()) -> Any:
    """Return a config from a command line: defaults, then `--config` YAML, then flags."""
    # Flags are strings; YAML values keep their YAML types; both go through the same checks.
    parser = make_parser(cls, prog, description, positional)
    args = vars(parser.parse_args(argv))
    recipe = args.pop("config", None)
    values = load_yaml(recipe) if recipe else {}
    values.update(args)
    return build_config(cls, values, source=f"--config {recipe}" if recipe else "config")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a config (written into every manifest)."""
    return dataclasses.asdict(cfg)
