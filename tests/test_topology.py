"""Completion latency (paper 003 eq. (1) and (2)) against values computed by hand."""

from __future__ import annotations

import itertools
import random

import pytest

from jmsnas.errors import TopologyError
from jmsnas.topology import AnalyticSpec, Device, Link, build_topology, segment_costs


def _devices(names: str) -> list[Device]:
    return [Device(n, analytic=AnalyticSpec(macs_per_s=1e9, memory_bytes=10**6)) for n in names]


def test_link_latency_by_hand() -> None:
    # 1000 bytes at 8 Mbit/s: 8000 bit / 8e6 bit/s = 1 ms, plus half of a 2 ms round trip.
    assert Link("a", "b", bandwidth_mbps=8.0, rtt_ms=2.0).latency_ms(1000) == pytest.approx(2.0)
    assert Link("a", "b", bandwidth_mbps=8.0, rtt_ms=2.0).latency_ms(0) == 0.0


def test_chain_eq1_by_hand() -> None:
    topo = build_topology("chain", _devices("abc"), [Link("a", "b", 8.0, 2.0), Link("b", "c", 80.0, 0.0)])
    compute = {"a": 1.0, "b": 2.0, "c": 3.0}
    sent = {"a": 1000, "b": 10_000, "c": 123_456}  # the sink's output is not sent anywhere (ε^M = 0)
    # a: 1 + (1 + 1) ; b: 2 + 80000 bit / 80 Mbit/s = 1 ; c: 3  ->  1 + 2 + 2 + 1 + 3 = 9 ms
    assert topo.completion_latency_ms(compute, sent) == pytest.approx(9.0)
    assert topo.source == "a" and topo.sink == "c" and topo.paths() == [("a", "b", "c")]


def test_mesh_eq2_fig2b_by_hand() -> None:
    """Paper 003 Fig. 2(b): UE -> SBS (root) -> MBS1..3 in parallel -> cloud; C = {ue, cloud}."""
    links = [Link("ue", "sbs", 25.0), Link("sbs", "mbs1", 50.0), Link("sbs", "mbs2", 50.0),
             Link("sbs", "mbs3", 50.0), Link("mbs1", "cloud", 200.0), Link("mbs2", "cloud", 20.0),
             Link("mbs3", "cloud", 200.0)]
    topo = build_topology("mesh", [Device(n, profile="p") for n in ["ue", "sbs", "mbs1", "mbs2", "mbs3", "cloud"]],
                          links)
    assert topo.chain_devices == ("ue", "cloud") and topo.root == "sbs"
    assert topo.branches == ("mbs1", "mbs2", "mbs3")
    compute = {"ue": 1.0, "sbs": 2.0, "mbs1": 3.0, "mbs2": 5.0, "mbs3": 4.0, "cloud": 1.0}
    sent = {"ue": 25_000, "sbs": 6_250, "mbs1": 5_000, "mbs2": 5_000, "mbs3": 5_000}
    # chain part: ue 1 + 200000 bit / 25 Mbit/s = 8  -> 9 ; cloud 1
    # branches:  root 2 + 50000 bit / 50 Mbit/s = 1, then
    #   mbs1: 3 + 40000/200e6 s = 0.2 -> 6.2 ; mbs2: 5 + 40000/20e6 s = 2 -> 10 ; mbs3: 4 + 0.2 -> 7.2
    # T = 9 + max(6.2, 10, 7.2) + 1 = 20 ms
    assert topo.completion_latency_ms(compute, sent) == pytest.approx(20.0)


def test_mesh_with_devices_before_root_and_after_join() -> None:
    links = [Link("s", "r", 8.0), Link("r", "x", 8.0), Link("r", "y", 8.0), Link("x", "j", 8.0),
             Link("y", "j", 8.0), Link("j", "t", 8.0)]
    topo = build_topology("mesh", _devices("srxyjt"), links)
    assert topo.chain_before == ("s",) and topo.chain_after == ("j", "t")
    compute = dict.fromkeys("srxyjt", 1.0)
    sent = dict.fromkeys("srxyjt", 1000)  # every hop costs 1 ms
    # s: 1+1 ; tree: r 1+1 + branch 1+1 = 4 ; j: 1+1 ; t: 1  -> 2 + 4 + 2 + 1 = 9
    assert topo.completion_latency_ms(compute, sent) == pytest.approx(9.0)
    assert topo.paths() == [("s", "r", "x", "j", "t"), ("s", "r", "y", "j", "t")]


def test_segment_costs_with_an_idle_relay() -> None:
    """A device that runs no layer relays what it received (here the source relays the raw input)."""
    path = ("a", "b", "c")
    lat = {"a": [1.0, 2.0, 3.0], "b": [0.5, 0.5, 0.5], "c": [0.1, 0.1, 0.1]}
    out_bytes = [400.0, 200.0, 40.0]
    compute, sent = segment_costs(path, lat, [0, 0, 2, 3], out_bytes, input_bytes=1000.0)
    assert compute == {"a": 0.0, "b": 1.0, "c": 0.1}
    assert sent == {"a": 1000.0, "b": 200.0, "c": 40.0}
    with pytest.raises(ValueError):
        segment_costs(path, lat, [0, 2, 1, 3], out_bytes, 1000.0)


def test_eq1_equals_layerwise_sum_on_random_assignments() -> None:
    """Eq. (1) through segment_costs equals a direct per-layer sum over every contiguous assignment."""
    rng = random.Random(0)
    names = "abcd"
    links = [Link(s, d, rng.uniform(1, 100), rng.uniform(0, 5)) for s, d in itertools.pairwise(names)]
    topo = build_topology("chain", _devices(names), links)
    n = 5
    lat = {m: [rng.uniform(0.1, 3) for _ in range(n)] for m in names}
    out_bytes = [rng.uniform(100, 10_000) for _ in range(n)]
    for cuts in itertools.combinations_with_replacement(range(n + 1), len(names) - 1):
        bounds = [0, *cuts, n]
        direct, carried = 0.0, 500.0
        for m, name in enumerate(names):
            layers = range(bounds[m], bounds[m + 1])
            direct += sum(lat[name][i] for i in layers)
            carried = out_bytes[layers[-1]] if layers else carried
            if m + 1 < len(names):
                direct += links[m].latency_ms(carried)
        assert topo.completion_latency_ms(*segment_costs(names, lat, bounds, out_bytes, 500.0)) == pytest.approx(direct)


@pytest.mark.parametrize(
    ("kind", "names", "links", "text"),
    [
        ("chain", "ab", [Link("a", "b", 0.0)], "bandwidth must be > 0"),
        ("chain", "ab", [Link("a", "a", 1.0)], "to itself"),
        ("chain", "ab", [Link("a", "b", 1.0), Link("a", "b", 2.0)], "a second link"),
        ("mesh", "abc", [Link("a", "b", 1.0), Link("b", "c", 1.0)], "plain chain"),
        ("mesh", "rxyjk", [Link("r", "x", 1.0), Link("r", "y", 1.0), Link("x", "j", 1.0), Link("y", "k", 1.0),
                           Link("j", "k", 1.0)], "join again at one device"),
        ("chain", "", [], "no devices"),
    ],
)
def test_invalid_topologies(kind, names, links, text) -> None:
    with pytest.raises(TopologyError, match=text):
        build_topology(kind, _devices(names), links)
