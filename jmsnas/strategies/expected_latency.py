"""Expected completion latency of a supernet over a topology, and the latency penalty of eq. (4).

Two objects, as NNI separates them: `ExpectedLatency` *predicts* (from the gate probabilities to
milliseconds, knowing nothing of losses) and `LatencyPenalty` turns a prediction into a loss term.

Paper 003 fixes the split by hand ("maximum number of layers per device"). Here the split is
searched jointly: for the current expected per-layer latencies E[τ_n^m] = Σ_i p_i U(op_i, m), the
best contiguous assignment of layers to devices is computed exactly (dynamic programming over the
chain, respecting each device's memory), and E[T] of eq. (1) is evaluated for that assignment, so
gradients flow to α through the layers each device actually runs. The assignment is piecewise
constant in α, which is what makes this exact rather than a relaxation. On a mesh, a sequential
network runs on one source-to-sink path; the predictor takes the best path (every path through a
mesh is a chain: source, root, one branch, join, sink).

The layers of the split are ``[stem, searchable layers..., head]``. A cut after layer n carries
its output as float32, shrunk by the experiment's compressor at that cut when it has one
(``partition.compressors``, one per cut in path order; learned kinds by their estimated code size),
so the search predicts the latency the deploy stage will plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from jmsnas.compress.quantize import Compressor
from jmsnas.latency.model import LatencyModel
from jmsnas.plan.chain import ChainSplit, best_chain_split, best_path, chain_latency, sent_bytes
from jmsnas.plan.planners import path_links
from jmsnas.plan.wire import BYTES_PER_PARAM, payload_bytes
from jmsnas.space.macs import describe_space
from jmsnas.space.spec import SearchSpace
from jmsnas.topology import Topology


@dataclass
class LatencyEstimate:
    """E[T] and where it comes from (for logging and reports).

    Attributes:
        total_ms: E[T], a 0-dim tensor differentiable in the architecture parameters.
        path: the devices the network runs on, in order.
        boundaries: device ``path[m]`` runs layers ``boundaries[m]:boundaries[m + 1]`` of
            ``[stem, layers..., head]``.
        device_ms: expected compute latency per device of the path.
        link_ms: latency per link of the path, ``"src->dst"``.
    """

    total_ms: torch.Tensor
    path: tuple[str, ...]
    boundaries: tuple[int, ...]
    device_ms: dict[str, float]
    link_ms: dict[str, float]


class ExpectedLatency:
    """Predicts E[T] (paper 003 eq. (1)/(2) with E[τ]) of a supernet's distribution over networks.

    Args:
        space: the search space.
        topology: devices and links.
        models: a latency model per device name.
        num_classes: classifier outputs (sizes the head).
        input_shape: input shape without batch; default: the space's.
        max_layers_per_device: optional cap per device of the topology, in ``topology.devices`` order
            (paper 003's pinned split); on a mesh each path takes its own devices' counts.
        compressors: one per cut in path order (``partition.path_links``); missing cuts send float32.
    """

    def __init__(self, space: SearchSpace, topology: Topology, models: Mapping[str, LatencyModel], num_classes: int,
                 input_shape: Sequence[int] | None = None, max_layers_per_device: Sequence[int] | None = None,
                 compressors: Sequence[str | Compressor] = ()) -> None:
        self.topology = topology
        self.compressors = list(compressors)
        self.devices = [d.name for d in topology.devices]
        self.max_layers_per_device = max_layers_per_device
        ops = describe_space(space, num_classes, input_shape)
        stem, layer_ops, head = ops.stem, ops.layers, ops.head

        def table(ops) -> torch.Tensor:  # [R, D] latency of each op on each device
            return torch.tensor(np.stack([models[d].predict(ops) for d in self.devices], axis=1), dtype=torch.float32)

        self.stem_ms = table([stem])[0]
        self.head_ms = table([head])[0]
        self.tables = [table(ops) for ops in layer_ops]
        self.params = [torch.tensor([float(o.params) for o in ops]) for ops in layer_ops]
        self.fixed_params = (stem.params, head.params)
        self.input_bytes = payload_bytes(stem.input_numel)
        self.output_bytes = [payload_bytes(stem.output_numel)] + [payload_bytes(ops[0].output_numel)
                                                                  for ops in layer_ops] + [payload_bytes(num_classes)]

    def layer_latency(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[N + 2, D]``: E[τ] of stem, each searchable layer and head on each device."""
        rows = [p @ u.to(p) for p, u in zip(probs, self.tables, strict=True)]
        ref = rows[0] if rows else self.stem_ms
        return torch.stack([self.stem_ms.to(ref), *rows, self.head_ms.to(ref)])

    def layer_memory_bytes(self, probs: Sequence[torch.Tensor]) -> np.ndarray:
        """Per layer: expected weight bytes plus its output activation (for device memory limits)."""
        weights = [self.fixed_params[0]] + [float(p.detach().cpu().double() @ w.double())
                                            for p, w in zip(probs, self.params, strict=True)]
        weights.append(self.fixed_params[1])
        return np.array(weights) * BYTES_PER_PARAM + np.array(self.output_bytes, dtype=float)

    def __call__(self, probs: Sequence[torch.Tensor]) -> LatencyEstimate:
        tau = self.layer_latency(probs)
        memory = self.layer_memory_bytes(probs)
        tau_np = tau.detach().cpu().numpy()

        def solve(path: tuple[str, ...]) -> ChainSplit:
            cols = [self.devices.index(d) for d in path]
            caps = [self.topology.device(d).memory_limit_bytes for d in path]
            counts = self.max_layers_per_device
            if counts is not None:  # one count per device of the topology: this path's devices' counts
                counts = [counts[c] for c in cols]
            return best_chain_split(tau_np[:, cols], self.output_bytes, self.input_bytes,
                                    path_links(self.topology, path, self.compressors), memory, caps, counts)

        path, split = best_path(self.topology, solve, lambda split: split.latency_ms)
        cols = [self.devices.index(d) for d in path]
        links = path_links(self.topology, path, self.compressors)
        total = chain_latency(tau[:, cols], split.boundaries, self.output_bytes, self.input_bytes, links)
        b = split.boundaries
        device_ms = {d: float(tau[b[m]:b[m + 1], cols[m]].detach().sum()) for m, d in enumerate(path)}
        link_ms = {f"{links[m].src}->{links[m].dst}": links[m].latency_ms(sent_bytes(b[m + 1], self.output_bytes,
                                                                                     self.input_bytes))
                   for m in range(len(links))}
        return LatencyEstimate(total, tuple(path), tuple(b), device_ms, link_ms)

    def for_choices(self, choice_indices: Sequence[int]) -> LatencyEstimate:
        """The estimate for one discrete network (one-hot probabilities)."""
        one_hot = [torch.nn.functional.one_hot(torch.tensor(i), len(t)).float()
                   for i, t in zip(choice_indices, self.tables, strict=True)]
        return self(one_hot)


class LatencyPenalty:
    """The latency term of paper 003 eq. (4): λ2 (E[T] − T_const)², or one-sided λ2 max(0, E[T] − T_const)².

    The two-sided form (the paper's) also pushes networks faster than the budget back up towards
    it, trading spare latency for accuracy; the one-sided form only penalises overruns.
    """

    def __init__(self, lambda2: float, t_const_ms: float, one_sided: bool = False) -> None:
        self.lambda2 = lambda2
        self.t_const_ms = t_const_ms
        self.one_sided = one_sided

    def __call__(self, expected_ms: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        gap = expected_ms - self.t_const_ms
        if self.one_sided:
            gap = torch.clamp(gap, min=0.0)
        loss = self.lambda2 * gap**2
        return loss, {"latency_penalty": float(loss.detach()), "expected_latency_ms": float(expected_ms.detach())}


def derive_within(probs: Sequence[torch.Tensor], predictor: ExpectedLatency, t_const_ms: float) -> list[int]:
    """The most likely op per layer, repaired greedily when that network breaks ``t_const_ms``.

    The two-sided penalty of eq. (4) centres E[T] on T_const, so the most likely network lands on
    either side of the constraint about equally often. "Constraints are checked after search, not
    only penalised": while the network is too slow, swap the one op whose replacement loses the
    least log-probability per millisecond saved; stop when it fits or nothing is faster (the
    constraint is then reported as infeasible by the caller).

    Args:
        probs: per layer the probabilities p = softmax(α).
        predictor: the E[T] predictor.
        t_const_ms: the latency constraint.

    Returns:
        One candidate index per layer.
    """
    logp = [torch.log(p.detach().double().cpu()) for p in probs]
    choice = [int(lp.argmax()) for lp in logp]
    total = float(predictor.for_choices(choice).total_ms)
    while total > t_const_ms:
        best: tuple[float, list[int], float] | None = None
        for n, lp in enumerate(logp):
            for i in range(len(lp)):
                cand = [*choice[:n], i, *choice[n + 1:]]
                t = float(predictor.for_choices(cand).total_ms)
                if i != choice[n] and t < total:
                    score = float(lp[choice[n]] - lp[i]) / (total - t)
                    if best is None or score < best[0]:
                        best = (score, cand, t)
        if best is None:
            break
        _, choice, total = best
    return choice
