"""jmsnas: joint model split and neural architecture search for networks of devices."""

from __future__ import annotations

from jmsnas.errors import JmsnasError

__version__ = "0.1.0"

__all__ = ["JmsnasError", "__version__"]
