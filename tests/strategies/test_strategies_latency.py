"""E[T] over a topology against brute force; gradients against finite differences; the penalty by hand."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from jmsnas.compress.quantize import Compressor
from jmsnas.latency.model import AnalyticLatencyModel
from jmsnas.plan.costs import arch_costs, plan_arch
from jmsnas.space.arch import ArchSpec
from jmsnas.space.macs import arch_descriptors
from jmsnas.space.spec import load_search_space
from jmsnas.space.supernet import Supernet
from jmsnas.strategies.expected_latency import ExpectedLatency, LatencyPenalty
from jmsnas.topology import AnalyticSpec, Device, Link, build_topology, segment_costs

REPO = Path(__file__).resolve().parents[2]
SPACE = load_search_space(REPO / "search_spaces" / "tiny_1d.yaml")


def _devices(rates: dict[str, float]) -> list[Device]:
    return [Device(n, analytic=AnalyticSpec(macs_per_s=r, memory_bytes=10**9, overhead_ms=0.01)) for n, r in
            rates.items()]


def _models(devices: list[Device]) -> dict[str, AnalyticLatencyModel]:
    return {d.name: AnalyticLatencyModel(d.name, d.analytic) for d in devices}


def _brute_force(topology, models, spec: ArchSpec, shrink: tuple[int, ...] = ()) -> float:
    """Min over every path and every contiguous assignment of eq. (1)/(2), straight from the topology.

    ``shrink[m]``: cut m of a path sends ``ceil(bytes / shrink[m])`` (4: 8-bit values, 8: 4-bit ones).
    """
    descs = arch_descriptors(spec)
    out_bytes = [4.0 * d.output_numel for d in descs]
    best = float("inf")
    for path in topology.paths():
        lat = {m: list(models[m].predict(descs)) for m in path}
        for cuts in itertools.combinations_with_replacement(range(len(descs) + 1), len(path) - 1):
            compute, sent = segment_costs(path, lat, [0, *cuts, len(descs)], out_bytes, 4.0 * descs[0].input_numel)
            for m, factor in enumerate(shrink[:len(path) - 1]):
                sent[path[m]] = math.ceil(sent[path[m]] / factor)
            sub = build_topology("chain", [topology.device(m) for m in path],
                                 [topology.link(a, b) for a, b in itertools.pairwise(path)])
            best = min(best, sub.completion_latency_ms(compute, sent))
    return best


@pytest.mark.parametrize(("kind", "compressors", "shrink"), [
    ("chain", (), ()), ("mesh", (), ()),
    ("chain", (Compressor("quantize", 8), Compressor("quantize", 4)), (4, 8)),
    ("mesh", (Compressor("quantize", 4),), (8,)),
])
def test_discrete_networks_match_brute_force(kind, compressors, shrink) -> None:
    if kind == "chain":
        devices = _devices({"mcu": 2e6, "phone": 5e7, "cloud": 1e9})
        links = [Link("mcu", "phone", 0.05, 4.0), Link("phone", "cloud", 2.0, 20.0)]
    else:
        devices = _devices({"ue": 2e6, "sbs": 2e7, "b1": 1e8, "b2": 3e8, "cloud": 1e9})
        links = [Link("ue", "sbs", 0.1, 1.0), Link("sbs", "b1", 1.0), Link("sbs", "b2", 0.2), Link("b1", "cloud", 5.0),
                 Link("b2", "cloud", 5.0)]
    topology = build_topology(kind, devices, links)
    models = _models(devices)
    predictor = ExpectedLatency(SPACE, topology, models, num_classes=10, compressors=compressors)
    for choice in itertools.islice(itertools.product(*[range(len(s.candidates)) for s in SPACE.layers()]), 0, None,
                                   37):
        spec = ArchSpec.from_choices(SPACE, [s.candidates[i] for s, i in zip(SPACE.layers(), choice, strict=True)], 10)
        estimate = predictor.for_choices(choice)
        assert float(estimate.total_ms) == pytest.approx(_brute_force(topology, models, spec, shrink), rel=1e-5)
        plan = plan_arch(arch_costs(spec, models), topology, list(compressors))  # the deploy stage's planner
        assert plan.total_latency_ms == pytest.approx(float(estimate.total_ms), rel=1e-5)
        assert sum(estimate.device_ms.values()) + sum(estimate.link_ms.values()) == pytest.approx(
            float(estimate.total_ms), rel=1e-5)


def test_expected_latency_gradient_matches_finite_differences() -> None:
    devices = _devices({"a": 3e6, "b": 4e7})
    topology = build_topology("chain", devices, [Link("a", "b", 0.5, 2.0)])
    predictor = ExpectedLatency(SPACE, topology, _models(devices), num_classes=10)
    net = Supernet(SPACE, 10).double()
    torch.manual_seed(0)
    for alpha in net.arch_parameters():
        alpha.data.normal_()
    predictor(net.probs()).total_ms.backward()
    split = predictor(net.probs()).boundaries
    eps = 1e-6
    for alpha in net.arch_parameters():
        for i in range(len(alpha)):
            with torch.no_grad():
                alpha[i] += eps
                up = predictor(net.probs())
                alpha[i] -= 2 * eps
                down = predictor(net.probs())
                alpha[i] += eps
            assert up.boundaries == down.boundaries == split  # the split is locally constant
            fd = (float(up.total_ms) - float(down.total_ms)) / (2 * eps)
            assert float(alpha.grad[i]) == pytest.approx(fd, rel=1e-3, abs=1e-6)


def test_penalty_by_hand() -> None:
    two = LatencyPenalty(lambda2=0.5, t_const_ms=10.0)
    one = LatencyPenalty(lambda2=0.5, t_const_ms=10.0, one_sided=True)
    assert float(two(torch.tensor(14.0))[0]) == pytest.approx(0.5 * 16)
    assert float(two(torch.tensor(7.0))[0]) == pytest.approx(0.5 * 9)
    assert float(one(torch.tensor(7.0))[0]) == 0.0
    assert float(one(torch.tensor(13.0))[0]) == pytest.approx(0.5 * 9)
    loss, info = two(torch.tensor(12.0, requires_grad=True))
    assert info == {"latency_penalty": 2.0, "expected_latency_ms": 12.0}


def test_derive_within_repairs_an_infeasible_argmax() -> None:
    from jmsnas.strategies.expected_latency import derive_within

    devices = _devices({"a": 3e6, "b": 4e7})
    topology = build_topology("chain", devices, [Link("a", "b", 0.5, 2.0)])
    predictor = ExpectedLatency(SPACE, topology, _models(devices), num_classes=10)
    net = Supernet(SPACE, 10)
    slowest = [int(t.sum(1).argmax()) for t in predictor.tables]
    with torch.no_grad():
        for alpha, i in zip(net.arch_parameters(), slowest, strict=True):
            alpha[i] = 3.0  # the most likely network is the slowest one
    top = float(predictor.for_choices(slowest).total_ms)
    fastest = float(predictor.for_choices([int(t.sum(1).argmin()) for t in predictor.tables]).total_ms)
    assert derive_within(net.probs(), predictor, top + 1.0) == slowest  # already feasible: untouched
    budget = (top + fastest) / 2
    repaired = derive_within(net.probs(), predictor, budget)
    assert float(predictor.for_choices(repaired).total_ms) <= budget < top
    # nothing is fast enough: the fastest reachable network is returned, still over the budget
    assert float(predictor.for_choices(derive_within(net.probs(), predictor, 0.0)).total_ms) == pytest.approx(
        fastest)
