"""Validation plumbing of the configuration: pydantic's errors in our words, YAML loading, dotted keys.

``config_error`` turns the first problem of a pydantic ``ValidationError`` into one line that
starts with the key path (``train.batch_size: must be >= 1, got 0``), in the wording users saw
before pydantic; ``Section`` is the base of every configuration model (unknown keys are errors,
validated objects are frozen).
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
)
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A user's configuration mistake; the message names the key path or file."""


class FieldError(ValueError):
    """Raised by a model's validator about one of its keys (``key``, dotted, relative to the model)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


Float = Annotated[float, AllowInfNan(False), BeforeValidator(_refuse_bool)]
"""A finite number: ints and the strings YAML reads for ``3e-5`` are accepted, bools are not."""


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, a validated object is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


_WORDING = {
    "extra_forbidden": "unknown key (known: {known})",
    "missing": "required",
    "int_type": "expected an integer, got {got}",
    "float_type": "expected a finite number, got {got}",
    "float_parsing": "expected a finite number, got {got}",
    "finite_number": "expected a finite number, got {got}",
    "bool_type": "expected true or false, got {got}",
    "string_type": "expected a string, got {got}",
    "list_type": "expected a list, got {got}",
    "tuple_type": "expected a list, got {got}",
    "dict_type": "expected a mapping, got {got}",
    "model_type": "expected a mapping, got {got}",
    "too_short": "needs a non-empty list",
    "literal_error": "must be one of {expected}, got {input!r}",
    "union_tag_invalid": "must be one of {expected_tags}, got {tag}",
    "greater_than": "must be > {gt}, got {input}",
    "greater_than_equal": "must be >= {ge}, got {input}",
    "less_than": "must be < {lt}, got {input}",
    "less_than_equal": "must be <= {le}, got {input}",
    "range": "must lie in [{ge}, {le}], got {input}",
}


def config_error(model: type[BaseModel], error: ValidationError) -> ConfigError:
    """One line for the first problem pydantic found validating ``model``: key path, then what is wrong."""
    err = min(error.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a misspelt key explains the rest
    path, owner, key = _locate(model, err["loc"])
    kind, ctx, value = err["type"], dict(err.get("ctx") or {}), err["input"]
    field = owner.model_fields.get(key) if owner else None
    bounds = {type(m).__name__: m for m in field.metadata} if field else {}
    if kind in ("greater_than_equal", "less_than_equal") and {"Ge", "Le"} <= set(bounds):
        kind, ctx = "range", {"ge": bounds["Ge"].ge, "le": bounds["Le"].le}
    if kind == "union_tag_invalid":
        discriminator = ctx["discriminator"].strip("'")
        path, ctx["tag"] = f"{path}.{discriminator}", repr(value.get(discriminator))
    for name in ("expected", "expected_tags"):  # "'gps' or 'embedding'" -> "gps, embedding"
        ctx[name] = ", ".join(re.findall(r"'([^']*)'", ctx.get(name, "")))
    ctx["known"] = ", ".join(k for k, f in owner.model_fields.items() if not f.exclude) if owner else ""
    if isinstance(ctx.get("error"), FieldError):
        path = f"{path}.{ctx['error'].key}" if path else ctx["error"].key
    if kind in _WORDING:
        message = _WORDING[kind].format(**ctx, input=value, got=_describe(value))
    else:
        message = str(ctx["error"]) if kind == "value_error" else err["msg"]
    return ConfigError(f"{path or '<top>'}: {message}")


def _locate(model: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel] | None, str | None]:
    """The dotted key of an error location (indices as ``[i]``, the tags of tagged unions left out),
    the model whose field the last key is, and that key."""
    path, tp, owner, key = "", model, None, None
    for part in loc:
        while typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner, key = tp, part
            tp = tp.model_fields[part].annotation if part in tp.model_fields else None
        elif typing.get_origin(tp) is dict:
            owner, key, tp = None, None, typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):  # ``part`` names a member, not a key
            tp = next((m for m in typing.get_args(tp) if part in _tags(m)), None)
            continue
        path = f"{path}.{part}" if path else str(part)
    return path, owner, key


def _tags(member) -> tuple:
    """The values of a tagged union member's ``type`` field."""
    field = getattr(member, "model_fields", {}).get("type")
    return typing.get_args(field.annotation) if field else ()


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with ``safe_load``; file problems become ConfigError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in recursively (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def set_path(data: dict, dotted: str, value: Any) -> dict:
    """Return a copy of ``data`` with ``a.b.c = value`` set, creating mappings on the way."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    out[head] = set_path(out.get(head) if isinstance(out.get(head), dict) else {}, rest, value) if rest else value
    return out


def get_path(tree: dict, dotted: str) -> Any:
    """``tree["a"]["b"]["c"]`` for ``"a.b.c"``; KeyError when a part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node
