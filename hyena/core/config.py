"""Typed configs: one dataclass per params.yaml section, with defaults, help and checks in one place.

Every section of params.yaml is a dataclass owned by the library module that uses it
(`TeacherConfig` in teachers.py, `DistillConfig` in train/distill.py, ...). Each field is declared
with `param(default, help, ge=..., ...)`, so its default, its meaning and its valid range live
together; `load(cls, raw, "section")` turns a parsed YAML mapping into an instance and refuses,
with one line naming the key and the fix:

- a key the dataclass does not have (with the list of known keys),
- a value of the wrong type (`lr: fast`, `random_init: "yes please"`, a scalar for a section),
- a value out of range (`batch_size: -4`, `epochs: 0`),
- whatever the class's own `__post_init__` refuses (cross-field rules).

A key left out takes the field's default. `render(...)` writes instances back as commented YAML
(the generated params.yaml), so the comments there are the `help` strings here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad params value: the message names the key and says what is expected."""


def param(default: Any = dataclasses.MISSING, help: str = "", *, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None,
          default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a help string and optional numeric bounds (checked by `load`)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: dataclasses.replace(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a).lower() if a is None else str(a)
                          for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against the annotation `tp` (ints become floats where floats are asked)."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else load(tp, value, key)  # an instance checked itself
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        raise _wrong(key, value, tp)
    if tp is type(None):
        if value is None:
            return None
        raise _wrong(key, value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(key, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong(key, value, tp)
    if tp is float:
        if isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML, `dvc exp run -S lr=1e-4`) reads 1e-4 as text
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _wrong(key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _wrong(key, value, tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _wrong(key, value, tp)
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(key, value, tp)
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, k_tp, f"{key} key"): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    return value


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """`value` as the first arm of the union `tp` that takes it."""
    errors = []
    for arm in get_args(tp):
        try:
            return _coerce(value, arm, key)
        except ConfigError as err:
            errors.append(err)
            if isinstance(value, dict) and dataclasses.is_dataclass(arm):
                break  # a mapping meant for that section: its own error says what is wrong inside
    if isinstance(value, dict) and dataclasses.is_dataclass(get_args(tp)[len(errors) - 1]):
        raise errors[-1]
    raise _wrong(key, value, tp)


def _wrong(key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _check_bounds(value: Any, f: dataclasses.Field, key: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    m = f.metadata
    for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                            ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        b = m.get(bound)
        if b is not None and not ok(value, b):
            raise ConfigError(f"{key} must be {word} {b}, got {value}")


class Config:
    """Base of the params dataclasses: every field's type and bounds are checked on construction
    too, so library callers get the same one-line errors as params.yaml does. Subclasses that add
    their own `__post_init__` call `super().__post_init__()` first."""
    SECTION: ClassVar[str] = ""  # name in error messages ("distill"); the class name if empty

    def __post_init__(self) -> None:
        section = self.SECTION or type(self).__name__
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{section}.{f.name}"
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                continue  # checked by its own __post_init__
            setattr(self, f.name, _coerce(value, hints[f.name], key))
            _check_bounds(getattr(self, f.name), f, key)


def did_you_mean(unknown: list, known) -> str:
    """' (did you mean X?)' for the closest known name to each unknown one, or ''."""
    hints = [m[0] for u in unknown if (m := difflib.get_close_matches(str(u), list(map(str, known)), n=1, cutoff=0.6))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def load(cls: type[T], raw: Any, section: str) -> T:
    """`raw` (a parsed YAML mapping; None means all defaults) as a checked instance of `cls`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(map(str, unknown))}{did_you_mean(unknown, fields)}; "
                          f"known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        key = f"{section}.{name}"
        kwargs[name] = _coerce(value, hints[name], key)
        _check_bounds(kwargs[name], fields[name], key)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.init]
    if missing:
        raise ConfigError(f"{section}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(msg if msg.startswith(section) else f"{section}: {msg}") from err


def as_dict(obj: Any) -> Any:
    """A config instance as plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    return obj


def merge(cls: type, base: dict, override: dict) -> dict:
    """`override` over `base`, both raw mappings of dataclass `cls`: nested config sections merge
    key by key; any other value (a list, a mapping-valued knob such as distill.layers) replaces."""
    if not isinstance(override, dict):
        return override  # a malformed section: `load` names it
    nested = {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}
    out = dict(base)
    for key, value in override.items():
        tp = nested.get(key)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(tp, out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- rendering


_AMBIGUOUS = re.compile(r"[-+.]?[0-9].*|true|false|yes|no|on|off|y|n|null|~|", re.IGNORECASE)


def _scalar(value: Any) -> str:
    """One YAML flow value. Strings that a YAML 1.1 or 1.2 reader could take for a number, bool or
    null (layer keys such as "08") are double-quoted: DVC reads params with YAML 1.2."""
    value = as_dict(value)
    if isinstance(value, str):
        plain = yaml.safe_dump(value, default_style=None, width=10_000).strip().removesuffix("...").strip()
        return json.dumps(value) if _AMBIGUOUS.fullmatch(value) or plain != value else value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(str(k))}: {_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return yaml.safe_dump(value, width=10_000).strip().removesuffix("...").strip()


def render_section(obj: Any, indent: int = 2) -> list[str]:
    """Commented YAML lines for the fields of a config instance (nested dataclasses nest)."""
    lines = []
    pad = " " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        note = f.metadata.get("help", "")
        comment = f"  # {note}" if note else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:{comment}")
            lines += render_section(value, indent + 2)
        elif isinstance(value, dict) and value and all(isinstance(v, dict) or dataclasses.is_dataclass(v)
                                                       for v in value.values()):
            lines.append(f"{pad}{f.name}:{comment}")  # one flow mapping per entry (distill.layers, eval.datasets)
            lines += [f"{pad}  {_scalar(str(k))}: {_scalar(v)}" for k, v in value.items()]
        else:
            lines.append(f"{pad}{f.name}: {_scalar(value)}{comment}")
    return lines
