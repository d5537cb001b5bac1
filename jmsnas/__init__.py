"""jmsnas: joint model split and neural architecture search for networks of devices.

The library entry points are imported on first use (``import jmsnas`` stays light)::

    exp = jmsnas.load_experiment("experiments/quickstart.yaml")   # or a dict
    run = jmsnas.load_run("runs/quickstart")                       # a finished run's results
    run = jmsnas.run_experiment("quickstart", overrides=["tune.grid.t_const_ms=[18]"])  # search, deploy, results
"""

from __future__ import annotations

from typing import Any

from jmsnas.errors import JmsnasError

__version__ = "0.1.0"

__all__ = ["JmsnasError", "__version__", "load_experiment", "load_run", "run_experiment"]

_LAZY = {"load_experiment": "jmsnas.config", "load_run": "jmsnas.results", "run_experiment": "jmsnas.results"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jmsnas' has no attribute {name!r}")
