"""What machine a run is on, read without importing torch (reports and ``--check`` stay fast)."""

from __future__ import annotations

import platform
from pathlib import Path


def processor_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
