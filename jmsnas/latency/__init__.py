"""Latency of ops and networks on devices: profiling, per-device models, payloads.

- `jmsnas.latency.ops`: which ops a search space presents, built and timed alone.
- `jmsnas.latency.profiler`: measure a device into ``latency_profiles/NAME.csv`` (+ ``.json``).
- `jmsnas.latency.modules`: per-module timing of any ``nn.Module`` with ``torch.profiler``.
- `jmsnas.latency.model`: ``predict(ops) -> ms`` per device, measured (regressor) or analytic.
- `jmsnas.latency.payload`: bytes crossing a cut and their link latency.
"""

from __future__ import annotations

from jmsnas.latency.model import AnalyticLatencyModel, LatencyModel, ProfiledLatencyModel, latency_model_for
from jmsnas.latency.payload import payload_bytes, transfer_ms

__all__ = [
    "AnalyticLatencyModel",
    "LatencyModel",
    "ProfiledLatencyModel",
    "latency_model_for",
    "payload_bytes",
    "transfer_ms",
]
