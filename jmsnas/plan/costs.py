"""What planning needs to know about a discrete network: per-unit latency on every device, sizes, memory.

``arch_costs`` describes the units ``[stem, *blocks, head]`` of an ``ArchSpec`` with the same latency
models the search uses, so a plan, a baseline and the search agree on what a layer costs.
``plan_arch`` then places the network with ``plan.plan_sequential``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jmsnas.latency.model import LatencyModel
from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment
from jmsnas.plan.planners import CompressorsArg, plan_sequential
from jmsnas.plan.wire import BYTES_PER_PARAM, payload_bytes
from jmsnas.space.arch import ArchSpec
from jmsnas.space.macs import arch_descriptors
from jmsnas.topology import Topology


@dataclass(frozen=True)
class LayerCosts:
    """Per unit of a network: latency on each device (ms), output size, memory need, MACs."""

    latency_ms: dict[str, list[float]]
    output_bytes: list[float]
    input_bytes: float
    memory_bytes: list[float]
    macs: list[int]

    @property
    def num_layers(self) -> int:
        return len(self.output_bytes)


def arch_costs(spec: ArchSpec, models: Mapping[str, LatencyModel]) -> LayerCosts:
    """``LayerCosts`` of ``spec``'s units with ``models`` (one per device name).

    Memory of a unit is its float32 weights plus its output activation (as in the search). The bytes
    after a unit are all it hands on: its output, and any earlier output a skip connection carries
    over that cut (``cut_bytes``).
    """
    ops = arch_descriptors(spec)
    latency = {name: [float(v) for v in model.predict(ops)] for name, model in models.items()}
    out = [float(payload_bytes(op.output_numel)) for op in ops]
    memory = [op.params * BYTES_PER_PARAM + o for op, o in zip(ops, out, strict=True)]
    return LayerCosts(latency, cut_bytes(spec, out), float(payload_bytes(ops[0].input_numel)), memory,
                      [op.macs for op in ops])


def cut_bytes(spec: ArchSpec, output_bytes: Sequence[float]) -> list[float]:
    """Per layer n of ``[stem, *blocks, head]``, the bytes crossing a cut right after it.

    Args:
        spec: the network.
        output_bytes: per layer, the size of its own output.
    """
    last_use: dict[int, int] = {}  # layer -> the last block layer that reads it through a skip connection
    for i, block in enumerate(spec.blocks):
        if block.skip_from is not None:
            last_use[block.skip_from] = max(last_use.get(block.skip_from, 0), i + 1)
    return [float(out) + sum(float(output_bytes[j]) for j, use in last_use.items() if j < n < use)
            for n, out in enumerate(output_bytes)]


def plan_arch(costs: LayerCosts, topology: Topology, compressors: CompressorsArg | None = None) -> DeploymentPlan:
    """The best sequential plan of a network with ``costs`` (chain DP; on a mesh, the best path).

    Args:
        compressors: per sending device name; or a sequence, one per cut in path order (the
            experiment's ``partition.compressors``), applied to each path of a mesh in turn.

    Raises:
        ValueError: no placement fits the devices' memory.
    """
    return plan_sequential(costs.latency_ms, costs.output_bytes, costs.input_bytes, topology, costs.memory_bytes,
                           compressors)



def sequential_latency_ms(segments: Sequence[DeviceSegment], cuts: Sequence[CutPlan]) -> float:
    """Eq. (1) of a sequential plan from its parts: every device's compute plus every link's latency."""
    return float(sum(s.compute_ms for s in segments) + sum(c.link_ms for c in cuts))
