"""EENN candidates: a split of the network over a path of devices plus exits at its boundaries.

Paper 001 §3.1: "at most one classifier per processor", the search space "pruned by evaluating only
those that are predicted to fit within the given latency constraint or the memory sizes of the
targeted devices" before anything is trained. A candidate (``Placement``) here is

- a chain split: device ``path[m]`` runs units ``boundaries[m]:boundaries[m + 1]`` (an empty range
  relays, as in ``partition.plan``);
- exits at some of its inner boundaries: an exit at location ``b`` runs on the device whose
  non-empty segment ends at ``b``, after its last unit, so a sample that leaves there crosses no
  further link. That gives at most one exit per device and per boundary.

Latency (paper 003 eq. (1) with exits; paper 004 eq. (3) for its expectation): a sample that
leaves at exit k on device m pays the compute of devices ``0..m`` (each device's units and the
head at its end) and the links between them; one that reaches the end pays everything, every head
included: that is the **worst case**, which must meet ``T_const``. Where the result is wanted at the
sink (``result_to_sink``, e.g. a wearable whose answers are shown on a phone) an exited sample also
pays sending its logits down the remaining links; otherwise its answer is where it left (papers
001 and 004: inference terminates on the device). The mean latency weighs these by
the termination rates (``mean_latency_ms``).

Memory: a device holds its units' and heads' memory (``unit_memory_bytes``: by default 4 bytes per
parameter plus the unit's float32 output) within ``Device.memory_limit_bytes``.

Two ways to enumerate (``enumerate_placements``): with the boundaries of a given plan, only the
exit subsets at its boundaries; without, every split whose inner boundaries are block boundaries
(or the classifier's start), as paper 001 maps each subgraph to the next processor.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from jmsnas.compress.quantize import Compressor
from jmsnas.exits.graph import BlockGraph
from jmsnas.plan.planners import path_links
from jmsnas.plan.wire import BYTES_PER_PARAM, payload_bytes
from jmsnas.topology import Topology

#: ``(device name, exit location) -> ms`` of running the head of that location on that device.
HeadLatency = Callable[[str, int], float]
#: ``(cut index on the path, raw bytes) -> ms`` of sending a cut's payload.
LinkLatency = Callable[[int, float], float]


@dataclass(frozen=True)
class Placement:
    """One EENN candidate (see the module docstring).

    Args:
        path: the devices in order.
        boundaries: ``len(path) + 1`` unit indices.
        exits: exit locations, increasing.
        exit_devices: the device of each exit.
        exit_latency_ms: latency of a sample that leaves at each exit.
        worst_latency_ms: latency of a sample that reaches the final classifier.
        device_memory_bytes: per device, what its units and heads need.
        fits_memory: whether every device's need is within its limit.
        compute_ms: per device, its units' latency plus its exit head's.
        link_ms: per cut (between consecutive devices), the latency of sending its payload.
        payload_bytes: per cut, the raw bytes sent.
    """

    path: tuple[str, ...]
    boundaries: tuple[int, ...]
    exits: tuple[int, ...]
    exit_devices: tuple[str, ...]
    exit_latency_ms: tuple[float, ...]
    worst_latency_ms: float
    device_memory_bytes: tuple[tuple[str, float], ...]
    fits_memory: bool
    compute_ms: tuple[float, ...] = ()
    link_ms: tuple[float, ...] = ()
    payload_bytes: tuple[float, ...] = ()

    def mean_latency_ms(self, termination: Sequence[float]) -> float:
        """Expected latency for termination rates ``[K + 1]`` (the final classifier last)."""
        lat = [*self.exit_latency_ms, self.worst_latency_ms]
        return float(sum(r * t for r, t in zip(termination, lat, strict=True)))

    def to_dict(self) -> dict:
        return {"path": list(self.path), "boundaries": list(self.boundaries), "exits": list(self.exits),
                "exit_devices": list(self.exit_devices), "exit_latency_ms": list(self.exit_latency_ms),
                "worst_latency_ms": self.worst_latency_ms,
                "device_memory_bytes": dict(self.device_memory_bytes), "fits_memory": self.fits_memory,
                "compute_ms": list(self.compute_ms), "link_ms": list(self.link_ms)}


def unit_memory_bytes(graph: BlockGraph) -> list[float]:
    """Default memory need per unit: float32 parameters plus the float32 output it writes."""
    return [float(BYTES_PER_PARAM) * u.params + u.output_bytes for u in graph.units]


def place(graph: BlockGraph, topology: Topology, path: Sequence[str], boundaries: Sequence[int],
          exits: Sequence[int], unit_latency_ms: Mapping[str, Sequence[float]], head_latency: HeadLatency,
          head_params: Mapping[int, int], link_latency: LinkLatency | None = None,
          memory_bytes: Sequence[float] | None = None, result_to_sink: bool = False) -> Placement:
    """Latency and memory of one candidate.

    Args:
        graph: the block graph.
        topology: devices (memory limits) and links.
        path: the devices in order.
        boundaries: ``len(path) + 1`` unit indices.
        exits: exit locations (each an inner boundary with a non-empty segment ending there).
        unit_latency_ms: per device, the latency of every unit.
        head_latency: ms of a location's head on a device.
        head_params: parameters of each location's head.
        link_latency: ms to send a cut's raw payload; default: the topology's link, uncompressed.
        memory_bytes: per unit memory need (default ``unit_memory_bytes``).
        result_to_sink: an exited sample's logits still travel to the last device.

    Raises:
        ValueError: an exit that is not at the end of a non-empty segment.
    """
    memory = list(memory_bytes) if memory_bytes is not None else unit_memory_bytes(graph)
    links = link_latency or (lambda m, raw: topology.link(path[m], path[m + 1]).latency_ms(raw))
    owner = {hi: m for m, (lo, hi) in enumerate(zip(boundaries, boundaries[1:], strict=False)) if hi > lo}
    exit_dev = []
    for loc in exits:
        if loc not in owner or loc >= boundaries[-1]:
            raise ValueError(f"exit at unit {loc} is not at the end of a non-empty segment of {list(boundaries)}")
        exit_dev.append(owner[loc])
    elapsed, exit_ms, mem, compute, link_ms, payload = 0.0, [], [], [], [], []
    for m, name in enumerate(path):
        lo, hi = boundaries[m], boundaries[m + 1]
        compute.append(float(sum(unit_latency_ms[name][lo:hi])))
        need = float(sum(memory[lo:hi]))
        if hi in exits and owner.get(hi) == m:
            compute[-1] += head_latency(name, hi)
            forward = _forward_logits_ms(graph, topology, path, m) if result_to_sink else 0.0
            exit_ms.append(elapsed + compute[-1] + forward)
            need += float(BYTES_PER_PARAM) * head_params[hi]
        elapsed += compute[-1]
        mem.append((name, need))
        if m + 1 < len(path):
            payload.append(_sent_bytes(graph, hi))
            link_ms.append(links(m, payload[-1]))
            elapsed += link_ms[-1]
    limits = {d.name: d.memory_limit_bytes for d in topology.devices}
    fits = all(limits.get(name) is None or need <= limits[name] for name, need in mem)
    return Placement(tuple(path), tuple(int(b) for b in boundaries), tuple(exits),
                     tuple(path[m] for m in exit_dev), tuple(exit_ms), elapsed, tuple(mem), fits,
                     tuple(compute), tuple(link_ms), tuple(payload))


def _forward_logits_ms(graph: BlockGraph, topology: Topology, path: Sequence[str], m: int) -> float:
    logits = float(payload_bytes(graph.blueprint.num_classes))
    return sum(topology.link(a, b).latency_ms(logits) for a, b in zip(path[m:], path[m + 1:], strict=False))


def _sent_bytes(graph: BlockGraph, hi: int) -> float:
    return graph.units[hi - 1].output_bytes if hi > 0 else float(payload_bytes(_numel(graph.input_shape)))


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for v in shape:
        out *= int(v)
    return out


def exit_options(graph: BlockGraph, boundaries: Sequence[int], locations: Sequence[int]) -> list[int]:
    """Inner boundaries that may host an exit: candidate locations at the end of a non-empty segment."""
    ends = {hi for lo, hi in zip(boundaries, boundaries[1:], strict=False) if hi > lo}
    return sorted(b for b in set(boundaries[1:-1]) if b in ends and b in locations)


def split_options(graph: BlockGraph, n_devices: int) -> list[tuple[int, ...]]:
    """Every chain split whose inner boundaries are block boundaries, the classifier's start, 0 or the end."""
    n = graph.num_units
    points = sorted({0, n, graph.classifier_start, *graph.locations})
    return [(0, *inner, n) for inner in itertools.combinations_with_replacement(points, n_devices - 1)]


def enumerate_placements(graph: BlockGraph, topology: Topology, unit_latency_ms: Mapping[str, Sequence[float]],
                         head_latency: HeadLatency, head_params: Mapping[int, int], locations: Sequence[int],
                         boundaries: Sequence[int] | None = None, path: Sequence[str] | None = None,
                         link_latency: LinkLatency | None = None, memory_bytes: Sequence[float] | None = None,
                         result_to_sink: bool = False, compressors: Sequence[str | Compressor] = ()) -> list[Placement]:
    """Every candidate: each split (the given one, or all of ``split_options`` on every path) with each exit subset.

    Args:
        graph: the block graph.
        topology: devices and links.
        unit_latency_ms: per device, the latency of every unit.
        head_latency: ms of a location's head on a device.
        head_params: parameters of each location's head (locations without a head cannot host an exit).
        locations: the exit locations allowed (those with a head).
        boundaries: a fixed split (from a plan); None enumerates splits.
        path: the devices of the fixed split (default: the topology's first path).
        link_latency: for a fixed split, ms per cut (e.g. the plan's compressed payloads).
        memory_bytes: per unit memory need.
        result_to_sink: an exited sample's logits still travel to the last device.
        compressors: enumerated splits: one per cut in path order, shrinking what each link carries
            (as the planner prices them); a fixed split uses ``link_latency``.

    Returns:
        Placements, including the ones without exits (the original network's).
    """
    allowed = [loc for loc in locations if loc in head_params]
    out = []
    paths = [tuple(path or topology.paths()[0])] if boundaries is not None else topology.paths()
    for p in paths:
        splits = [tuple(boundaries)] if boundaries is not None else split_options(graph, len(p))
        links = link_latency if boundaries is not None else _priced(path_links(topology, p, compressors))
        for b in splits:
            options = exit_options(graph, b, allowed)
            for r in range(len(options) + 1):
                for subset in itertools.combinations(options, r):
                    out.append(place(graph, topology, p, b, subset, unit_latency_ms, head_latency, head_params,
                                     links, memory_bytes, result_to_sink))
    return out


def _priced(links: Sequence) -> LinkLatency:
    """``(cut m, raw bytes) -> ms`` over links that may compress (``partition.plan.path_links``)."""
    return lambda m, raw: links[m].latency_ms(raw)


def feasible(placements: Sequence[Placement], t_const_ms: float | None) -> list[Placement]:
    """The placements within the memory limits and, if given, the worst-case latency constraint."""
    return [p for p in placements if p.fits_memory and (t_const_ms is None or p.worst_latency_ms <= t_const_ms + 1e-9)]
