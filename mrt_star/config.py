"""Stage configs as dataclasses, read from a YAML recipe and overridden by command-line flags.

Each field's `metadata["help"]` is its documentation and its `--help` line (as in TRL's configs).
Precedence: command line > YAML recipe > dataclass default. Every mistake (unknown key, wrong type,
missing required value, value outside `choices`) raises `ConfigError` with one line naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any

from mrt_star.errors import UserError

REQUIRED = object()  # marker default: the field must come from the recipe or the command line


class ConfigError(UserError, ValueError):
    """A recipe or command line that cannot become a config (exit code 2, like argparse)."""

    exit_code = 2


def option(default: Any = REQUIRED, help: str = "", choices: tuple | None = None, at_least: float | None = None,
           above: float | None = None, at_most: float | None = None, **kw) -> Any:
    """Return a dataclass field carrying its help text, allowed values and numeric range for `--help` and errors."""
    meta = {"help": help, **({"choices": tuple(choices)} if choices else {})}
    for key, bound in (("at_least", at_least), ("above", above), ("at_most", at_most)):
        if bound is not None:
            meta[key] = bound
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


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
    if typing.get_origin(kind) is dict or kind is dict:
        return parse_mapping(name, value)
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

        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        type_name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{name}: expected {type_name}, got {value!r}") from None
    return value


def parse_mapping(name: str, value: Any) -> dict[str, Any]:
    """Return a dict option's value: a mapping, or JSON / YAML flow text such as '{"a": 1}' or '{a: 1}'."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        import yaml

        try:
            parsed = yaml.safe_load(value) if value.strip() else {}
        except yaml.YAMLError:
            parsed = None
        if isinstance(parsed, dict):
            return {str(k): v for k, v in parsed.items()}
    raise ConfigError(f"{name}: expected a mapping such as '{{\"key\": 1}}' or '{{key: 1}}' (JSON or YAML flow), "
                      f"got {value!r}")


def renamed_options(cls: type) -> dict[str, str]:
    """Return old option name -> new name for a config class (its `RENAMED` class attribute, if any)."""
    return dict(getattr(cls, "RENAMED", {}))


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
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: keys must be option names, got {key!r}")
    renamed = renamed_options(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = unknown[0]
        if key in renamed:
            raise ConfigError(f"{source}: {key!r} was renamed to {renamed[key]!r} (flag --{renamed[key].replace('_', '-')})")
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{source}: unknown key {key!r}; {hint}valid keys: {', '.join(fields)}")
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
        _check_range(name, value, f.metadata)
        choices = f.metadata.get("choices")
        if choices and value is not None:
            for v in value if isinstance(value, list) else [value]:
                if v not in choices:
                    raise ConfigError(f"{name}: {v!r} is not one of {', '.join(map(str, choices))}")
        kwargs[name] = value
    return cls(**kwargs)


def check_config(cfg: Any) -> Any:
    """Return `cfg` after the checks `build_config` makes (a config built in code gets the same errors)."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    build_config(type(cfg), values, source="config")
    return cfg


def _check_range(name: str, value: Any, meta: Any) -> None:
    """Raise ConfigError when a number (or a number in a list) is outside the field's declared range."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if "at_least" in meta and v < meta["at_least"]:
            raise ConfigError(f"{name}: must be at least {meta['at_least']}, got {v}")
        if "above" in meta and v <= meta["above"]:
            raise ConfigError(f"{name}: must be greater than {meta['above']}, got {v}")
        if "at_most" in meta and v > meta["at_most"]:
            raise ConfigError(f"{name}: must be at most {meta['at_most']}, got {v}")


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
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"--config {p}: keys must be option names, got {bad[0]!r}")
    return {k.replace("-", "_"): v for k, v in data.items()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other config error
        raise ConfigError(message)


def make_parser(cls: type, prog: str, description: str = "", positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """Return an argparse parser with `--config` and one `--flag` per field, help from field metadata."""
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH.yaml", help="YAML recipe; flags given here override it")
    groups: dict[str, Any] = {}
    for old in renamed_options(cls):  # accepted by the parser only to fail in build_config naming the new name
        parser.add_argument(f"--{old.replace('_', '-')}", dest=old, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    order = [option_group(cls, name) for name in _fields(cls)]
    ranked = sorted(_fields(cls).items(), key=lambda item: _group_rank(cls, option_group(cls, item[0]), order))
    for name, f in ranked:
        title = option_group(cls, name)
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = groups[title]
        kind, _ = _base_type(f.type)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else REQUIRED)
        help_text = f.metadata.get("help", "")
        if default is REQUIRED:
            help_text += " (required)"
        kw = {"default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}  # argparse formats help with %
        if f.metadata.get("choices"):
            kw["help"] += f" [choices: {', '.join(map(str, f.metadata['choices']))}]"
        if default is not REQUIRED and default not in (None, [], {}):
            kw["help"] += f" (default: {default})"
        if name in positional:
            target.add_argument(name, nargs="?", **kw)
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        if kind is bool:
            target.add_argument(*flags, nargs="?", const="true", metavar="BOOL", **kw)
            target.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_const", const="false",
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            metavar = "JSON|YAML" if (kind is dict or typing.get_origin(kind) is dict) else name.upper()
            target.add_argument(*flags, metavar=metavar, **kw)
    return parser


def _group_rank(cls: type, title: str, order: list[str]) -> int:
    """Order `--help` as a reader wants it: input/output, then the verb's own options, then the shared groups."""
    mro_titles = [(b.__doc__ or b.__name__).strip().splitlines()[0] for b in cls.__mro__[1:] if b is not object]
    if title == "options of this verb":
        return 1
    if mro_titles and title == mro_titles[0]:
        return 0
    return 2 + (mro_titles.index(title) if title in mro_titles else len(mro_titles))


def option_group(cls: type, name: str) -> str:
    """Return the title of the option group that declares field `name` of a stage config (for `--help`)."""
    owner = cls
    for base in cls.__mro__:
        if name in base.__dict__.get("__annotations__", {}):
            owner = base
            break
    if owner is cls:
        return "options of this verb"
    return (owner.__doc__ or owner.__name__).strip().splitlines()[0]


def parse_config(cls: type, argv: list[str], prog: str = "mrt-star", description: str = "",
                 positional: tuple[str, ...] = ()) -> Any:
    """Return a config from a command line: defaults, then `--config` YAML, then flags."""
    # Flags are strings; YAML values keep their YAML types; both go through the same checks.
    parser = make_parser(cls, prog, description, positional)
    args = vars(parser.parse_args(argv))
    recipe = args.pop("config", None)
    for old, new in renamed_options(cls).items():
        if old in args:
            raise ConfigError(f"--{old.replace('_', '-')} was renamed to --{new.replace('_', '-')}")
    values = load_yaml(recipe) if recipe else {}
    values.update(args)
    return build_config(cls, values, source=f"--config {recipe}" if recipe else "config")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a config (written into every manifest)."""
    return dataclasses.asdict(cfg)
