"""Baselines a plan is compared with, under the same latency models and topology.

- ``device-only``: the whole network on the source device (the first device of the best path);
  its result is relayed to the sink like any other output.
- ``cloud-only``: the source sends the input; the whole network runs on the sink.
- ``neurosurgeon``: a fixed MobileNetV2-style network split once between the source and the sink
  (Kang et al. 2017: one split point between mobile and cloud, chosen from per-layer latency
  predictions); devices in between relay.
- ``hivemind``: the same fixed network split at several points along the path (a linear multi-split,
  one segment per device), here the exact optimum of eq. (1) by ``plan_sequential``.

The fixed network (``mobilenet_v2_spec``) takes, on every searchable layer of the search space,
MobileNetV2's inverted residual block: 3x3 depthwise, expansion 6, with the shortcut wherever the
shape allows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jmsnas.latency.model import LatencyModel
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.costs import LayerCosts, arch_costs, plan_arch
from jmsnas.plan.planners import plan_fixed
from jmsnas.space.arch import ArchSpec
from jmsnas.space.candidates import allowed
from jmsnas.space.spec import SearchSpace
from jmsnas.topology import Topology


@dataclass(frozen=True)
class BaselineResult:
    """One baseline: its predicted completion latency, where it ran, and whether it fits the devices' memory."""

    name: str
    network: str
    latency_ms: float
    boundaries: list[int]
    path: list[str]
    macs: int
    fits_memory: bool
    device_ms: dict[str, float] = field(default_factory=dict)  # compute per device of ``path``
    link_ms: dict[str, float] = field(default_factory=dict)  # transfer per link "src->dst" crossed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mobilenet_v2_spec(space: SearchSpace, num_classes: int, input_shape: Sequence[int] | None = None) -> ArchSpec:
    """The fixed MobileNetV2-style network of ``space``: ``mb_k3_e6`` on every layer, ``_sc`` where allowed."""
    shape = None if input_shape is None else tuple(input_shape)
    choices = ["mb_k3_e6_sc" if allowed("mb_k3_e6_sc", s.in_channels, s.out_channels, s.stride) else "mb_k3_e6"
               for s in space.layers(shape)]
    return ArchSpec.from_choices(space, choices, num_classes, shape)


def _fits(costs: LayerCosts, plan: DeploymentPlan, topology: Topology) -> bool:
    for seg in plan.segments:
        limit = topology.device(seg.device).memory_limit_bytes
        if limit is not None and sum(costs.memory_bytes[seg.start:seg.stop]) > limit:
            return False
    return True


def _result(name: str, network: str, costs: LayerCosts, plan: DeploymentPlan, topology: Topology) -> BaselineResult:
    return BaselineResult(name, network, float(plan.total_latency_ms), plan.boundaries(), plan.devices,
                          int(sum(costs.macs)), _fits(costs, plan, topology),
                          {s.device: float(s.compute_ms) for s in plan.segments},
                          {f"{c.src}->{c.dst}": float(c.link_ms) for c in plan.cuts})


def _fixed(costs: LayerCosts, topology: Topology, path: Sequence[str], boundaries: Sequence[int]) -> DeploymentPlan:
    return plan_fixed(costs.latency_ms, costs.output_bytes, costs.input_bytes, topology, path, boundaries)


def _best_path(costs: LayerCosts, topology: Topology) -> tuple[str, ...]:
    return tuple(plan_arch(costs, topology).devices) if topology.kind == "mesh" else topology.paths()[0]


def device_only(costs: LayerCosts, topology: Topology, network: str = "searched") -> BaselineResult:
    """Every layer on the source device (the first device of the path the network's own plan uses)."""
    path = _best_path(costs, topology)
    n = costs.num_layers
    return _result("device-only", network, costs, _fixed(costs, topology, path, [0] + [n] * len(path)), topology)


def cloud_only(costs: LayerCosts, topology: Topology, network: str = "searched") -> BaselineResult:
    """Every layer on the sink; the source sends the input."""
    path = _best_path(costs, topology)
    n = costs.num_layers
    return _result("cloud-only", network, costs, _fixed(costs, topology, path, [0] * len(path) + [n]), topology)


def neurosurgeon(costs: LayerCosts, topology: Topology, network: str = "mobilenetv2") -> BaselineResult:
    """The best single split between source and sink (the devices between relay)."""
    best: DeploymentPlan | None = None
    n = costs.num_layers
    for path in topology.paths():
        for k in range(n + 1):
            plan = _fixed(costs, topology, path, [0] + [k] * (len(path) - 1) + [n])
            if best is None or plan.total_latency_ms < best.total_latency_ms:
                best = plan
    assert best is not None
    return _result("neurosurgeon", network, costs, best, topology)


def hivemind(costs: LayerCosts, topology: Topology, network: str = "mobilenetv2") -> BaselineResult:
    """The exact linear multi-split (one contiguous segment per device of the best path, memory respected)."""
    try:
        return _result("hivemind", network, costs, plan_arch(costs, topology), topology)
    except ValueError:  # no placement fits the memory: report the unconstrained optimum as not fitting
        relaxed = LayerCosts(costs.latency_ms, costs.output_bytes, costs.input_bytes, [0.0] * costs.num_layers,
                             costs.macs)
        return _result("hivemind", network, costs, plan_arch(relaxed, topology), topology)


def baselines(
    searched: ArchSpec, space: SearchSpace, topology: Topology, models: Mapping[str, LatencyModel]
) -> list[BaselineResult]:
    """Device-only and cloud-only of ``searched``; Neurosurgeon and HiveMind of the fixed MobileNetV2-style network."""
    own = arch_costs(searched, models)
    fixed = arch_costs(mobilenet_v2_spec(space, searched.num_classes, searched.input_shape), models)
    return [device_only(own, topology), cloud_only(own, topology), neurosurgeon(fixed, topology),
            hivemind(fixed, topology)]
