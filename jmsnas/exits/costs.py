"""Per-device latency of a model's units and of exit heads, for the worst-case and mean latency of an EENN.

- Units of an ``ArchNet`` with its ``ArchSpec``: each device's latency model (measured profile or
  analytic roofline) on ``arch_descriptors(spec)``, exactly as the search and the planner use it.
- Units of any other model: only analytic devices can describe them; a unit becomes a descriptor
  with its MACs, parameters and tensor sizes (what the roofline reads). A measured profile only
  knows the search space's ops, so it cannot; give ``unit_latency_ms`` yourself then.
- Exit heads: on an analytic device the roofline of the head's MACs, parameters and tensors; on a
  measured device the head's MACs at the device's own average rate on this model (its units'
  summed latency per MAC). Heads are small, so this rate is the honest approximation we have:
  the profile was never measured on head-shaped ops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jmsnas.errors import ConfigError
from jmsnas.exits.candidates import HeadLatency
from jmsnas.exits.graph import BlockGraph
from jmsnas.latency.model import AnalyticLatencyModel, LatencyModel
from jmsnas.plan.wire import FLOAT32_BYTES
from jmsnas.space.arch import ArchSpec
from jmsnas.space.macs import OpDescriptor, arch_descriptors
from jmsnas.topology import Topology


def _descriptor(name: str, macs: int, params: int, in_numel: int, out_numel: int) -> OpDescriptor:
    return OpDescriptor(op=name, kind="stem", dims=1, in_channels=1, out_channels=1, hidden_channels=1,
                        kernel_size=1, expansion=0, shortcut=False, stride=1, in_size=(in_numel,),
                        out_size=(out_numel,), macs=macs, params=params, input_numel=in_numel,
                        output_numel=out_numel)


def unit_descriptors(graph: BlockGraph) -> list[OpDescriptor]:
    """One roofline descriptor per unit (MACs, parameters, input and output elements)."""
    out, prev = [], math.prod(graph.input_shape)
    for u in graph.units:
        numel = int(u.output_bytes // FLOAT32_BYTES) if math.isfinite(u.output_bytes) else prev
        out.append(_descriptor(u.name, u.macs, u.params, prev, numel))
        prev = numel
    return out


def unit_latency_table(graph: BlockGraph, topology: Topology, models: Mapping[str, LatencyModel],
                       spec: ArchSpec | None = None) -> dict[str, list[float]]:
    """Per device, the latency (ms) of every unit of ``graph`` under its latency model (``models``, by name).

    Raises:
        ConfigError: a measured device and a model that is not an ``ArchNet`` with its spec.
    """
    table = {}
    for device in topology.devices:
        model = models[device.name]
        if spec is not None:
            ops = arch_descriptors(spec)
            if len(ops) != graph.num_units:
                raise ConfigError(f"the spec has {len(ops)} layers but the model {graph.num_units}", field="spec")
        elif isinstance(model, AnalyticLatencyModel):
            ops = unit_descriptors(graph)
        else:
            raise ConfigError(f"device {device.name!r} has a measured profile, which only predicts the search "
                              "space's ops; pass unit_latency_ms for this model, or describe the device with "
                              "'analytic'", field=f"topology.devices.{device.name}")
        table[device.name] = [float(v) for v in model.predict(ops)]
    return table


def head_latency_fn(graph: BlockGraph, models: Mapping[str, LatencyModel],
                    unit_latency_ms: Mapping[str, Sequence[float]], heads: Mapping[int, object]) -> HeadLatency:
    """``(device, location) -> ms`` of a head (see the module docstring); a device without an analytic model in
    ``models`` is priced at its units' average rate."""
    total_macs = max(graph.total_macs, 1)
    cache: dict[tuple[str, int], float] = {}

    def latency(device: str, location: int) -> float:
        key = (device, location)
        if key not in cache:
            head = heads[location]
            model = models.get(device)
            macs = int(getattr(head, "macs", 0))
            if isinstance(model, AnalyticLatencyModel):
                params = sum(p.numel() for p in head.parameters())  # type: ignore[attr-defined]
                in_numel = math.prod(graph.feature_shapes[location])
                cache[key] = float(model.predict([_descriptor("head", macs, params, in_numel,
                                                              graph.blueprint.num_classes)])[0])
            else:
                cache[key] = float(sum(unit_latency_ms[device])) * macs / total_macs
        return cache[key]

    return latency


@dataclass(frozen=True)
class ExitLatency:
    """What an EENN's candidates are priced with: the devices' latency models, or tables given outright.

    Args:
        models: per device name its latency model; units are priced with it (an ``ArchNet`` on a
            measured device needs ``spec``), heads too.
        spec: the ``ArchSpec`` of an ``ArchNet`` model.
        unit_ms: per device the ms of every unit, instead of ``models``.
        head_ms: ``(device, location) -> ms``; default: ``head_latency_fn``.
    """

    models: Mapping[str, LatencyModel] | None = None
    spec: ArchSpec | None = None
    unit_ms: Mapping[str, Sequence[float]] | None = None
    head_ms: HeadLatency | None = None

    def __post_init__(self) -> None:
        if self.models is None and self.unit_ms is None:
            raise ValueError("ExitLatency needs latency models or unit latencies")

    def units(self, graph: BlockGraph, topology: Topology) -> dict[str, list[float]]:
        """Per device, ms of every unit of ``graph``."""
        if self.unit_ms is not None:
            return {k: [float(v) for v in vs] for k, vs in self.unit_ms.items()}
        return unit_latency_table(graph, topology, self.models or {}, self.spec)

    def heads(self, graph: BlockGraph, topology: Topology, unit_ms: Mapping[str, Sequence[float]],
              heads: Mapping[int, object]) -> HeadLatency:
        """``(device, location) -> ms`` of the heads (analytic devices by their roofline even without ``models``)."""
        if self.head_ms is not None:
            return self.head_ms
        models = self.models if self.models is not None else {
            d.name: AnalyticLatencyModel(d.name, d.analytic) for d in topology.devices if d.analytic is not None}
        return head_latency_fn(graph, models, unit_ms, heads)
