"""Planning a discrete network with parallel branches: its per-layer costs and ``plan_branched`` (eq. (2)).

The costs come from the same latency models and descriptors as the search's E[T]
(`jmsnas.strategies.branched_latency`), so the deploy stage plans what the search predicted.
Memory of a layer is its float32 weights plus its output activation, as for sequential networks.
"""

from __future__ import annotations

from collections.abc import Mapping

from jmsnas.latency.model import LatencyModel
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.planners import plan_branched
from jmsnas.plan.wire import BYTES_PER_PARAM, payload_bytes
from jmsnas.space.branched import BranchedArchSpec, branched_descriptors
from jmsnas.topology import Topology


def plan_branched_arch(spec: BranchedArchSpec, models: Mapping[str, LatencyModel],
                       topology: Topology) -> DeploymentPlan:
    """The exact eq. (2) plan of ``spec`` on the mesh ``topology`` (float32 payloads at every cut).

    Raises:
        ValueError: not a mesh with one branch device per branch, or no placement fits the memory.
    """
    pre, branches, post = branched_descriptors(spec)

    def costs(ops, devices):
        latency = {d: [float(v) for v in models[d].predict(ops)] for d in devices}
        out = [float(payload_bytes(op.output_numel)) for op in ops]
        memory = [op.params * BYTES_PER_PARAM + o for op, o in zip(ops, out, strict=True)]
        return latency, out, memory

    names = [d.name for d in topology.devices]
    pre_lat, pre_out, pre_mem = costs(pre, names)
    post_lat, post_out, post_mem = costs(post, names)
    arms, arm_mem = [], []
    for name, ops in zip(topology.branches, branches, strict=True):
        lat, out, mem = costs(ops, [name])
        arms.append((lat[name], out))
        arm_mem.append(mem)
    join_bytes = float(payload_bytes(post[0].input_numel))  # the first post layer (or the head) takes the merge
    return plan_branched((pre_lat, pre_out), arms, (post_lat, post_out), float(payload_bytes(pre[0].input_numel)),
                         join_bytes, topology, memory_bytes=(pre_mem, arm_mem, post_mem))
