"""Predicted completion latency of one discrete network (an ``ArchSpec``) on an experiment's topology.

The supernet strategy predicts an *expected* latency over its gate probabilities
(`jmsnas.strategies.expected_latency.ExpectedLatency`); a strategy that works on whole networks, like the
morphism search, needs the latency of one network. The per-layer costs are the planner's
(`jmsnas.plan.costs.arch_costs`: every device's latency model on each layer of
``[stem, *blocks, head]``, weights plus output activation as memory), and ``plan_arch`` places the
layers exactly (paper 003 eq. (1); on a mesh, the best path), within each device's memory.

For networks grown by morphisms, what crosses a cut is every tensor made before it and used after
it, i.e. the last layer's output *and* the output of any earlier layer that a skip connection
carries over the cut (``partition.costs.cut_bytes``, part of ``arch_costs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jmsnas.builders import cut_compressors, latency_models
from jmsnas.compress.quantize import Compressor
from jmsnas.config import Experiment
from jmsnas.latency.model import LatencyModel
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.costs import arch_costs, plan_arch
from jmsnas.space.arch import ArchSpec
from jmsnas.topology import Topology


class DoesNotFit(ValueError):
    """No placement of the network fits the devices' memory."""


@dataclass(frozen=True)
class ArchLatency:
    """The best placement of one network and its predicted completion latency.

    Attributes:
        latency_ms: predicted completion latency (eq. (1) / best mesh path).
        plan: which device runs which layers, and what each link carries.
        layer_ms: per device of the topology, the predicted latency of each layer.
    """

    latency_ms: float
    plan: DeploymentPlan
    layer_ms: dict[str, list[float]]

    def split(self) -> dict:
        """The ``split`` entry of a ``SearchOutcome``: path, boundaries, per-device and per-link ms."""
        return {"path": self.plan.devices, "boundaries": self.plan.boundaries(),
                "device_ms": {s.device: s.compute_ms for s in self.plan.segments},
                "link_ms": {f"{c.src}->{c.dst}": c.link_ms for c in self.plan.cuts}}


class ArchLatencyModel:
    """``model(spec) -> ArchLatency`` for a fixed topology and per-device latency models.

    Args:
        topology: devices and links.
        models: a latency model per device name.
    """

    def __init__(self, topology: Topology, models: Mapping[str, LatencyModel],
                 compressors: Sequence[str | Compressor] = ()) -> None:
        self.topology = topology
        self.models = dict(models)
        self.compressors = list(compressors)

    @classmethod
    def for_experiment(cls, exp: Experiment) -> ArchLatencyModel:
        """The experiment's topology, its devices' latency models and its compressors at the cuts."""
        return cls(exp.topology, latency_models(exp),
                   cut_compressors(exp, exp.search_space.dims))

    def __call__(self, spec: ArchSpec) -> ArchLatency:
        """Place ``spec`` on the topology.

        Raises:
            DoesNotFit: no placement fits the devices' memory.
        """
        costs = arch_costs(spec, self.models)  # skip connections crossing a cut included
        try:
            plan = plan_arch(costs, self.topology, self.compressors)
        except ValueError as exc:
            raise DoesNotFit(str(exc)) from None
        return ArchLatency(float(plan.total_latency_ms), plan, costs.latency_ms)
