"""``--set KEY.PATH=VALUE``: change one field of an experiment before it is validated.

The value is parsed as YAML (``2`` is an int, ``[14, 18]`` a list, ``{cpu: 2}`` a mapping, ``null``
None), then put into the experiment's mapping at the dotted path, which may index lists
(``topology.devices[0].name``). The result is validated like the file, so a typo'd key fails
naming the field and the valid keys.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from jmsnas.errors import ConfigError

_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"tune.grid.t_const_ms=[14, 18]"`` -> ``(["tune", "grid", "t_const_ms"], [14, 18])``.

    Raises:
        ConfigError: no ``=``, an empty or malformed key, or a value that is not YAML (field ``--set``).
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"takes KEY.PATH=VALUE (e.g. tune.num_samples=2), got {text!r}", field="--set")
    path: list[str | int] = []
    for piece in key.split("."):
        m = _PART.fullmatch(piece)
        if m is None:
            raise ConfigError(f"{text!r}: {piece!r} is not a key (a name, then [index]s)", field="--set")
        path.append(m.group(1))
        path += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{text!r}: the value is not YAML ({why})", field="--set") from None
    return path, value


def _label(path: Sequence[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with every ``KEY.PATH=VALUE`` of ``overrides`` applied, in order.

    Missing mappings on the path are created (validation then reports a key that does not exist).

    Raises:
        ConfigError: a malformed override, or a path through a value that is not a mapping or a list.
    """
    out = copy.deepcopy(dict(data))
    for text in overrides:
        path, value = parse_override(text)
        node: Any = out
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise ConfigError(f"--set {text!r}: {_label(path[:i])} has no item {part}",
                                      field=_label(path[:i + 1]))
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {_label(path[:i])} is not a mapping", field=_label(path[:i + 1]))
            elif part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError(f"--set {text!r}: {_label(path[:-1])} has no item {last}", field=_label(path))
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {text!r}: {_label(path[:-1])} is not a mapping", field=_label(path))
        node[last] = value
    return out


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The dotted field path of each override (for naming them in an error)."""
    return [_label(parse_override(text)[0]) for text in overrides]
