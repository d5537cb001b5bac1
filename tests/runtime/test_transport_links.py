"""Link emulation: the token bucket prices a payload as the plan does, serialises FIFO, overlaps propagation."""

from __future__ import annotations

import time

import pytest

from jmsnas.errors import ConfigError
from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment
from jmsnas.runtime.links import LinkSpec, TokenBucket, plan_links
from jmsnas.topology import Link


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_one_payload_arrives_after_half_the_rtt_plus_its_serialisation() -> None:
    clock = Clock()
    bucket = TokenBucket(LinkSpec(8.0, 10.0), clock)  # 8 Mbit/s = 1e6 bytes/s
    arrive = bucket.schedule(5000)  # 5 ms on the wire, 5 ms propagation
    assert arrive - clock.t == pytest.approx(0.010)
    assert LinkSpec(8.0, 10.0).latency_ms(5000) == pytest.approx(Link("a", "b", 8.0, 10.0).latency_ms(5000))


def test_back_to_back_messages_serialise_but_propagation_overlaps() -> None:
    clock = Clock()
    bucket = TokenBucket(LinkSpec(8.0, 10.0), clock)
    first, second = bucket.schedule(5000), bucket.schedule(5000)
    assert second - first == pytest.approx(0.005)  # one serialisation apart, not one full latency
    clock.t += 1.0  # an idle second: with no burst allowance the next message pays in full again
    assert bucket.schedule(1000) - clock.t == pytest.approx(0.001 + 0.005)


def test_a_burst_allowance_lets_a_small_message_through_at_once() -> None:
    clock = Clock()
    bucket = TokenBucket(LinkSpec(8.0, 0.0, burst_bytes=2000), clock)
    assert bucket.schedule(1500) == pytest.approx(clock.t)  # the bucket starts full
    assert bucket.schedule(1500) - clock.t == pytest.approx(0.001)  # 500 left: 1000 bytes owed


def test_an_unlimited_link_only_propagates() -> None:
    clock = Clock()
    assert TokenBucket(LinkSpec(0.0, 4.0), clock).schedule(1e9) - clock.t == pytest.approx(0.002)


@pytest.mark.parametrize(("mbps", "rtt_ms", "nbytes"), [(2.0, 0.0, 20_000), (50.0, 30.0, 50_000)])
def test_real_sleep_is_at_least_the_computed_time(mbps: float, rtt_ms: float, nbytes: int) -> None:
    """N bytes over B Mbit/s with round trip r take at least r/2 + 8N/B (a lower bound: the machine is shared)."""
    spec = LinkSpec(mbps, rtt_ms)
    start = time.monotonic()
    TokenBucket(spec).send_delay(nbytes)
    elapsed_ms = (time.monotonic() - start) * 1e3
    expected_ms = rtt_ms / 2 + 8 * nbytes / (mbps * 1e3)
    assert expected_ms == pytest.approx(spec.latency_ms(nbytes))
    assert elapsed_ms / expected_ms >= 0.999


def test_links_come_from_the_topology_or_are_derived_from_the_plan() -> None:
    segs = tuple(DeviceSegment(d, "main", i, i + 1, 1.0) for i, d in enumerate("abc"))
    cuts = (CutPlan("a", "b", 1000.0, 4.0), CutPlan("b", "c", 0.0, 0.0))
    plan = DeploymentPlan("chain", segs, cuts, 7.0)
    derived, none = plan_links(plan)
    assert derived.source == "derived" and derived.latency_ms(1000.0) == pytest.approx(4.0)
    assert none.source == "none" and none.latency_ms(10.0) == 0.0
    given = plan_links(plan, {("a", "b"): LinkSpec(1.0, 2.0)})[0]
    assert given == LinkSpec(1.0, 2.0) and given.latency_ms(1000.0) == pytest.approx(9.0)


def test_link_option_is_checked() -> None:
    assert LinkSpec.parse("100,2") == LinkSpec(100.0, 2.0)
    assert LinkSpec.parse("5") == LinkSpec(5.0, 0.0)
    for bad in ("", "fast", "1,2,3", "1,-2"):
        with pytest.raises(ConfigError):
            LinkSpec.parse(bad)
