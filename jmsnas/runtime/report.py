"""``runtime.json``: what a served bundle did, measured beside what its plan predicted.

Written by ``local.serve_local`` (``python -m jmsnas.serve BUNDLE --local``), read back with
``RuntimeReport.load``. The fields, in the order a reader wants them:

- ``samples``, ``answered``, ``lost`` (fed but never answered: must be 0), ``failed`` (answered
  without logits: no exit behind the failure), ``fell_back`` (answered by a device whose next hop
  was gone, from the best exit it had), ``duplicates`` (second answers, dropped: a sample re-fed after its deadline;
  one a device answered alone after its next hop's acknowledgements were late while the copy it
  sent did arrive; or one in flight when its device was killed, which the killed process answered
  and the restarted one ran again on the sender's resend), ``refed``,
  ``answered_at`` (answers per device), ``restarts`` (per device).
- ``end_to_end``: measured latency (mean, p50, p95, p99, max) from feeding a sample to its answer
  at the feeder, ``throughput_sps``, the feeder's own hops (``feed_mean_ms`` to the first device,
  ``return_mean_ms`` from the answering device back); ``predicted_mean_ms`` is the mean of each answered sample's
  prediction (``plan_times``: up to the device that answered it), ``plan_mean_ms`` / ``plan_worst_ms``
  the plan's own figures; ``measured_over_predicted`` compares samples answered as planned (not
  fallen back).
- ``devices``: per device, whether it is **emulated** (an analytic device: it ran on this CPU, then
  waited until its predicted time) or measured, the predicted and measured time of its part (compute
  plus the emulated wait), and the per-hop breakdown: decode, queue, compute, encode, link wait.
- ``links``: per cut, the emulated link (bandwidth, round trip, where it came from), the plan's
  ``link_ms`` and the price of the bytes actually sent, and the measured wire time (hand-over to the
  link until the next device received it).
- ``per_sample``: device, exit, fell back, measured and predicted ms, times re-fed, second answers dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from jmsnas.errors import ArtifactError
from jmsnas.export.manifest import Manifest
from jmsnas.io import load_artifact
from jmsnas.runtime.links import LinkSpec
from jmsnas.runtime.overhead import RuntimeOverhead, timed_links_passed
from jmsnas.runtime.plan_times import predicted_times

RUNTIME_VERSION = 1


@dataclass
class Answer:
    """One answered sample as the feeder saw it."""

    sample: int
    latency_ms: float
    answer: dict[str, Any]
    hops: list[dict[str, Any]]
    feed_ms: float
    return_ms: float
    logits: np.ndarray | None


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndToEnd(_M):
    measured_mean_ms: float | None
    measured_p50_ms: float | None
    measured_p95_ms: float | None
    measured_p99_ms: float | None
    measured_max_ms: float | None
    predicted_mean_ms: float | None
    plan_mean_ms: float | None
    plan_worst_ms: float
    measured_over_predicted: float | None
    throughput_sps: float
    wall_s: float
    feed_mean_ms: float | None
    return_mean_ms: float | None
    predicted_with_overhead_mean_ms: float | None = None
    measured_over_predicted_with_overhead: float | None = None
    overhead: dict[str, Any] | None = None


class DeviceRow(_M):
    device: str
    label: str
    emulated: bool
    samples: int
    predicted_ms: float
    measured_mean_ms: float | None
    measured_over_predicted: float | None
    breakdown_ms: dict[str, float | None]


class LinkRow(_M):
    src: str
    dst: str
    source: str
    bandwidth_mbps: float
    rtt_ms: float
    samples: int
    plan_link_ms: float
    predicted_ms: float | None
    measured_wire_mean_ms: float | None
    measured_over_predicted: float | None


class RuntimeReport(_M):
    version: int = RUNTIME_VERSION
    bundle: str
    manifest_sha256: str
    backend: str
    mode: str
    samples: int
    answered: int
    lost: int
    failed: int
    fell_back: int
    duplicates: int
    refed: int
    answered_at: dict[str, int]
    restarts: dict[str, int]
    end_to_end: EndToEnd
    devices: list[DeviceRow]
    links: list[LinkRow]
    per_sample: list[dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> RuntimeReport:
        """Read and validate a ``runtime.json``; a bad field raises `ArtifactError` naming it."""
        return load_artifact(path, cls.model_validate, error=ArtifactError)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _with_overhead(spec: Manifest, links: Sequence[LinkSpec], answer_ms: Sequence[float],
                   overhead: RuntimeOverhead | None) -> list[float] | None:
    """Per answering part, the plan's ``answer_ms`` plus the runtime's own cost there (None without a fit)."""
    if overhead is None:
        return None
    payload = [c.payload_bytes for c in spec.plan.cuts]
    return [ms + overhead.predict(m + 1, timed_links_passed(links, payload, m)) for m, ms in enumerate(answer_ms)]


def _end_to_end(spec: Manifest, answers: Sequence[Answer], wall: float, with_oh_ms: list[float] | None,
                overhead: RuntimeOverhead | None) -> EndToEnd:
    pred = predicted_times(spec)
    index = {d: m for m, d in enumerate(spec.devices)}
    lat = [a.latency_ms for a in answers]
    planned = [a for a in answers if not a.answer.get("fell_back")]
    p_ms = [pred.answer_ms[index[a.answer["device"]]] for a in planned]
    q = (lambda p: float(np.percentile(lat, p))) if lat else (lambda p: None)
    measured_planned = _mean([a.latency_ms for a in planned])
    with_oh = None if with_oh_ms is None else _mean([with_oh_ms[index[a.answer["device"]]] for a in planned])
    return EndToEnd(measured_mean_ms=_mean(lat), measured_p50_ms=q(50), measured_p95_ms=q(95),
                    measured_p99_ms=q(99), measured_max_ms=max(lat) if lat else None,
                    predicted_mean_ms=_mean(p_ms), plan_mean_ms=spec.plan.mean_latency_ms,
                    plan_worst_ms=spec.plan.total_latency_ms,
                    measured_over_predicted=_ratio(measured_planned, _mean(p_ms)),
                    throughput_sps=len(answers) / wall if wall > 0 else 0.0, wall_s=wall,
                    feed_mean_ms=_mean([a.feed_ms for a in answers]),
                    return_mean_ms=_mean([a.return_ms for a in answers]),
                    predicted_with_overhead_mean_ms=with_oh,
                    measured_over_predicted_with_overhead=_ratio(measured_planned, with_oh),
                    overhead=None if overhead is None else overhead.to_dict())


def _devices(spec: Manifest, answers: Sequence[Answer], emulated: frozenset[str]) -> list[DeviceRow]:
    pred = predicted_times(spec)
    rows = []
    for m, device in enumerate(spec.devices):
        hops = [h for a in answers for h in a.hops if h.get("part") == m and "compute_ms" in h]  # the part ran
        took = [h["compute_ms"] + h["emulated_wait_ms"] for h in hops]
        keys = ("decode_ms", "queue_ms", "compute_ms", "emulated_wait_ms", "encode_ms", "link_wait_ms")
        breakdown = {k: _mean([h[k] for h in hops if h.get(k) is not None]) for k in keys}
        emu = device in emulated or any(h.get("emulated") for h in hops)  # each device says so in its hops
        rows.append(DeviceRow(device=device, label="emulated" if emu else "measured on this CPU", emulated=emu,
                              samples=len(hops), predicted_ms=pred.device_ms[m], measured_mean_ms=_mean(took),
                              measured_over_predicted=_ratio(_mean(took), pred.device_ms[m]), breakdown_ms=breakdown))
    return rows


def _links(spec: Manifest, answers: Sequence[Answer], links: Sequence[LinkSpec]) -> list[LinkRow]:
    """Per cut ``src -> dst``: the hops that part ``src`` sent to part ``dst`` and that ``dst`` received.

    In a chain, a hop record's sender is the part before it and its receiver the part after; with
    parallel branches the records name them (``from_part``, ``to_part``).
    """
    rows = []
    index = {d: m for m, d in enumerate(spec.devices)}
    for cut, link in zip(spec.plan.cuts, links, strict=True):
        a, b = index[cut.src], index[cut.dst]
        hops = [h for ans in answers for h in ans.hops]
        into = [h for h in hops if h.get("part") == b and h.get("from_part", b - 1) == a
                and h.get("wire_ms") is not None]
        sent = [h["wire_bytes"] for h in hops if h.get("part") == a and h.get("to_part", a + 1) == b
                and "wire_bytes" in h]
        wire = _mean([h["wire_ms"] for h in into])
        price = link.latency_ms(float(np.mean(sent))) if sent else None
        rows.append(LinkRow(src=cut.src, dst=cut.dst, source=link.source, bandwidth_mbps=link.bandwidth_mbps,
                            rtt_ms=link.rtt_ms, samples=len(into), plan_link_ms=cut.link_ms, predicted_ms=price,
                            measured_wire_mean_ms=wire, measured_over_predicted=_ratio(wire, price)))
    return rows


def runtime_report(bundle: str, spec: Manifest, token: str, run: Any, links: Sequence[LinkSpec],
                   answers: Mapping[int, Answer], samples: int, wall: float,
                   counts: Mapping[str, Any]) -> dict[str, Any]:
    """The ``runtime.json`` data of a served run (``run`` is the ``local.LocalRun`` it ran with)."""
    done = [answers[i] for i in sorted(answers)]
    pred = predicted_times(spec)
    with_oh_ms = _with_overhead(spec, links, pred.answer_ms, run.overhead)
    index = {d: m for m, d in enumerate(spec.devices)}
    ok = [a for a in done if not a.answer.get("failed")]
    per_sample = [{"sample": a.sample, "device": a.answer.get("device"), "exit": a.answer.get("exit"),
                   "fell_back": bool(a.answer.get("fell_back")), "failed": bool(a.answer.get("failed")),
                   "reason": a.answer.get("reason"), "latency_ms": a.latency_ms,
                   "predicted_ms": pred.answer_ms[index[a.answer["device"]]] if a.answer.get("device") else None,
                   "predicted_with_overhead_ms": with_oh_ms[index[a.answer["device"]]]
                   if a.answer.get("device") and with_oh_ms is not None else None,
                   "refeeds": int(counts.get("refeeds", {}).get(a.sample, 0)),
                   "duplicates": int(counts.get("duplicated", {}).get(a.sample, 0))}
                  for a in done]
    report = RuntimeReport(
        bundle=bundle, manifest_sha256=token, backend=run.backend,
        mode="closed loop (one sample at a time)" if run.rate is None else f"open loop at {run.rate:g} samples/s",
        samples=samples, answered=len(done), lost=samples - len(done), failed=len(done) - len(ok),
        fell_back=sum(bool(a.answer.get("fell_back")) for a in ok), duplicates=counts["duplicates"],
        refed=counts["refed"], answered_at=dict(Counter(a.answer["device"] for a in ok)),
        restarts=dict(counts["restarts"]), end_to_end=_end_to_end(spec, ok, wall, with_oh_ms, run.overhead),
        devices=_devices(spec, done, run.emulated), links=_links(spec, done, links), per_sample=per_sample)
    return report.model_dump(mode="json")
