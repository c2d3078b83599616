"""Command-line options from config dataclasses: every field is a flag, nested dataclasses get a
dotted prefix (``--train.steps 100``), and ``--config FILE.json`` supplies values first."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--prefix.field`` option per field of dataclass ``cls`` (recursively)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            add_arguments(parser, kind, f"{name}.")
            continue
        base = _base_type(kind)
        if typing.get_origin(base) is tuple:  # tuple[int, ...] / tuple[int, int]: one or more
            element = typing.get_args(base)[0]
            parser.add_argument(f"--{name}", type=element, nargs="+", default=argparse.SUPPRESS,
                                help=f"(default: {_default(f)})")
        elif base is bool:
            parser.add_argument(f"--{name}", type=_parse_bool, metavar="true|false",
                                default=argparse.SUPPRESS, help=f"(default: {_default(f)})")
        else:
            parser.add_argument(f"--{name}", type=base, default=argparse.SUPPRESS,
                                help=f"(default: {_default(f)})")


def build(cls: type[T], args: argparse.Namespace, config_file: str | Path | None = None,
          base: T | None = None) -> T:
    """The dataclass from (``base`` or the defaults <- ``config_file`` JSON <- command-line
    flags)."""
    values: dict[str, Any] = json.loads(Path(config_file).read_text()) if config_file else {}
    for key, value in vars(args).items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _apply(cls() if base is None else base, values)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """``cls()`` with the (nested) ``values`` applied; unknown keys are an error naming them.

    Nested configs start from their parent's defaults (a stage's ``train`` keeps the stage's own
    name, steps and learning rate unless a value is given for them)."""
    return _apply(cls(), values)


def _apply(config: T, values: dict[str, Any]) -> T:
    cls = type(config)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(names)}")
    changes = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = _apply(getattr(config, name), value)
        elif typing.get_origin(_base_type(kind)) is tuple and isinstance(value, list):
            value = tuple(value)
        changes[name] = value
    return dataclasses.replace(config, **changes)


def _base_type(kind: Any) -> type:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return options[0]
    return kind


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return "see config"
