"""Deployment planning: which device runs which layers, what crosses each cut (paper 003 eq. (1), (2)).

Two planners, both exact:

- ``plan_sequential``: a sequential network on a chain (the dynamic programme of ``chain.py``, eq. (1)),
  or on a mesh, where every source-to-sink path is a chain and the best path wins. Devices off
  that path stay idle.
- ``plan_branched``: a network whose middle part has parallel branches, one per branch device of a
  mesh (eq. (2)). The root always finishes the pre-branch layers and broadcasts their output, so
  its hop to branch b depends on nothing the planner chooses; eq. (2) then falls apart into
  a chain over ``chain_before + root`` (pre-branch layers), a constant tree term
  ``max_b(eps_root->b + tau_b + eps_b->join)`` and a chain over ``join + chain_after`` (post-join
  layers). Each chain is solved exactly by ``best_chain_split``, so the sum is the exact optimum.

Compressors change what a cut costs on the wire: a plan is made with the payload each compressor
sends (``compress.compressed_bytes``), per sending device.

The result is a ``DeploymentPlan`` (``artifact.py``), written as ``plan.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jmsnas.compress.quantize import Compressor, as_compressor
from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment
from jmsnas.plan.chain import ChainSplit, best_chain_split, best_path, chain_latency, sent_bytes
from jmsnas.topology import Link, Topology

_Compressors = Mapping[str, "str | Compressor"]
#: Per sending device name, or one per cut in path order (an experiment's ``partition.compressors``).
CompressorsArg = Mapping[str, "str | Compressor"] | Sequence["str | Compressor"]


def _on_path(compressors: CompressorsArg | None, path: Sequence[str]) -> dict[str, str | Compressor]:
    """``compressors`` keyed by sending device on ``path``: a sequence gives cut m to ``path[m]``."""
    if compressors is None:
        return {}
    if isinstance(compressors, Mapping):
        return dict(compressors)
    return {path[m]: c for m, c in enumerate(list(compressors)[:len(path) - 1])}



@dataclass(frozen=True)
class _Part:
    """A sequential run of layers to split over a chain of devices."""

    name: str
    latency_ms: Mapping[str, Sequence[float]]
    output_bytes: Sequence[float]
    input_bytes: float
    memory_bytes: Sequence[float] | None


def plan_sequential(
    layer_latency_ms: Mapping[str, Sequence[float]],
    layer_output_bytes: Sequence[float],
    input_bytes: float,
    topology: Topology,
    memory_bytes_per_layer: Sequence[float] | None = None,
    compressors: CompressorsArg | None = None,
) -> DeploymentPlan:
    """The best contiguous placement of a sequential network (eq. (1); on a mesh, the best path).

    Args:
        layer_latency_ms: per device name, ``tau_n`` of every layer n (same length N everywhere).
        layer_output_bytes: ``[N]`` uncompressed (float32) size of what crosses a cut after layer n.
        input_bytes: size of the network input, held by the source.
        topology: the devices and links; device memory limits come from ``Device.memory_limit_bytes``.
        memory_bytes_per_layer: ``[N]`` memory each layer needs; None: no memory limit is checked.
        compressors: per sending device, a compressor kind (``compress.COMPRESSORS``) or ``Compressor``;
            or a sequence, one per cut in path order, applied to each path of a mesh in turn. Others
            send raw.

    Returns:
        The plan; on ties between mesh paths, the first path of ``topology.paths()``.

    Raises:
        ValueError: no placement fits the memory limits, or inconsistent lengths.
    """
    part = _Part("main", layer_latency_ms, layer_output_bytes, input_bytes, memory_bytes_per_layer)
    path, split = best_path(topology, lambda p: _split_part(part, p, topology, _on_path(compressors, p)),
                            lambda split: split.latency_ms)
    segments, cuts = _describe(part, path, split, topology, _on_path(compressors, path))
    return DeploymentPlan(topology.kind, tuple(segments), tuple(cuts), split.latency_ms)


def plan_fixed(
    layer_latency_ms: Mapping[str, Sequence[float]],
    layer_output_bytes: Sequence[float],
    input_bytes: float,
    topology: Topology,
    path: Sequence[str],
    boundaries: Sequence[int],
    compressors: CompressorsArg | None = None,
) -> DeploymentPlan:
    """The plan of a placement chosen by hand: ``layers[boundaries[m]:boundaries[m + 1]]`` on ``path[m]``.

    Its latency is eq. (1) for those boundaries (baselines such as device-only, cloud-only and a single
    split are placements of this kind). Memory limits are not checked. ``compressors`` as for
    ``plan_sequential``.

    Raises:
        ValueError: boundaries that are not ``len(path) + 1`` non-decreasing ints from 0 to N.
    """
    part = _Part("main", layer_latency_ms, layer_output_bytes, input_bytes, None)
    comp = _on_path(compressors, path)
    b = [int(v) for v in boundaries]
    n = len(layer_output_bytes)
    if len(b) != len(path) + 1 or b[0] != 0 or b[-1] != n or any(x > y for x, y in zip(b, b[1:], strict=False)):
        raise ValueError(f"boundaries must be {len(path) + 1} non-decreasing ints from 0 to {n}, got {b}")
    links = path_links(topology, path, [comp.get(a, "none") for a in path[:-1]])
    tau = torch.tensor([[float(layer_latency_ms[name][i]) for name in path] for i in range(n)], dtype=torch.float64)
    total = float(chain_latency(tau.reshape(n, len(path)), b, layer_output_bytes, input_bytes, links))
    segments, cuts = _describe(part, tuple(path), ChainSplit(tuple(b), total), topology, comp)
    return DeploymentPlan(topology.kind, tuple(segments), tuple(cuts), total)


def plan_branched(
    pre: tuple[Mapping[str, Sequence[float]], Sequence[float]],
    branches: Sequence[tuple[Sequence[float], Sequence[float]]],
    post: tuple[Mapping[str, Sequence[float]], Sequence[float]],
    input_bytes: float,
    join_input_bytes: float,
    topology: Topology,
    compressors: _Compressors | None = None,
    memory_bytes: tuple[Sequence[float], Sequence[Sequence[float]], Sequence[float]] | None = None,
) -> DeploymentPlan:
    """The best placement of a network with parallel branches on a mesh (eq. (2)), exactly.

    Branch i runs entirely on ``topology.branches[i]``; the pre-branch layers are split over
    ``chain_before + (root,)``, the post-join layers over ``chain_after`` (join first).

    Args:
        pre: ``(latency per device name, output bytes)`` of the pre-branch layers.
        branches: per branch, ``(latency on its branch device, output bytes)`` of its layers.
        post: ``(latency per device name, output bytes)`` of the post-join layers.
        input_bytes: size of the network input.
        join_input_bytes: size of the merged branch outputs, which the join relays if it runs no layer.
        topology: a mesh.
        compressors: per sending device, a compressor name; others send raw.
        memory_bytes: ``(pre, branches, post)``: the memory each layer needs (per branch a list); None:
            unchecked. A device holds only its own layers (each mesh device is in one part), so the pre
            and post splits are memory-constrained chain DPs and a branch must fit its device.

    Raises:
        ValueError: not a mesh, branches unlike the branch devices, or no placement fits the memory.
    """
    if topology.kind != "mesh" or len(branches) != len(topology.branches):
        raise ValueError(f"need a mesh with one branch device per branch ({len(branches)}), got {topology.kind} "
                         f"with branches {list(topology.branches)}")
    comp = dict(compressors or {})
    root = str(topology.root)
    pre_mem, branch_mem, post_mem = memory_bytes if memory_bytes is not None else (None, None, None)
    _check_branch_memory(topology, branch_mem)
    pre_part = _Part("pre", pre[0], pre[1], input_bytes, pre_mem)
    post_part = _Part("post", post[0], post[1], join_input_bytes, post_mem)
    pre_path, post_path = (*topology.chain_before, root), topology.chain_after
    pre_split = _split_part(pre_part, pre_path, topology, comp)
    post_split = _split_part(post_part, post_path, topology, comp)
    segments, cuts = _describe(pre_part, pre_path, pre_split, topology, comp)
    root_bytes = _wire_bytes(comp, root, sent_bytes(len(pre[1]), pre[1], input_bytes))
    tree, join, joins = 0.0, post_path[0], []
    for i, (name, (lat, out)) in enumerate(zip(topology.branches, branches, strict=True)):
        if len(lat) != len(out):
            raise ValueError(f"branch {i}: {len(lat)} latencies but {len(out)} output sizes")
        b_raw = float(out[-1]) if len(out) else sent_bytes(len(pre[1]), pre[1], input_bytes)  # relay
        b_bytes = _wire_bytes(comp, name, b_raw)
        hop_in = topology.link(root, name).latency_ms(root_bytes)
        hop_out = topology.link(name, join).latency_ms(b_bytes)
        segments.append(DeviceSegment(name, f"branch{i}", 0, len(lat), float(sum(lat))))
        cuts.append(CutPlan(root, name, root_bytes, hop_in, _kind(comp, root), _settings(comp, root)))
        joins.append(CutPlan(name, join, b_bytes, hop_out, _kind(comp, name), _settings(comp, name)))
        tree = max(tree, hop_in + float(sum(lat)) + hop_out)
    post_segments, post_cuts = _describe(post_part, post_path, post_split, topology, comp)
    total = pre_split.latency_ms + tree + post_split.latency_ms
    return DeploymentPlan("mesh", tuple(segments + post_segments), tuple(cuts + joins + post_cuts), total)


def _check_branch_memory(topology: Topology, branch_mem: Sequence[Sequence[float]] | None) -> None:
    """Each branch runs whole on its device: its layers must fit that device's memory."""
    if branch_mem is None:
        return
    for i, (name, mem) in enumerate(zip(topology.branches, branch_mem, strict=True)):
        cap = topology.device(name).memory_limit_bytes
        if cap is not None and float(sum(mem)) > cap:
            raise ValueError(f"branch {i} needs {float(sum(mem)):g} B but its device {name!r} has {cap} B")


def _split_part(
    part: _Part, path: Sequence[str], topology: Topology, comp: _Compressors
) -> ChainSplit:
    tau = [[float(v) for v in part.latency_ms[name]] for name in path]
    n_layers = len(part.output_bytes)
    if any(len(t) != n_layers for t in tau):
        raise ValueError(f"every device needs {n_layers} layer latencies for part {part.name!r}")
    links = path_links(topology, path, [comp.get(a, "none") for a in path[:-1]])
    matrix = [[tau[m][n] for m in range(len(path))] for n in range(n_layers)]
    caps = [topology.device(name).memory_limit_bytes for name in path] if part.memory_bytes is not None else None
    if n_layers == 0:
        return _empty_split(part, links, len(path))
    return best_chain_split(matrix, part.output_bytes, part.input_bytes, links, part.memory_bytes, caps)  # type: ignore[arg-type]


def _empty_split(part: _Part, links: Sequence[_CompressedLink], n_dev: int) -> ChainSplit:
    """No layers: every device relays the part's input."""
    return ChainSplit((0,) * (n_dev + 1), sum(link.latency_ms(part.input_bytes) for link in links))


def _describe(
    part: _Part, path: Sequence[str], split: ChainSplit, topology: Topology, comp: _Compressors
) -> tuple[list[DeviceSegment], list[CutPlan]]:
    segments, cuts = [], []
    b = split.boundaries
    for m, name in enumerate(path):
        lo, hi = b[m], b[m + 1]
        segments.append(DeviceSegment(name, part.name, lo, hi, float(sum(part.latency_ms[name][lo:hi]))))
        if m + 1 < len(path):
            wire = _wire_bytes(comp, name, sent_bytes(hi, part.output_bytes, part.input_bytes))
            link = topology.link(name, path[m + 1])
            cuts.append(CutPlan(name, path[m + 1], wire, link.latency_ms(wire), _kind(comp, name),
                                _settings(comp, name)))
    return segments, cuts


def _wire_bytes(comp: _Compressors, sender: str, raw_bytes: float) -> float:
    return as_compressor(comp.get(sender, "none")).wire_bytes(raw_bytes)


def _kind(comp: _Compressors, sender: str) -> str:
    return as_compressor(comp.get(sender, "none")).kind


def _settings(comp: _Compressors, sender: str) -> dict[str, Any]:
    """What calibration needs to know before it runs: the bits of a lossy compressor."""
    c = as_compressor(comp.get(sender, "none"))
    return {} if c.kind == "none" else {"bits": c.bits}


@dataclass(frozen=True)
class _CompressedLink:
    """A link whose payload is first shrunk by a compressor (duck-types ``Link``: ``src``, ``dst``, ``latency_ms``)."""

    link: Link
    compressor: str | Compressor

    @property
    def src(self) -> str:
        return self.link.src

    @property
    def dst(self) -> str:
        return self.link.dst

    def latency_ms(self, payload_bytes: float) -> float:
        return self.link.latency_ms(as_compressor(self.compressor).wire_bytes(payload_bytes))


def path_links(topology: Topology, path: Sequence[str], compressors: Sequence[str | Compressor] = ()) -> list:
    """The links along ``path``, link m carrying compressor ``compressors[m]`` (missing: ``none``).

    This is how an experiment's ``partition.compressors`` (one per cut, in path order) reach every
    latency prediction: the search's, the morphism children's and the deploy stage's.
    """
    pairs = list(zip(path, path[1:], strict=False))
    return [_CompressedLink(topology.link(a, b), compressors[m] if m < len(compressors) else "none")
            for m, (a, b) in enumerate(pairs)]
