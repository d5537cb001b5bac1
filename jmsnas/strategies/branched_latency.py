"""E[T] of a branched supernet on a mesh: paper 003 eq. (2), with the chain parts' splits searched.

A branched search space (`jmsnas.space.spec`, ``branches:``) runs its layers as
``[stem, pre...]`` on the mesh's chain devices up to the root, branch b on branch device b (all fed
the root's output), the merge at the join and ``[post..., head]`` from the join on. With the expected
per-layer latencies E[tau_n^m] = sum_i p_i U(op_i, m), E[T] is

    E[T] = T_pre + max_b (eps_root->b + sum_{n in branch b} E[tau_n^b] + eps_b->join) + T_post

where T_pre is eq. (1) over ``chain_before + (root,)`` for the best contiguous split of
``[stem, pre...]`` (dynamic programming under the devices' memory, as `ExpectedLatency` does for a
chain) and T_post the same over ``chain_after`` (the join first) for ``[post..., head]`` fed the
merged tensor. The root always finishes the pre part and broadcasts its output, so each eps is a
constant of the architecture and the max is over the branch compute sums; its gradient is the
subgradient through the slowest branch (``torch.max``). This is the same decomposition as
`jmsnas.plan.planners.plan_branched` (which the tests check it against, with brute force).

The estimate's ``path`` lists every device in part order (pre path, branch devices, post path) and
``boundaries`` index the flat layer list ``[stem, pre..., branch 0..., ..., post..., head]``:
device ``path[m]`` runs ``boundaries[m]:boundaries[m + 1]``, so a branched ``outcome.json`` reads
like a sequential one. Compressors at the cuts are not modelled here (float32 payloads); an
experiment that sets them with a branched space is refused at ``--check``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from jmsnas.latency.model import LatencyModel
from jmsnas.plan.chain import best_chain_split, chain_latency, sent_bytes
from jmsnas.plan.planners import path_links
from jmsnas.plan.wire import payload_bytes
from jmsnas.space.spec import SearchSpace
from jmsnas.strategies.expected_latency import ExpectedLatency, LatencyEstimate
from jmsnas.topology import Topology


class BranchedExpectedLatency(ExpectedLatency):
    """Predicts E[T] by eq. (2) for a branched supernet's distribution (`ExpectedLatency`'s tables and interface).

    Args:
        space: a branched search space with one branch per branch device of ``topology``.
        topology: a mesh.
        models: a latency model per device name.
        num_classes: classifier outputs (sizes the head).
        input_shape: input shape without batch; default: the space's.

    Raises:
        ValueError: not a branched space on a mesh with as many branch devices as branches.
    """

    def __init__(self, space: SearchSpace, topology: Topology, models: Mapping[str, LatencyModel], num_classes: int,
                 input_shape: Sequence[int] | None = None) -> None:
        if not space.is_branched or topology.kind != "mesh" or space.num_branches != len(topology.branches):
            raise ValueError(f"need a branched space with one branch per branch device of a mesh; got "
                             f"{space.num_branches} branch(es) on a {topology.kind} with branches "
                             f"{list(topology.branches)}")
        # the rows of the flat layer list [stem, pre..., branch 0..., ..., post..., head], as ExpectedLatency has them
        super().__init__(space, topology, models, num_classes, input_shape)
        shape = space.resolve_input_shape(None if input_shape is None else tuple(input_shape))
        parts = ["pre", *(s.part for s in space.layers(shape)), "post"]
        self.rows = {p: [r for r, q in enumerate(parts) if q == p] for p in ("pre", "post")}
        self.branch_rows = [[r for r, q in enumerate(parts) if q == f"branch{b}"] for b in range(space.num_branches)]
        self.join_bytes = payload_bytes(int(np.prod(space.join_shape(shape))))
        self.pre_path = (*topology.chain_before, str(topology.root))
        self.post_path = tuple(topology.chain_after)

    def _chain(self, tau: torch.Tensor, memory: np.ndarray, rows: list[int], path: tuple[str, ...],
               input_bytes: float) -> tuple[torch.Tensor, tuple[int, ...], list]:
        """Eq. (1) of the rows ``rows`` on ``path`` for their best split (``ValueError``: they do not fit)."""
        cols = [self.devices.index(d) for d in path]
        sub = tau[rows][:, cols]
        out = [self.output_bytes[r] for r in rows]
        links = path_links(self.topology, path)
        caps = [self.topology.device(d).memory_limit_bytes for d in path]
        split = best_chain_split(sub.detach().cpu().numpy(), out, input_bytes, links, memory[rows], caps)
        return chain_latency(sub, split.boundaries, out, input_bytes, links), split.boundaries, links

    def __call__(self, probs: Sequence[torch.Tensor]) -> LatencyEstimate:
        """E[T] of eq. (2) and where it comes from.

        Raises:
            ValueError: the pre or post part fits no split in its devices' memory, or a branch its device.
        """
        tau = self.layer_latency(probs)
        memory = self.layer_memory_bytes(probs)
        pre_ms, pre_b, pre_links = self._chain(tau, memory, self.rows["pre"], self.pre_path, self.input_bytes)
        post_ms, post_b, post_links = self._chain(tau, memory, self.rows["post"], self.post_path, self.join_bytes)
        root, join = self.pre_path[-1], self.post_path[0]
        pre_out = [self.output_bytes[r] for r in self.rows["pre"]]
        root_bytes = sent_bytes(len(pre_out), pre_out, self.input_bytes)
        arms, link_ms, device_ms = [], {}, {}
        for b, (name, rows) in enumerate(zip(self.topology.branches, self.branch_rows, strict=True)):
            cap = self.topology.device(name).memory_limit_bytes
            if cap is not None and float(memory[rows].sum()) > cap:
                need = float(memory[rows].sum())
                raise ValueError(f"branch {b} needs {need:g} B but its device {name!r} has {cap} B")
            hop_in = self.topology.link(root, name).latency_ms(root_bytes)
            hop_out = self.topology.link(name, join).latency_ms(self.output_bytes[rows[-1]])
            compute = tau[rows, self.devices.index(name)].sum()
            arms.append(compute + (hop_in + hop_out))
            device_ms[name] = float(compute.detach())
            link_ms[f"{root}->{name}"], link_ms[f"{name}->{join}"] = hop_in, hop_out
        total = pre_ms + torch.stack(arms).max() + post_ms
        for path, rows, bounds, links, in_bytes in ((self.pre_path, self.rows["pre"], pre_b, pre_links,
                                                     self.input_bytes),
                                                    (self.post_path, self.rows["post"], post_b, post_links,
                                                     self.join_bytes)):
            out = [self.output_bytes[r] for r in rows]
            for m, d in enumerate(path):
                device_ms[d] = float(tau[rows[bounds[m]:bounds[m + 1]], self.devices.index(d)].detach().sum())
            for m, link in enumerate(links):
                link_ms[f"{link.src}->{link.dst}"] = link.latency_ms(sent_bytes(bounds[m + 1], out, in_bytes))
        return LatencyEstimate(total, self.device_order, self._flat_boundaries(pre_b, post_b), device_ms, link_ms)

    @property
    def device_order(self) -> tuple[str, ...]:
        """Every device in part order: the pre path, the branch devices, the post path."""
        return (*self.pre_path, *self.topology.branches, *self.post_path)

    def _flat_boundaries(self, pre_b: Sequence[int], post_b: Sequence[int]) -> tuple[int, ...]:
        bounds = [int(v) for v in pre_b]
        for rows in self.branch_rows:
            bounds.append(rows[-1] + 1)
        start = self.rows["post"][0]
        bounds += [start + int(v) for v in post_b[1:]]
        return tuple(bounds)
