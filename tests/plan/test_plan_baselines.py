"""Baselines: hand-placed plans equal eq. (1) by Topology; Neurosurgeon = brute force over single splits."""

from __future__ import annotations

import numpy as np
import pytest

from jmsnas.latency.model import AnalyticLatencyModel
from jmsnas.plan.baselines import (
    baselines,
    cloud_only,
    device_only,
    hivemind,
    mobilenet_v2_spec,
    neurosurgeon,
)
from jmsnas.plan.costs import LayerCosts, arch_costs
from jmsnas.plan.planners import plan_fixed
from jmsnas.space.spec import load_search_space
from jmsnas.topology import AnalyticSpec, Device, Link, build_topology, segment_costs

REPO_SPACE = "search_spaces/tiny_1d.yaml"


def _chain(rng: np.random.Generator, n_dev: int):
    names = [f"d{i}" for i in range(n_dev)]
    pairs = zip(names, names[1:], strict=False)
    links = [Link(a, b, float(rng.uniform(0.1, 20.0)), float(rng.uniform(0, 10))) for a, b in pairs]
    return names, build_topology("chain", [Device(n) for n in names], links)


def _costs(rng: np.random.Generator, names: list[str], n_layers: int) -> LayerCosts:
    lat = {n: [float(v) for v in rng.uniform(0.1, 10.0, n_layers)] for n in names}
    out = [float(v) for v in rng.integers(10, 5000, n_layers)]
    return LayerCosts(lat, out, float(rng.integers(10, 5000)), [0.0] * n_layers, [1] * n_layers)


@pytest.mark.parametrize("seed", range(20))
def test_hand_placed_plans_match_eq_1_and_neurosurgeon_is_the_best_single_split(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names, topo = _chain(rng, int(rng.integers(2, 5)))
    n = int(rng.integers(1, 7))
    costs = _costs(rng, names, n)

    def eq1(bounds: list[int]) -> float:
        return topo.completion_latency_ms(*segment_costs(names, costs.latency_ms, bounds, costs.output_bytes,
                                                         costs.input_bytes))

    bounds = sorted(int(v) for v in rng.integers(0, n + 1, len(names) - 1))
    plan = plan_fixed(costs.latency_ms, costs.output_bytes, costs.input_bytes, topo, names, [0, *bounds, n])
    assert plan.total_latency_ms == pytest.approx(eq1([0, *bounds, n]))
    assert device_only(costs, topo).latency_ms == pytest.approx(eq1([0] + [n] * len(names)))
    assert cloud_only(costs, topo).latency_ms == pytest.approx(eq1([0] * len(names) + [n]))
    singles = [eq1([0] + [k] * (len(names) - 1) + [n]) for k in range(n + 1)]
    assert neurosurgeon(costs, topo).latency_ms == pytest.approx(min(singles))
    # a multi-split has every single split among its choices
    assert hivemind(costs, topo).latency_ms <= min(singles) + 1e-9


def test_fixed_network_is_mobilenet_v2_blocks_and_all_four_baselines_are_reported() -> None:
    space = load_search_space(REPO_SPACE)
    spec = mobilenet_v2_spec(space, num_classes=10)
    assert spec.choices == ["mb_k3_e6_sc", "mb_k3_e6", "mb_k3_e6_sc"]  # tiny_1d: layer 1 changes the shape
    devices = [Device("a", analytic=AnalyticSpec(macs_per_s=1e7, memory_bytes=1 << 20)),
               Device("b", analytic=AnalyticSpec(macs_per_s=1e9, memory_bytes=1 << 30))]
    topo = build_topology("chain", devices, [Link("a", "b", 1.0, 10.0)])
    models = {d.name: AnalyticLatencyModel(d.name, d.analytic) for d in devices}
    searched = mobilenet_v2_spec(space, num_classes=10)
    results = {r.name: r for r in baselines(searched, space, topo, models)}
    assert list(results) == ["device-only", "cloud-only", "neurosurgeon", "hivemind"]
    costs = arch_costs(searched, models)
    logits_hop = topo.link("a", "b").latency_ms(costs.output_bytes[-1])  # the result is relayed to the sink
    assert results["device-only"].latency_ms == pytest.approx(sum(costs.latency_ms["a"]) + logits_hop)
    assert results["cloud-only"].boundaries == [0, 0, costs.num_layers]
    assert results["hivemind"].latency_ms <= results["neurosurgeon"].latency_ms + 1e-9
    assert all(r.fits_memory for r in results.values())


@pytest.mark.parametrize("seed", range(10))
def test_each_baseline_breaks_its_latency_into_device_compute_and_link_transfer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names, topo = _chain(rng, int(rng.integers(2, 5)))
    costs = _costs(rng, names, int(rng.integers(1, 7)))
    for b in (device_only(costs, topo), cloud_only(costs, topo), neurosurgeon(costs, topo), hivemind(costs, topo)):
        assert set(b.device_ms) == set(b.path)
        assert set(b.link_ms) == {f"{s}->{d}" for s, d in zip(b.path, b.path[1:], strict=False)}
        assert sum(b.device_ms.values()) + sum(b.link_ms.values()) == pytest.approx(b.latency_ms)
    only = device_only(costs, topo)  # everything on the source, by hand from the layer costs
    assert only.device_ms[names[0]] == pytest.approx(sum(costs.latency_ms[names[0]]))
    assert all(only.device_ms[n] == 0.0 for n in names[1:])
