"""Latency of ops and networks on devices: profiling and per-device models.

- `jmsnas.latency.ops`: which ops a search space presents, built and timed alone.
- `jmsnas.latency.profiler`: measure a device into ``latency_profiles/NAME.csv`` (+ ``.json``).
- `jmsnas.latency.model`: ``predict(ops) -> ms`` per device, measured (regressor) or analytic.
"""

from __future__ import annotations

from jmsnas.latency.model import AnalyticLatencyModel, LatencyModel, ProfiledLatencyModel, latency_model_for

__all__ = [
    "AnalyticLatencyModel",
    "LatencyModel",
    "ProfiledLatencyModel",
    "latency_model_for",
]
