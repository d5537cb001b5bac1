"""What the plan in a bundle's manifest predicts per device, per link and per answering device.

The runtime compares its measurements with these figures (``runtime.json``). A device's predicted
time is its segment's ``compute_ms`` plus, where the plan has an exit on it with a ``latency_ms``
(the end-to-end latency of a sample leaving there), that exit head's share: ``latency_ms`` less
everything before the head. A sample answered at device ``m`` is predicted to take the sum of
the devices' times up to ``m`` and the links between them (eq. (1) cut short at the exit); the
last device's figure is the plan's worst case (every head run).
"""

from __future__ import annotations

from dataclasses import dataclass

from jmsnas.export.manifest import Manifest


@dataclass(frozen=True)
class PredictedTimes:
    """Per device (``device_ms``), per cut (``link_ms``) and per answering device (``answer_ms``), in ms."""

    device_ms: tuple[float, ...]
    link_ms: tuple[float, ...]
    answer_ms: tuple[float, ...]


def predicted_times(spec: Manifest) -> PredictedTimes:
    """The plan's predictions: per part its segment (one per part), per cut its link, per answering device.

    A branched plan (parallel branches, eq. (2)) is answered by its last part only, at the plan's total.
    """
    plan = spec.plan
    if any(s.part != "main" for s in plan.segments):
        return PredictedTimes(tuple(s.compute_ms for s in plan.segments), tuple(c.link_ms for c in plan.cuts),
                              tuple(plan.total_latency_ms for _ in plan.segments))
    exit_at = {e.device: e for e in plan.exits}
    device_ms, answer_ms = [], []
    elapsed = 0.0
    for m, seg in enumerate(plan.segments):
        if m:
            elapsed += plan.cuts[m - 1].link_ms
        elapsed += seg.compute_ms
        e = exit_at.get(seg.device)
        head = 0.0 if e is None or e.latency_ms is None else max(0.0, e.latency_ms - elapsed)
        elapsed += head
        device_ms.append(seg.compute_ms + head)
        answer_ms.append(elapsed)
    return PredictedTimes(tuple(device_ms), tuple(c.link_ms for c in plan.cuts), tuple(answer_ms))
