"""E[T] of a branched supernet on a mesh (eq. (2)): brute force, the deploy planner, finite differences."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from jmsnas.latency.model import AnalyticLatencyModel
from jmsnas.plan.chain import sent_bytes
from jmsnas.plan.planners import plan_branched
from jmsnas.space.spec import load_search_space
from jmsnas.strategies.branched_latency import BranchedExpectedLatency
from jmsnas.topology import AnalyticSpec, Device, Link, build_topology

REPO = Path(__file__).resolve().parents[2]
SPACE = load_search_space(REPO / "search_spaces" / "mbconv13_1d_mesh.yaml")
BRANCHES = ("m1", "m2", "m3")


def _mesh(m3_memory: int = 10**9):
    """ue -> sbs -> {m1, m2, m3} -> cloud -> sink; every device a different speed, so no two branches tie."""
    rates = {"ue": 2e6, "sbs": 3e7, "m1": 1e8, "m2": 6e7, "m3": 4e7, "cloud": 5e8, "sink": 1e7}

    def dev(name: str) -> Device:
        memory = m3_memory if name == "m3" else 10**9
        return Device(name, analytic=AnalyticSpec(macs_per_s=rates[name], memory_bytes=memory, overhead_ms=0.01))

    links = [Link("ue", "sbs", 2.0, 4.0), *(Link("sbs", m, 20.0, 2.0) for m in BRANCHES),
             *(Link(m, "cloud", 50.0 + 10 * i, 1.0) for i, m in enumerate(BRANCHES)), Link("cloud", "sink", 1.0, 3.0)]
    topology = build_topology("mesh", [dev(n) for n in rates], links)
    return topology, {d.name: AnalyticLatencyModel(d.name, d.analytic) for d in topology.devices}


def _brute_force(predictor: BranchedExpectedLatency, choice: list[int]) -> float:
    """Eq. (2) by hand: every split of the pre part over (ue, sbs) and of the post part over (cloud, sink)."""
    topo, devs = predictor.topology, predictor.devices
    tau = [[float(predictor.stem_ms[d]) for d in range(len(devs))]]
    tau += [[float(t[i, d]) for d in range(len(devs))] for t, i in zip(predictor.tables, choice, strict=True)]
    tau.append([float(predictor.head_ms[d]) for d in range(len(devs))])
    out = predictor.output_bytes
    col = devs.index

    def chain(rows: list[int], a: str, b: str, input_bytes: float) -> float:
        outs = [out[r] for r in rows]
        return min(sum(tau[r][col(a)] for r in rows[:k]) + topo.link(a, b).latency_ms(sent_bytes(k, outs, input_bytes))
                   + sum(tau[r][col(b)] for r in rows[k:]) for k in range(len(rows) + 1))

    pre, post = predictor.rows["pre"], predictor.rows["post"]
    root_bytes = out[pre[-1]]
    tree = max(topo.link("sbs", m).latency_ms(root_bytes) + sum(tau[r][col(m)] for r in rows)
               + topo.link(m, "cloud").latency_ms(out[rows[-1]]) for m, rows in zip(BRANCHES, predictor.branch_rows,
                                                                                     strict=True))
    return chain(pre, "ue", "sbs", predictor.input_bytes) + tree + chain(post, "cloud", "sink", predictor.join_bytes)


def _choices(n: int) -> list[list[int]]:
    every = itertools.product(*[range(len(s.candidates)) for s in SPACE.layers()])
    return [list(c) for c in itertools.islice(every, 0, None, 7919)][:n]


def test_eq2_equals_brute_force_and_the_deploy_planner() -> None:
    topology, models = _mesh()
    predictor = BranchedExpectedLatency(SPACE, topology, models, num_classes=10)
    assert predictor.device_order == ("ue", "sbs", "m1", "m2", "m3", "cloud", "sink")
    choices = _choices(25)
    assert len(choices) == 25
    for choice in choices:
        estimate = predictor.for_choices(choice)
        assert float(estimate.total_ms) == pytest.approx(_brute_force(predictor, choice), rel=1e-6)
        # the deploy stage's planner, given the same per-layer latencies, finds the same optimum
        tau = predictor.layer_latency([torch.nn.functional.one_hot(torch.tensor(i), len(t)).double()
                                       for i, t in zip(choice, predictor.tables, strict=True)])
        per = {d: tau[:, c].tolist() for c, d in enumerate(predictor.devices)}
        out = predictor.output_bytes
        pre, post = predictor.rows["pre"], predictor.rows["post"]
        plan = plan_branched(({d: [per[d][r] for r in pre] for d in per}, [out[r] for r in pre]),
                             [([per[m][r] for r in rows], [out[r] for r in rows])
                              for m, rows in zip(BRANCHES, predictor.branch_rows, strict=True)],
                             ({d: [per[d][r] for r in post] for d in per}, [out[r] for r in post]),
                             predictor.input_bytes, predictor.join_bytes, topology)
        assert plan.total_latency_ms == pytest.approx(float(estimate.total_ms), rel=1e-6)
        b = estimate.boundaries  # the flat layer list, one contiguous range per device in part order
        assert b[0] == 0 and b[-1] == SPACE.num_layers + 2 and list(b) == sorted(b)
        assert len(b) == len(estimate.path) + 1 and estimate.path == predictor.device_order


def test_gradient_matches_finite_differences_and_flows_through_the_slowest_branch_only() -> None:
    topology, models = _mesh()
    predictor = BranchedExpectedLatency(SPACE, topology, models, num_classes=10)
    gen = torch.Generator().manual_seed(0)
    alphas = [torch.randn(len(s.candidates), generator=gen, dtype=torch.float64) for s in SPACE.layers()]

    def total(values: list[torch.Tensor]) -> torch.Tensor:
        return predictor([torch.softmax(a, 0) for a in values]).total_ms

    leaves = [a.clone().requires_grad_(True) for a in alphas]
    total(leaves).backward()
    eps = 1e-6
    for n, a in enumerate(alphas):
        for i in range(len(a)):
            up = [x.clone() for x in alphas]
            down = [x.clone() for x in alphas]
            up[n][i] += eps
            down[n][i] -= eps
            fd = (float(total(up)) - float(total(down))) / (2 * eps)
            assert float(leaves[n].grad[i]) == pytest.approx(fd, rel=1e-4, abs=1e-9)
    probs = [torch.softmax(a, 0) for a in alphas]
    arms = [sum(float(predictor.layer_latency(probs)[r, predictor.devices.index(m)]) for r in rows)
            for m, rows in zip(BRANCHES, predictor.branch_rows, strict=True)]
    estimate = predictor(probs)
    hops = [estimate.link_ms[f"sbs->{m}"] + estimate.link_ms[f"{m}->cloud"] for m in BRANCHES]
    slowest = max(range(3), key=lambda k: arms[k] + hops[k])
    for k, rows in enumerate(predictor.branch_rows):  # the max's subgradient: only the critical branch moves
        moved = any(float(leaves[r - 1].grad.abs().max()) > 0 for r in rows)
        assert moved == (k == slowest)


def test_a_branch_that_does_not_fit_its_device_is_named() -> None:
    topology, models = _mesh(m3_memory=64)
    predictor = BranchedExpectedLatency(SPACE, topology, models, num_classes=10)
    with pytest.raises(ValueError, match="branch 2 needs .* 'm3' has 64 B"):
        predictor.for_choices(_choices(1)[0])


def test_a_sequential_space_or_a_chain_is_refused() -> None:
    topology, models = _mesh()
    with pytest.raises(ValueError, match="branched space"):
        BranchedExpectedLatency(load_search_space(REPO / "search_spaces" / "mbconv13_1d.yaml"), topology, models, 10)
