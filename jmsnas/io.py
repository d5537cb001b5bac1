"""Artifact files: atomic writes (a reader never sees half a file) and typed reads that name file and field.

Every file jmsnas writes goes through ``atomic_write`` (a temporary file beside it, then
``os.replace``); ``write_json`` and ``write_text`` are its two common forms. Files read back are
parsed by ``read_json`` and validated by ``load_artifact`` against the artifact's pydantic schema,
so a bad file raises a `jmsnas.errors.JmsnasError` such as
``run/plan.json: cuts[0].payload_bytes: Input should be a valid number``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from jmsnas.errors import ArtifactError, JmsnasError
from jmsnas.validation import pydantic_field_path

T = TypeVar("T")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    If ``write`` fails, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path``, atomically."""
    atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, data: Any, *, newline: bool = False) -> None:
    """Write ``data`` as indented JSON (``indent=2``) to ``path``, atomically.

    Args:
        path: the file.
        data: anything ``json.dumps`` takes.
        newline: end the file with ``"\\n"`` (``plan.json`` and manifests do; other files do not).
    """
    write_text(path, json.dumps(data, indent=2) + ("\n" if newline else ""))


def read_json(path: str | Path, *, error: type[JmsnasError] = ArtifactError) -> Any:
    """The parsed JSON of ``path``.

    Raises:
        JmsnasError: (``error``) the file cannot be read or is not valid JSON; names the file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"cannot read the file ({exc.strerror or exc})", file=path) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=path) from exc


def validate_artifact(data: Any, validate: Callable[[Any], T], *, file: str | Path | None = None,
                      error: type[JmsnasError] = ArtifactError) -> T:
    """``validate(data)`` (a pydantic ``model_validate`` or ``TypeAdapter.validate_python``), errors made readable.

    Raises:
        JmsnasError: (``error``) naming ``file`` and the field path of the first problem; further
            problems are listed after it.
    """
    try:
        return validate(data)
    except pydantic.ValidationError as exc:
        problems = describe_problems(exc)
        field, message = problems[0]
        if len(problems) > 1:
            message += "; also: " + "; ".join(f"{f or '<top>'}: {m}" for f, m in problems[1:])
        raise error(message, file=file, field=field or None) from exc


def load_artifact(path: str | Path, validate: Callable[[Any], T], *, error: type[JmsnasError] = ArtifactError) -> T:
    """Read the JSON file ``path`` and validate it (``validate_artifact``).

    Raises:
        JmsnasError: (``error``) a missing or unreadable file, invalid JSON, or a field that does not
            fit the schema; the message names the file and the field.
    """
    return validate_artifact(read_json(path, error=error), validate, file=path, error=error)


def describe_problems(exc: pydantic.ValidationError) -> list[tuple[str, str]]:
    """``(field path, message)`` per problem of a validation error, e.g. ``("cuts[0].src", "required field ...")``."""
    out = []
    for err in exc.errors():
        kind = err["type"]
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            message = "unknown key"
        elif kind in ("missing", "missing_argument", "missing_keyword_argument"):
            message = "required field is missing"
        else:
            message = str(err["msg"])
            value = err.get("input")
            if isinstance(value, (int, float, str, bool)):
                message += f" (got {value!r})"
        out.append((pydantic_field_path(tuple(err["loc"])), message))
    return out
