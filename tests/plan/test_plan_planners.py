"""Planner: exact against brute force over every contiguous assignment, with Topology as the reference."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from jmsnas.plan.artifact import DeploymentPlan, TensorSpec
from jmsnas.plan.planners import plan_branched, plan_sequential
from jmsnas.topology import Device, Link, Topology, build_topology, segment_costs


def _all_boundaries(n_layers: int, n_dev: int) -> list[tuple[int, ...]]:
    inner = itertools.combinations_with_replacement(range(n_layers + 1), n_dev - 1)
    return [(0, *c, n_layers) for c in inner]


def _links(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> list[Link]:
    return [Link(a, b, float(rng.uniform(0.5, 50.0)), float(rng.uniform(0.0, 20.0))) for a, b in pairs]


def _chain(rng: np.random.Generator, n_dev: int) -> Topology:
    names = [f"d{i}" for i in range(n_dev)]
    return build_topology("chain", [Device(n) for n in names], _links(rng, list(zip(names, names[1:], strict=False))))


def _mesh(rng: np.random.Generator, n_before: int, n_branches: int, n_after: int,
          memory: dict[str, int] | None = None) -> Topology:
    before, branches = [f"p{i}" for i in range(n_before)], [f"b{i}" for i in range(n_branches)]
    after = [f"a{i}" for i in range(n_after)]
    head = [*before, "root"]
    pairs = list(zip(head, head[1:], strict=False))
    pairs += [("root", b) for b in branches] + [(b, after[0]) for b in branches]
    pairs += list(zip(after, after[1:], strict=False))
    devices = [Device(n, memory_bytes=(memory or {}).get(n)) for n in [*before, "root", *branches, *after]]
    return build_topology("mesh", devices, _links(rng, pairs))


def _compress(sent: dict[str, float], compressors: dict[str, str]) -> dict[str, float]:
    return {k: math.ceil(v / 4) if compressors.get(k) == "quantize" else v for k, v in sent.items()}


def _path_reference(
    topo: Topology,
    path: tuple[str, ...],
    lat: dict,
    out: np.ndarray,
    inp: float,
    bounds: tuple[int, ...],
    compressors: dict[str, str],
) -> float:
    """Eq. (1) on one path, by a chain Topology built from the path (independent of the planner)."""
    links = [topo.link(a, b) for a, b in zip(path, path[1:], strict=False)]
    chain = build_topology("chain", [Device(n) for n in path], links)
    compute, sent = segment_costs(path, lat, bounds, out, inp)
    return chain.completion_latency_ms(compute, _compress(sent, compressors))


def _random_layers(rng: np.random.Generator, names: Sequence[str], n: int) -> tuple[dict, np.ndarray]:
    lat = {name: rng.uniform(0.0, 10.0, n).tolist() for name in names}
    return lat, rng.integers(0, 5000, n).astype(float)


@pytest.mark.parametrize("seed", range(12))
def test_sequential_plan_is_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    topo = _chain(rng, int(rng.integers(1, 4))) if seed % 2 else _mesh(rng, int(rng.integers(0, 2)), 2, 2)
    n = int(rng.integers(1, 6))
    lat, out = _random_layers(rng, [d.name for d in topo.devices], n)
    inp = float(rng.integers(1, 5000))
    compressors = {topo.source: "quantize"} if seed % 3 == 0 else {}
    plan = plan_sequential(lat, out, inp, topo, compressors=compressors)
    best = min(
        _path_reference(topo, path, lat, out, inp, b, compressors)
        for path in topo.paths()
        for b in _all_boundaries(n, len(path))
    )
    assert plan.total_latency_ms == pytest.approx(best, rel=1e-9, abs=1e-9)
    path = tuple(plan.devices)
    assert path in topo.paths()
    again = _path_reference(topo, path, lat, out, inp, tuple(plan.boundaries()), compressors)
    assert again == pytest.approx(plan.total_latency_ms, rel=1e-9, abs=1e-9)
    assert len(plan.cuts) == len(path) - 1
    assert sum(s.compute_ms for s in plan.segments) + sum(c.link_ms for c in plan.cuts) == pytest.approx(best)


def test_sequential_plan_respects_device_memory() -> None:
    rng = np.random.default_rng(0)
    links = _links(rng, [("d0", "d1")])
    topo = build_topology("chain", [Device("d0", memory_bytes=10), Device("d1")], links)
    lat = {"d0": [0.0, 0.0, 0.0], "d1": [100.0, 100.0, 100.0]}
    plan = plan_sequential(lat, [1.0, 1.0, 1.0], 1.0, topo, memory_bytes_per_layer=[6.0, 6.0, 6.0])
    assert plan.boundaries() == [0, 1, 3]
    tight = build_topology("chain", [Device("d0", memory_bytes=1), Device("d1", memory_bytes=1)], links)
    with pytest.raises(ValueError, match="no path"):
        plan_sequential(lat, [1.0, 1.0, 1.0], 1.0, tight, memory_bytes_per_layer=[6.0, 6.0, 6.0])


@pytest.mark.parametrize("seed", range(8))
def test_branched_plan_is_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    topo = _mesh(rng, int(rng.integers(0, 3)), int(rng.integers(2, 4)), int(rng.integers(1, 3)))
    names = [d.name for d in topo.devices]
    n_pre, n_post = int(rng.integers(0, 4)), int(rng.integers(0, 4))
    pre, post = _random_layers(rng, names, n_pre), _random_layers(rng, names, n_post)
    branches = [
        (rng.uniform(0, 10, k).tolist(), rng.integers(1, 5000, k).astype(float))
        for k in rng.integers(1, 3, len(topo.branches))
    ]
    inp, join_inp = float(rng.integers(1, 5000)), float(rng.integers(1, 5000))
    compressors = {"root": "quantize"} if seed % 2 else {}
    plan = plan_branched(pre, branches, post, inp, join_inp, topo, compressors=compressors)
    pre_path, post_path = (*topo.chain_before, "root"), topo.chain_after
    best = math.inf
    for bp in _all_boundaries(n_pre, len(pre_path)):
        for bq in _all_boundaries(n_post, len(post_path)):
            compute, sent = segment_costs(pre_path, pre[0], bp, pre[1], inp)
            c2, s2 = segment_costs(post_path, post[0], bq, post[1], join_inp)
            compute |= c2 | {b: float(sum(lat)) for b, (lat, _) in zip(topo.branches, branches, strict=True)}
            sent |= s2 | {b: float(out[-1]) for b, (_, out) in zip(topo.branches, branches, strict=True)}
            best = min(best, topo.completion_latency_ms(compute, _compress(sent, compressors)))
    assert plan.total_latency_ms == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert set(plan.devices) == set(names)


@pytest.mark.parametrize("seed", range(10))
def test_branched_plan_with_memory_limits_is_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    n_before, n_branches, n_after = int(rng.integers(0, 2)), 2, int(rng.integers(1, 3))
    names = [*(f"p{i}" for i in range(n_before)), "root", "b0", "b1", *(f"a{i}" for i in range(n_after))]
    memory = {n: int(rng.integers(5, 25)) for n in names}
    topo = _mesh(rng, n_before, n_branches, n_after, memory)
    n_pre, n_post = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    pre, post = _random_layers(rng, names, n_pre), _random_layers(rng, names, n_post)
    branches = [(rng.uniform(0, 10, 1).tolist(), rng.integers(1, 5000, 1).astype(float)) for _ in range(2)]
    mem_pre, mem_post = rng.integers(1, 12, n_pre).tolist(), rng.integers(1, 12, n_post).tolist()
    mem_branches = [rng.integers(1, 8, 1).tolist() for _ in range(2)]
    inp, join_inp = float(rng.integers(1, 5000)), float(rng.integers(1, 5000))
    pre_path, post_path = (*topo.chain_before, "root"), topo.chain_after

    def fits(path: Sequence[str], mem: Sequence[int], bounds: tuple[int, ...]) -> bool:
        return all(sum(mem[bounds[m]:bounds[m + 1]]) <= memory[name] for m, name in enumerate(path))

    best = math.inf
    if all(sum(m) <= memory[b] for m, b in zip(mem_branches, topo.branches, strict=True)):
        for bp in _all_boundaries(n_pre, len(pre_path)):
            for bq in _all_boundaries(n_post, len(post_path)):
                if not (fits(pre_path, mem_pre, bp) and fits(post_path, mem_post, bq)):
                    continue
                compute, sent = segment_costs(pre_path, pre[0], bp, pre[1], inp)
                c2, s2 = segment_costs(post_path, post[0], bq, post[1], join_inp)
                compute |= c2 | {b: float(sum(lat)) for b, (lat, _) in zip(topo.branches, branches, strict=True)}
                sent |= s2 | {b: float(out[-1]) for b, (_, out) in zip(topo.branches, branches, strict=True)}
                best = min(best, topo.completion_latency_ms(compute, sent))
    args = (pre, branches, post, inp, join_inp, topo)
    if math.isinf(best):
        with pytest.raises(ValueError):
            plan_branched(*args, memory_bytes=(mem_pre, mem_branches, mem_post))
        return
    plan = plan_branched(*args, memory_bytes=(mem_pre, mem_branches, mem_post))
    assert plan.total_latency_ms == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert plan_branched(*args).total_latency_ms <= plan.total_latency_ms + 1e-9  # limits can only cost time


def test_branched_plan_rejects_a_chain() -> None:
    topo = _chain(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="mesh"):
        plan_branched(({}, []), [([1.0], [1.0])], ({}, []), 1.0, 1.0, topo)


def test_plan_json_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    topo = _chain(rng, 3)
    lat, out = _random_layers(rng, ["d0", "d1", "d2"], 4)
    plan = plan_sequential(lat, out, 100.0, topo, compressors={"d0": "quantize"})
    plan = plan.with_cut_tensors(
        [[TensorSpec(f"t{i}", (1, 4, 8)), TensorSpec(f"s{i}", (1, 4, 8))] for i in range(len(plan.cuts))]
    )
    plan = plan.with_compressor_params([{"scales": [0.5, 0.25], "zero_points": [3, 4]}] + [{}] * (len(plan.cuts) - 1))
    plan.to_json(tmp_path / "plan.json")
    loaded = DeploymentPlan.from_json(tmp_path / "plan.json")
    assert loaded == plan
    assert loaded.cuts[0].tensors[1] == TensorSpec("s0", (1, 4, 8), "float32")
