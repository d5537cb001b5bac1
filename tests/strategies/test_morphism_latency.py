"""Latency of one ArchSpec on a topology: equal to the supernet predictor on plain networks, skips cost their bytes."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from jmsnas.compress.quantize import Compressor
from jmsnas.latency.model import AnalyticLatencyModel
from jmsnas.plan.costs import cut_bytes
from jmsnas.space import morph
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.space.macs import arch_descriptors
from jmsnas.space.spec import load_search_space
from jmsnas.strategies.arch_latency import ArchLatencyModel, DoesNotFit
from jmsnas.strategies.expected_latency import ExpectedLatency
from jmsnas.topology import AnalyticSpec, Device, Link, build_topology

REPO = Path(__file__).resolve().parents[2]
SPACE = load_search_space(REPO / "search_spaces" / "tiny_1d.yaml")


def _chain(memory: int = 10**9):
    devices = [Device(n, analytic=AnalyticSpec(macs_per_s=r, memory_bytes=memory, overhead_ms=0.01))
               for n, r in {"mcu": 2e6, "phone": 5e7, "cloud": 1e9}.items()]
    topology = build_topology("chain", devices, [Link("mcu", "phone", 0.05, 4.0), Link("phone", "cloud", 2.0, 20.0)])
    return topology, {d.name: AnalyticLatencyModel(d.name, d.analytic) for d in devices}


@pytest.mark.parametrize("compressors", [(), (Compressor("quantize", 8), Compressor("autoencoder", 8, 0.25, 0.5))])
def test_plain_networks_match_the_supernet_predictor(compressors) -> None:
    topology, models = _chain()
    expected = ExpectedLatency(SPACE, topology, models, num_classes=10, compressors=compressors)
    model = ArchLatencyModel(topology, models, compressors)
    for choice in itertools.islice(itertools.product(*[range(len(s.candidates)) for s in SPACE.layers()]), 0, None,
                                   53):
        spec = ArchSpec.from_choices(SPACE, [s.candidates[i] for s, i in zip(SPACE.layers(), choice, strict=True)], 10)
        est, got = expected.for_choices(choice), model(spec)
        assert got.latency_ms == pytest.approx(float(est.total_ms), rel=1e-5)
        split = got.split()
        assert split["path"] == list(est.path) and split["boundaries"] == list(est.boundaries)


def test_a_skip_adds_its_tensor_to_every_cut_it_crosses() -> None:
    spec = ArchSpec.from_choices(SPACE, ["mb_k3_e3", "mb_k5_e3", "mb_k3_e3_sc"], 10)
    skipped, _ = morph.add_skip(spec, build_model(spec), 2, 0)  # block 2 (layer 3) reads the stem (layer 0)
    own = [4.0 * d.output_numel for d in arch_descriptors(skipped)]
    assert cut_bytes(spec, own) == own
    assert cut_bytes(skipped, own) == [own[0], own[1] + own[0], own[2] + own[0], own[3], own[4]]
    topology, models = _chain()
    plan = ArchLatencyModel(topology, models)(skipped).plan  # what the planner sends is what the cuts carry
    carried = cut_bytes(skipped, own)
    assert [c.payload_bytes for c in plan.cuts] == [carried[b - 1] if b else 4.0 * 16 for b in plan.boundaries()[1:-1]]


def test_grown_networks_cost_more_and_too_big_ones_do_not_fit() -> None:
    topology, models = _chain()
    spec = ArchSpec.from_choices(SPACE, ["mb_k3_e3", "mb_k5_e3", "mb_k3_e3_sc"], 10)
    net, rng = build_model(spec), random.Random(0)
    base = ArchLatencyModel(topology, models)(spec).latency_ms
    grown, _ = morph.widen(spec, net, 1, 8, rng)
    assert ArchLatencyModel(topology, models)(grown).latency_ms >= base
    tiny_topology, tiny_models = _chain(memory=2_000)  # 2 kB per device: the weights alone do not fit
    with pytest.raises(DoesNotFit):
        ArchLatencyModel(tiny_topology, tiny_models)(spec)
