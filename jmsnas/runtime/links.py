"""Link emulation in the sender: a token bucket at the link's bandwidth, then half its round trip.

A plan prices a link as ``rtt_ms / 2 + 8 * bytes / bandwidth`` (``jmsnas.topology.Link``). The
emulator reproduces that on any transport: a message of ``n`` bytes leaves the bucket once ``n``
tokens (bytes) have accrued at ``bandwidth / 8`` bytes per second, the bucket holding at most
``burst_bytes`` (0 by default: every byte pays its serialisation, as the plan assumes), and is
delivered ``rtt_ms / 2`` later. Messages serialise one after another (FIFO), while propagation
overlaps: the next message's serialisation starts when the previous one has left the bucket, not
when it arrives. ``schedule`` returns the delivery time; the sender sleeps until then and sends.

A plan records each cut's ``link_ms`` and ``payload_bytes`` but not the link's bandwidth and round
trip; ``plan_links`` takes them from a topology where one is given, and otherwise derives a link
without propagation whose bandwidth prices the planned payload at exactly ``link_ms`` (labelled
``"derived"``). ``serve --local --bandwidth-mbps`` sets the adaptive cut's bandwidth (``"cli"``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from jmsnas.errors import ConfigError
from jmsnas.plan.artifact import DeploymentPlan

Source = Literal["topology", "derived", "none", "cli"]


@dataclass(frozen=True)
class LinkSpec:
    """One emulated link: bandwidth (Mbit/s; 0 or less means unlimited), round trip (ms), bucket size (bytes)."""

    bandwidth_mbps: float
    rtt_ms: float = 0.0
    burst_bytes: float = 0.0
    source: Source = "topology"

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or self.burst_bytes < 0:
            raise ConfigError(f"a link needs rtt_ms >= 0 and burst_bytes >= 0, got {self.rtt_ms}, {self.burst_bytes}",
                              field="--link")

    def latency_ms(self, payload_bytes: float) -> float:
        """The plan's price of ``payload_bytes`` on this link (an empty bucket, no other traffic)."""
        if payload_bytes <= 0:
            return 0.0
        wire = 0.0 if self.bandwidth_mbps <= 0 else 8.0 * payload_bytes / (self.bandwidth_mbps * 1e3)
        return self.rtt_ms / 2.0 + wire

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """``MBPS`` or ``MBPS,RTT_MS`` (the ``--link`` option).

        Raises:
            ConfigError: not one or two numbers, or a negative round trip.
        """
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) not in (1, 2):
            raise ConfigError(f"{text!r} is not MBPS or MBPS,RTT_MS (e.g. 100,2)", field="--link")
        return cls(values[0], values[1] if len(values) == 2 else 0.0)


class TokenBucket:
    """A link's sending side: ``schedule(n)`` is when ``n`` bytes handed over now arrive (``time.monotonic``).

    Thread-safe; the clock is injectable for tests.
    """

    def __init__(self, spec: LinkSpec, clock=time.monotonic) -> None:
        self.spec, self.clock = spec, clock
        self.rate = spec.bandwidth_mbps * 1e6 / 8.0  # bytes per second
        self.tokens = spec.burst_bytes
        self.last = clock()
        self.free_at = self.last  # when the previous message has left the bucket
        self.lock = threading.Lock()

    def schedule(self, nbytes: float) -> float:
        """The arrival time of ``nbytes`` sent now; also advances the bucket."""
        with self.lock:
            now = max(self.clock(), self.free_at)  # FIFO: wait for the message ahead
            if self.rate <= 0:
                self.free_at = now
                return now + self.spec.rtt_ms / 2e3
            self.tokens = min(self.spec.burst_bytes, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= nbytes
            leave = now + max(0.0, -self.tokens) / self.rate
            if self.tokens < 0:  # the deficit is paid by waiting: the bucket is empty when the message leaves
                self.tokens, self.last = 0.0, leave
            self.free_at = leave
            return leave + self.spec.rtt_ms / 2e3

    def send_delay(self, nbytes: float) -> float:
        """Sleep until ``nbytes`` sent now would arrive; returns the seconds slept."""
        arrive = self.schedule(nbytes)
        wait = arrive - self.clock()
        if wait > 0:
            time.sleep(wait)
        return max(wait, 0.0)


def plan_links(plan: DeploymentPlan, topology: Mapping[tuple[str, str], LinkSpec] | None = None) -> list[LinkSpec]:
    """One ``LinkSpec`` per cut of ``plan``: the topology's where given, else derived from ``link_ms``.

    A derived link has no propagation and the bandwidth that sends the cut's ``payload_bytes`` in
    exactly its ``link_ms``; a cut priced at 0 ms gets an unlimited link (``source="none"``).
    """
    links = []
    for cut in plan.cuts:
        if topology is not None and (cut.src, cut.dst) in topology:
            links.append(topology[(cut.src, cut.dst)])
        elif cut.link_ms > 0 and cut.payload_bytes > 0:
            links.append(LinkSpec(8.0 * cut.payload_bytes / (cut.link_ms * 1e3), 0.0, source="derived"))
        else:
            links.append(LinkSpec(0.0, 0.0, source="none"))
    return links
