"""Chain split: the DP against brute force, eq. (1) against ``Topology``, gradients and limits."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from jmsnas.plan.chain import ChainSplit, best_chain_split, chain_latency
from jmsnas.topology import Device, Link, Topology, build_topology, segment_costs


@dataclass
class Case:
    tau: np.ndarray
    out_bytes: np.ndarray
    input_bytes: float
    links: list[Link]
    mem: np.ndarray | None
    cap: list[float | None] | None
    max_layers: list[int] | None

    @property
    def topology(self) -> Topology:
        devices = [Device(f"d{m}") for m in range(self.tau.shape[1])]
        return build_topology("chain", devices, self.links)


def _random_case(rng: np.random.Generator) -> Case:
    n, m = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    out_bytes = rng.integers(0, 5000, n).astype(float) * (rng.random(n) > 0.1)  # a few empty outputs
    links = [
        Link(f"d{i}", f"d{i + 1}", float(rng.uniform(0.5, 50.0)), float(rng.uniform(0.0, 20.0))) for i in range(m - 1)
    ]
    mem = rng.integers(1, 100, n).astype(float) if rng.random() < 0.7 else None
    cap = None
    if mem is not None:  # from "everything fits anywhere" down to often infeasible
        cap = [None if rng.random() < 0.2 else float(rng.uniform(0.3, 1.2) * mem.sum()) for _ in range(m)]
    max_layers = [int(v) for v in rng.integers(0, n + 1, m)] if rng.random() < 0.4 else None
    return Case(rng.uniform(0.0, 10.0, (n, m)), out_bytes, float(rng.integers(1, 5000)), links, mem, cap, max_layers)


def _reference_latency(case: Case, boundaries: tuple[int, ...]) -> float:
    """Eq. (1) by the topology module (independent of the code under test)."""
    topo = case.topology
    path = topo.chain_before
    per_device = {name: case.tau[:, m].tolist() for m, name in enumerate(path)}
    return topo.completion_latency_ms(*segment_costs(path, per_device, boundaries, case.out_bytes, case.input_bytes))


def _feasible(case: Case, boundaries: tuple[int, ...]) -> bool:
    for m in range(len(boundaries) - 1):
        lo, hi = boundaries[m], boundaries[m + 1]
        if case.max_layers is not None and hi - lo > case.max_layers[m]:
            return False
        if case.mem is not None and case.cap is not None and case.cap[m] is not None:
            if case.mem[lo:hi].sum() > case.cap[m]:
                return False
    return True


def _all_boundaries(n: int, m: int) -> list[tuple[int, ...]]:
    return [(0, *cuts, n) for cuts in itertools.combinations_with_replacement(range(n + 1), m - 1)]


def _solve(case: Case) -> ChainSplit:
    return best_chain_split(case.tau, case.out_bytes, case.input_bytes, case.links, case.mem, case.cap, case.max_layers)


def test_dp_equals_brute_force_on_random_chains() -> None:
    rng = np.random.default_rng(0)
    n_infeasible = 0
    for _ in range(200):
        case = _random_case(rng)
        n, m = case.tau.shape
        costs = [_reference_latency(case, b) for b in _all_boundaries(n, m) if _feasible(case, b)]
        if not costs:
            n_infeasible += 1
            with pytest.raises(ValueError, match="no contiguous split"):
                _solve(case)
            continue
        split = _solve(case)
        assert split.latency_ms == pytest.approx(min(costs), rel=1e-9, abs=1e-9)
        assert len(split.boundaries) == m + 1 and _feasible(case, split.boundaries)
        assert split.latency_ms == pytest.approx(_reference_latency(case, split.boundaries), rel=1e-9, abs=1e-9)
    assert 10 <= n_infeasible <= 150  # both kinds of case were exercised


def test_chain_latency_equals_topology_for_random_boundaries() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        case = _random_case(rng)
        n, m = case.tau.shape
        options = _all_boundaries(n, m)
        b = options[int(rng.integers(len(options)))]
        value = chain_latency(torch.from_numpy(case.tau), b, case.out_bytes, case.input_bytes, case.links)
        assert value.item() == pytest.approx(_reference_latency(case, b), rel=1e-12, abs=1e-12)


def test_chain_latency_gradient_is_the_assignment_mask() -> None:
    rng = np.random.default_rng(2)
    tau = torch.tensor(rng.uniform(0, 5, (5, 3)), requires_grad=True)
    links = [Link("a", "b", 10.0, 2.0), Link("b", "c", 1.0, 5.0)]
    boundaries = (0, 2, 2, 5)
    chain_latency(tau, boundaries, [100.0] * 5, 50.0, links).backward()
    mask = torch.zeros(5, 3, dtype=torch.float64)
    mask[0:2, 0] = 1.0
    mask[2:5, 2] = 1.0
    assert torch.equal(tau.grad, mask)


def test_relaying_device_sends_what_it_received() -> None:
    """Source runs nothing: it sends the input; the middle device relays layer 1's output."""
    tau = np.array([[100.0, 1.0, 100.0], [100.0, 1.0, 100.0], [100.0, 100.0, 1.0]])
    links = [Link("a", "b", 8.0, 0.0), Link("b", "c", 8.0, 0.0)]  # 8 Mbit/s: 1 ms per kB
    split = best_chain_split(tau, [1000.0, 3000.0, 2000.0], 4000.0, links)
    assert split.boundaries == (0, 0, 2, 3)
    assert split.latency_ms == pytest.approx(4.0 + 2.0 + 3.0 + 1.0)
    assert [list(r) for r in split.device_layers()] == [[], [0, 1], [2]]


def test_max_layers_per_device_is_respected() -> None:
    tau = np.array([[10.0, 1.0]] * 4)  # device 1 is much faster, free link
    links = [Link("a", "b", 1e9, 0.0)]
    assert best_chain_split(tau, [1.0] * 4, 1.0, links).boundaries == (0, 0, 4)
    split = best_chain_split(tau, [1.0] * 4, 1.0, links, max_layers_per_device=[4, 2])
    assert split.boundaries == (0, 2, 4)
    with pytest.raises(ValueError, match="max layers per device"):
        best_chain_split(tau, [1.0] * 4, 1.0, links, max_layers_per_device=[1, 2])


def test_memory_limit_and_clear_error() -> None:
    tau = np.array([[1.0, 5.0]] * 3)
    links = [Link("a", "b", 1e9, 0.0)]
    split = best_chain_split(tau, [1.0] * 3, 1.0, links, [40.0, 40.0, 40.0], [90.0, None])
    assert split.boundaries == (0, 2, 3)
    with pytest.raises(ValueError, match=r"layers \[1\] alone exceed every device's memory"):
        best_chain_split(tau, [1.0] * 3, 1.0, links, [1.0, 500.0, 1.0], [100.0, 100.0])


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="needs 1 links"):
        best_chain_split(np.zeros((2, 2)), [1.0, 1.0], 1.0, [])
    with pytest.raises(ValueError, match="one entry per layer"):
        best_chain_split(np.zeros((2, 1)), [1.0], 1.0, [])
    with pytest.raises(ValueError, match="non-decreasing"):
        chain_latency(torch.zeros(2, 2), (0, 2, 1), [1.0, 1.0], 1.0, [Link("a", "b", 1.0)])
