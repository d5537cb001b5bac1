"""Atomic writes: a reader never sees half a file (write a temporary file beside it, then rename)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path``, atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2)))
