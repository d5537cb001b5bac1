"""A mesh path that cannot hold the network is skipped, not fatal: the planner and the E[T] predictor agree."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from jmsnas.latency.model import AnalyticLatencyModel
from jmsnas.plan.chain import best_path
from jmsnas.plan.costs import arch_costs, plan_arch
from jmsnas.space.arch import ArchSpec
from jmsnas.space.spec import load_search_space
from jmsnas.strategies.expected_latency import ExpectedLatency, derive_within
from jmsnas.topology import AnalyticSpec, Device, Link, build_topology

REPO = Path(__file__).resolve().parents[2]
SPACE = load_search_space(REPO / "search_spaces" / "tiny_1d.yaml")


def _mesh(b1_memory: int):
    """ue -> sbs -> {b1, b2} -> cloud; ue and sbs hold almost nothing, b1 is fast but (maybe) tiny, b2 slow."""
    def dev(name: str, rate: float, memory: int) -> Device:
        return Device(name, analytic=AnalyticSpec(macs_per_s=rate, memory_bytes=memory, overhead_ms=0.01))

    devices = [dev("ue", 1e6, 1), dev("sbs", 1e6, 1), dev("b1", 1e10, b1_memory), dev("b2", 1e7, 10**9),
               dev("cloud", 1e6, 1)]
    links = [Link("ue", "sbs", 100.0), Link("sbs", "b1", 100.0), Link("sbs", "b2", 100.0), Link("b1", "cloud", 100.0),
             Link("b2", "cloud", 100.0)]
    topology = build_topology("mesh", devices, links)
    return topology, {d.name: AnalyticLatencyModel(d.name, d.analytic) for d in devices}


def test_best_path_skips_paths_that_raise_and_keeps_the_first_of_ties() -> None:
    topology, _ = _mesh(10**9)
    paths = [tuple(p) for p in topology.paths()]
    assert best_path(topology, lambda p: 1.0, lambda v: v)[0] == paths[0]
    def solve(p):
        if "b1" in p:
            raise ValueError("does not fit")
        return 2.0
    assert best_path(topology, solve, lambda v: v) == (next(p for p in paths if "b2" in p), 2.0)
    with pytest.raises(ValueError, match="no path of the mesh fits: nope"):
        best_path(topology, lambda p: (_ for _ in ()).throw(ValueError("nope")), lambda v: v)


def test_expected_latency_uses_the_path_that_fits_when_the_fast_one_is_full() -> None:
    roomy, roomy_models = _mesh(10**9)
    full, full_models = _mesh(64)  # b1 cannot hold even one layer's weights
    for topology, models, branch in ((roomy, roomy_models, "b1"), (full, full_models, "b2")):
        predictor = ExpectedLatency(SPACE, topology, models, num_classes=10)
        for choice in itertools.islice(itertools.product(*[range(len(s.candidates)) for s in SPACE.layers()]), 0,
                                       None, 97):
            estimate = predictor.for_choices(choice)
            assert branch in estimate.path  # the fast branch when it fits, else the one that does
            spec = ArchSpec.from_choices(SPACE, [s.candidates[i] for s, i in zip(SPACE.layers(), choice,
                                                                                   strict=True)], 10)
            plan = plan_arch(arch_costs(spec, models), topology)  # the deploy stage's planner agrees
            assert plan.devices == list(estimate.path)
            assert plan.total_latency_ms == pytest.approx(float(estimate.total_ms), rel=1e-5)
        probs = [predictor.tables[n].new_ones(len(s.candidates)) / len(s.candidates)
                 for n, s in enumerate(SPACE.layers())]
        assert len(derive_within(probs, predictor, t_const_ms=1e9)) == len(SPACE.layers())


def test_pinned_counts_on_a_mesh_take_each_paths_own_devices() -> None:
    """One count per topology device; a path uses its devices' counts (it used to fail on every mesh)."""
    topology, models = _mesh(10**9)
    n = len(SPACE.layers()) + 2  # stem, searchable layers, head
    for b1_count, branch in ((n, "b1"), (1, "b2")):  # b1 (fast) may hold everything, or one layer only
        counts = [1, 1, b1_count, n, 1]  # ue, sbs, b1, b2, cloud: ue / sbs / cloud hold nothing anyway
        predictor = ExpectedLatency(SPACE, topology, models, num_classes=10, max_layers_per_device=counts)
        estimate = predictor.for_choices([0] * len(SPACE.layers()))
        assert branch in estimate.path
        b = estimate.boundaries
        limit = dict(zip([d.name for d in topology.devices], counts, strict=True))
        assert all(b[m + 1] - b[m] <= limit[d] for m, d in enumerate(estimate.path))


def test_a_wrong_number_of_pinned_counts_is_refused_at_check(tiny_experiment, write_experiment, capsys) -> None:
    from jmsnas.cli import main

    tiny_experiment["strategy"].update({"split": "pinned", "max_layers_per_device": [2, 2]})  # three devices
    path = write_experiment(tiny_experiment)
    assert main(["search", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "strategy.max_layers_per_device: 2 layer counts given for 3 devices" in err and "a, b, c" in err
    tiny_experiment["strategy"]["max_layers_per_device"] = [2, 2, 20]
    assert main(["search", str(write_experiment(tiny_experiment)), "--check"]) == 0
