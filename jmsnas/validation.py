"""Turn pydantic validation errors into `ConfigError`s that name the file, the field and what is valid.

Pydantic's messages say well *what* is wrong; they are weak about *where* (``loc`` tuples carry
union tags the user never wrote) and about *what would be valid* for an unknown key. These helpers
walk the model's types along each ``loc`` to print the path the user wrote
(``topology.links[2].bandwidth_mbps``) and list the accepted keys of the model an unknown key sits in.
Used for experiment files, search-space files and ``arch.json``.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BaseModel

from jmsnas.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class FieldValueError(ValueError):
    """A ``ValueError`` raised in a model validator that points at a field below the model.

    ``describe_validation_error`` appends ``field`` to the error location, so a cross-field check
    in a model validator can still report ``stages[1].stride`` instead of the model itself.

    Args:
        message: what is wrong and what would be valid.
        field: field path relative to the validated model, e.g. ``input_shape`` or ``links[2].src``.
    """

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def pydantic_field_path(loc: tuple[int | str, ...]) -> str:
    """Format a pydantic error location as ``a.b[2].c``.

    Args:
        loc: the ``loc`` tuple of one pydantic error; ints are list indices.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _join_path(base: str, rel: str) -> str:
    if not base:
        return rel
    return base + rel if rel.startswith("[") else f"{base}.{rel}"


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _has_tag(tp: Any, part: int | str) -> bool:
    """Whether ``part`` is the discriminator value of model ``tp`` (a ``Literal`` field such as ``name``)."""
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return False
    return any(typing.get_origin(f.annotation) is Literal and part in typing.get_args(f.annotation)
               for f in tp.model_fields.values())


def _step(tp: Any, part: int | str) -> tuple[Any, bool]:
    """Type below ``tp`` at ``part``; the bool says whether ``part`` was a union tag (not a field)."""
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
        field = tp.model_fields.get(part)
        return (field.annotation, False) if field else (tp, True)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
        return args[0], False
    if origin is dict and len(args) == 2:
        return args[1], False
    if args and origin not in (list, tuple, set, frozenset, dict):  # a union: a str part may name a member
        named = [a for a in args if getattr(_unwrap(a), "__name__", None) == part or _has_tag(_unwrap(a), part)]
        if named:
            return named[0], True
        models = [a for a in args if isinstance(_unwrap(a), type) and issubclass(_unwrap(a), BaseModel)]
        if len(models) == 1:
            return _step(models[0], part)
    return None, False


def _walk(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> tuple[str, Any]:
    """Field path for ``loc`` without union tags, and the type found at its end (None if unknown)."""
    if model is None:
        return pydantic_field_path(loc), None
    tp: Any = model
    kept: list[int | str] = []
    for part in loc:
        if tp is None:
            kept.append(part)
            continue
        tp, is_tag = _step(tp, part)
        if not is_tag:
            kept.append(part)
    return pydantic_field_path(tuple(kept)), _unwrap(tp)


def _message(err: Any, tp: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return f"unknown key; valid keys: {', '.join(tp.model_fields)}"
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if kind != "value_error" and isinstance(value, (int, float, str, bool)):
        msg += f" (got {value!r})"
    return msg


def describe_validation_error(
    exc: pydantic.ValidationError, model: type[BaseModel] | None = None
) -> list[tuple[str, str]]:
    """Turn a pydantic error into ``(field_path, message)`` pairs a user can act on.

    Args:
        exc: the error raised by ``model.model_validate``.
        model: the validated model class; when given, unknown keys are reported with the valid
            keys of the model they appeared in, and union member tags are dropped from paths.

    Returns:
        One pair per error, e.g. ``("stages[1].stride", "Input should be 1 or 2 (got 3)")``.
    """
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path, tp = _walk(model, loc[:-1] if err["type"] == "extra_forbidden" else loc)
        if err["type"] == "extra_forbidden":
            path = _join_path(path, pydantic_field_path(loc[-1:]))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldValueError):
            path = _join_path(path, cause.field)
        out.append((path, _message(err, tp)))
    return out


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (``yaml.safe_load``: no custom tags).

    Raises:
        ConfigError: the file is missing, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read file ({exc.strerror or exc})", file=path) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}", file=path) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of keys at the top level, got {type(data).__name__}", file=path)
    return data


def validate_or_raise(model: type[M], data: Any, file: str | Path | None = None) -> M:
    """``model.model_validate(data)``, raising ``ConfigError`` on the first problem.

    Raises:
        ConfigError: names ``file``, the field path and what is valid; further problems are
            listed after the first.
    """
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = describe_validation_error(exc, model)
        field, message = problems[0]
        if len(problems) > 1:
            message += "; also: " + "; ".join(f"{f or '<top>'}: {m}" for f, m in problems[1:])
        raise ConfigError(message, file=file, field=field or None) from exc
