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

from drpose._cli import UsageError

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                  defaults: Any = None) -> None:
    """Add one ``--prefix.field`` option per field of dataclass ``cls`` (recursively); the help
    shows the values of ``defaults`` (``cls()`` when None), so a stage's nested ``train``
    options show that stage's defaults, not :class:`TrainConfig`'s."""
    hints = typing.get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = f"{prefix}{f.name}"
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(kind):
            add_arguments(parser, kind, f"{name}.", default)
            continue
        base = _base_type(kind)
        if typing.get_origin(base) is tuple:  # tuple[int, ...] / tuple[int, int]: one or more
            element = typing.get_args(base)[0]
            parser.add_argument(f"--{name}", type=element, nargs="+", default=argparse.SUPPRESS,
                                help=f"(default: {default})")
        elif base is bool:
            parser.add_argument(f"--{name}", type=_parse_bool, metavar="true|false",
                                default=argparse.SUPPRESS, help=f"(default: {default})")
        else:
            parser.add_argument(f"--{name}", type=base, default=argparse.SUPPRESS,
                                help=f"(default: {default})")


def build(cls: type[T], args: argparse.Namespace, config_file: str | Path | None = None,
          base: T | None = None) -> T:
    """The dataclass from (``base`` or the defaults <- ``config_file`` JSON <- command-line
    flags)."""
    values = read_config_file(config_file) if config_file else {}
    for key, value in vars(args).items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _apply(cls() if base is None else base, values)


PRESETS = Path(__file__).parent / "presets"  # shipped configs, by name: --config pshuman


def preset_names() -> list[str]:
    """Names of the shipped presets (``drpose/train/presets/<name>.json``)."""
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a ``--config`` file, or of a shipped preset given by name (a name
    that is not a file: ``pshuman`` is ``drpose/train/presets/pshuman.json``); a
    :class:`UsageError` naming the file when it is missing, not JSON or not an object."""
    path = Path(path)
    if not path.is_file() and str(path) in preset_names():
        path = PRESETS / f"{path}.json"
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file (a JSON file of config values) or "
                         f"preset (presets: {', '.join(preset_names())})")
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--config {path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a JSON object of config values, got "
                         f"{type(values).__name__}")
    return values


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """``cls()`` with the (nested) ``values`` applied; unknown keys are an error naming them.

    Nested configs start from their parent's defaults (a stage's ``train`` keeps the stage's own
    name, steps and learning rate unless a value is given for them)."""
    return _apply(cls(), values)


def _apply(config: T, values: dict[str, Any], prefix: str = "") -> T:
    cls = type(config)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) "
                         f"{[prefix + u for u in unknown]}; known: {sorted(names)}")
    changes = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise UsageError(f"config value {prefix}{name}: expected an object of "
                                 f"{kind.__name__} options, got {value!r}")
            value = _apply(getattr(config, name), value, f"{prefix}{name}.")
        else:
            value = _checked(f"{prefix}{name}", kind, value)
        changes[name] = value
    return dataclasses.replace(config, **changes)


def _checked(name: str, kind: Any, value: Any) -> Any:
    """``value`` as a field of type ``kind`` takes it (a list becomes a tuple, an int a float),
    or a :class:`UsageError` naming the option, the type and the value."""
    base = _base_type(kind)
    if value is None and base is not kind:  # an optional field
        return None
    if typing.get_origin(base) is tuple:
        element = typing.get_args(base)[0]
        if isinstance(value, (list, tuple)):
            try:
                return tuple(_checked(name, element, v) for v in value)
            except UsageError:
                pass
        raise UsageError(f"config value {name} (--{name}): expected a list of "
                         f"{element.__name__}, got {value!r}")
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[base]
    if not ok(value):
        optional = " or null" if base is not kind else ""
        raise UsageError(f"config value {name} (--{name}): expected {base.__name__}{optional}, "
                         f"got {value!r}")
    return float(value) if base is float else value


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
