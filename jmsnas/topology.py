"""Devices, links and the two topology kinds of JMSNAS (paper 003 §III), with completion latency.

A *chain* is a path of devices: the source holds the input, every device runs one contiguous
segment of the network and sends its output to the next (paper 003 Fig. 2(a), eq. (1)).

A *mesh* is a chain with a tree part in the middle (paper 003 Fig. 2(b), eq. (2)): a root device
broadcasts its output to several branch devices that run in parallel and whose outputs join again
at a later device. Devices before the root and from the join on form the chain part C; the root
and the branches form the tree part T.

Link latency is ``rtt_ms / 2 + 8 * bytes / bandwidth`` (one-way propagation plus serialisation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from jmsnas.errors import TopologyError

TopologyKind = Literal["chain", "mesh"]


@dataclass(frozen=True)
class AnalyticSpec:
    """A device described by its throughput instead of a measured profile (paper 001 §4).

    Args:
        macs_per_s: multiply-accumulates per second the device sustains.
        memory_bytes: memory available for weights and activations.
        memory_bandwidth_bytes_per_s: bytes per second between memory and the cores.
        overhead_ms: fixed cost per executed op (dispatch, loop set-up).
    """

    macs_per_s: float
    memory_bytes: int
    memory_bandwidth_bytes_per_s: float | None = None
    overhead_ms: float = 0.0


@dataclass(frozen=True)
class Device:
    """A device of the topology: either a measured latency profile or an analytic description."""

    name: str
    profile: str | None = None
    analytic: AnalyticSpec | None = None
    memory_bytes: int | None = None

    @property
    def memory_limit_bytes(self) -> int | None:
        if self.memory_bytes is not None:
            return self.memory_bytes
        return None if self.analytic is None else self.analytic.memory_bytes


@dataclass(frozen=True)
class Link:
    """A directed link between two devices."""

    src: str
    dst: str
    bandwidth_mbps: float
    rtt_ms: float = 0.0

    def latency_ms(self, payload_bytes: float) -> float:
        """One-way latency of sending ``payload_bytes``: half the round trip plus serialisation."""
        if payload_bytes <= 0:
            return 0.0
        return self.rtt_ms / 2.0 + 8.0 * payload_bytes / (self.bandwidth_mbps * 1e6) * 1e3


@dataclass(frozen=True)
class Topology:
    """A validated chain or mesh of devices.

    Build it with :func:`build_topology`, which checks the graph. For a chain, ``chain_before``
    holds every device in order and the tree fields are empty.
    """

    kind: TopologyKind
    devices: tuple[Device, ...]
    links: tuple[Link, ...]
    chain_before: tuple[str, ...]
    root: str | None = None
    branches: tuple[str, ...] = ()
    chain_after: tuple[str, ...] = ()
    _links_by_pair: dict[tuple[str, str], Link] = field(default_factory=dict, repr=False, compare=False)

    @property
    def source(self) -> str:
        return self.chain_before[0] if self.chain_before else str(self.root)

    @property
    def sink(self) -> str:
        return self.chain_after[-1] if self.chain_after else self.chain_before[-1]

    @property
    def chain_devices(self) -> tuple[str, ...]:
        """The set C of paper 003 eq. (2) (every device, for a chain)."""
        return self.chain_before + self.chain_after

    def device(self, name: str) -> Device:
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)

    def link(self, src: str, dst: str) -> Link:
        return self._links_by_pair[(src, dst)]

    def successors(self, name: str) -> tuple[str, ...]:
        return tuple(link.dst for link in self.links if link.src == name)

    def paths(self) -> list[tuple[str, ...]]:
        """Every source-to-sink path: one for a chain, one per branch for a mesh."""
        if self.kind == "chain":
            return [self.chain_before]
        return [self.chain_before + (str(self.root), branch) + self.chain_after for branch in self.branches]

    def completion_latency_ms(self, compute_ms: Mapping[str, float], sent_bytes: Mapping[str, float]) -> float:
        """Completion latency of paper 003 eq. (1) (chain) or eq. (2) (mesh).

        Args:
            compute_ms: per device, the summed execution latency of its layers, Σ_{n∈D^m} τ_n^m.
            sent_bytes: per device, the bytes it sends to its successor(s): the output of its last
                layer d(m). A device that runs no layer relays what it received. The sink's entry
                is ignored (ε^M = 0). For the mesh root the same payload is broadcast to every
                branch, each over its own link.

        Returns:
            The completion latency in milliseconds.
        """

        def hop(src: str, dst: str | None) -> float:
            return 0.0 if dst is None else self.link(src, dst).latency_ms(sent_bytes.get(src, 0.0))

        def chain_sum(names: Sequence[str], after: str | None) -> float:
            total = 0.0
            for i, name in enumerate(names):
                nxt = names[i + 1] if i + 1 < len(names) else after
                total += compute_ms.get(name, 0.0) + hop(name, nxt)
            return total

        if self.kind == "chain":
            return chain_sum(self.chain_before, None)
        root = str(self.root)
        join = self.chain_after[0]
        tree = max(
            compute_ms.get(root, 0.0) + hop(root, b) + compute_ms.get(b, 0.0) + hop(b, join) for b in self.branches
        )
        return chain_sum(self.chain_before, root) + tree + chain_sum(self.chain_after, None)


def segment_costs(
    path: Sequence[str],
    layer_latency_ms: Mapping[str, Sequence[float]],
    boundaries: Sequence[int],
    layer_output_bytes: Sequence[float],
    input_bytes: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-device compute and sent bytes for a contiguous assignment of layers to a path of devices.

    Args:
        path: the devices in order (a chain, or one path through a mesh).
        layer_latency_ms: per device, τ_n^m for every layer n (same length N for every device).
        boundaries: ``len(path) + 1`` non-decreasing indices; device ``path[m]`` runs layers
            ``boundaries[m]:boundaries[m + 1]``; ``boundaries[0] == 0`` and ``boundaries[-1] == N``.
        layer_output_bytes: size of each layer's output in bytes.
        input_bytes: size of the input held by the source, sent on if the source runs no layer.

    Returns:
        ``(compute_ms, sent_bytes)`` as :meth:`Topology.completion_latency_ms` takes them.
    """
    n_layers = len(layer_output_bytes)
    if len(boundaries) != len(path) + 1 or boundaries[0] != 0 or boundaries[-1] != n_layers:
        raise ValueError(f"boundaries {list(boundaries)} do not cover {n_layers} layers on {len(path)} devices")
    compute: dict[str, float] = {}
    sent: dict[str, float] = {}
    for m, name in enumerate(path):
        lo, hi = boundaries[m], boundaries[m + 1]
        if hi < lo:
            raise ValueError(f"boundaries must be non-decreasing, got {list(boundaries)}")
        compute[name] = float(sum(layer_latency_ms[name][lo:hi]))
        sent[name] = float(layer_output_bytes[hi - 1]) if hi > 0 else float(input_bytes)
    return compute, sent


def build_topology(kind: TopologyKind, devices: Sequence[Device], links: Sequence[Link]) -> Topology:
    """Validate devices and links and return the topology.

    Raises:
        TopologyError: naming the offending device or link (its index in ``links``).
    """
    names = [d.name for d in devices]
    if not names:
        raise TopologyError("no devices; declare at least one device", field="topology.devices")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise TopologyError(f"device name {name!r} is used twice; names must be unique",
                                field=f"topology.devices[{i}].name")
        seen.add(name)
    pairs: dict[tuple[str, str], Link] = {}
    for i, link in enumerate(links):
        for end in ("src", "dst"):
            if getattr(link, end) not in seen:
                raise TopologyError(f"unknown device {getattr(link, end)!r}; known devices: {', '.join(names)}",
                                    field=f"topology.links[{i}].{end}")
        if link.src == link.dst:
            raise TopologyError(f"link from {link.src!r} to itself", field=f"topology.links[{i}]")
        if not link.bandwidth_mbps > 0:
            raise TopologyError(f"bandwidth must be > 0 Mbit/s, got {link.bandwidth_mbps}",
                                field=f"topology.links[{i}].bandwidth_mbps")
        if link.rtt_ms < 0:
            raise TopologyError(f"rtt must be >= 0 ms, got {link.rtt_ms}", field=f"topology.links[{i}].rtt_ms")
        if (link.src, link.dst) in pairs:
            raise TopologyError(f"a second link {link.src} -> {link.dst}", field=f"topology.links[{i}]")
        pairs[(link.src, link.dst)] = link
    succ = {n: [d for (s, d) in pairs if s == n] for n in names}
    pred = {n: [s for (s, d) in pairs if d == n] for n in names}
    _check_acyclic(names, succ)
    sources = [n for n in names if not pred[n]]
    sinks = [n for n in names if not succ[n]]
    if len(sources) != 1:
        raise TopologyError(f"needs exactly one source device (holding the input), found {sources}",
                            field="topology.links")
    if len(sinks) != 1:
        hint = "; a mesh's branches must join again at one device" if kind == "mesh" else ""
        raise TopologyError(f"needs exactly one sink device, found {sinks}{hint}", field="topology.links")
    reached = _reachable(sources[0], succ)
    if len(reached) != len(names):
        missing = [n for n in names if n not in reached]
        raise TopologyError(f"devices {missing} are not connected to the source {sources[0]!r}",
                            field="topology.links")
    parts = _walk(kind, sources[0], succ, pred)
    return Topology(kind=kind, devices=tuple(devices), links=tuple(links), _links_by_pair=pairs, **parts)


def _check_acyclic(names: Sequence[str], succ: Mapping[str, Sequence[str]]) -> None:
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for d in succ[n]:
            if state.get(d) == 1:
                cycle = trail[trail.index(d):] + [n, d] if d in trail else [n, d]
                raise TopologyError(f"links form a cycle: {' -> '.join(dict.fromkeys(cycle))} -> {d}",
                                    field="topology.links")
            if d not in state:
                visit(d, trail + [n])
        state[n] = 2

    for n in names:
        if n not in state:
            visit(n, [])


def _reachable(start: str, succ: Mapping[str, Sequence[str]]) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for d in succ[stack.pop()]:
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen


def _walk(kind: TopologyKind, source: str, succ: Mapping[str, Sequence[str]],
          pred: Mapping[str, Sequence[str]]) -> dict:
    before = [source]
    while len(succ[before[-1]]) == 1:
        before.append(succ[before[-1]][0])
    if kind == "chain":
        if succ[before[-1]]:
            raise TopologyError(f"kind is 'chain' but device {before[-1]!r} links to several devices "
                                f"{list(succ[before[-1]])}; use kind: mesh for a tree part", field="topology.kind")
        return {"chain_before": tuple(before)}
    if not succ[before[-1]]:
        raise TopologyError("kind is 'mesh' but the devices form a plain chain (no device broadcasts to "
                            "several branches); use kind: chain", field="topology.kind")
    root = before.pop()
    branches = tuple(succ[root])
    joins = set()
    for b in branches:
        if len(pred[b]) != 1 or len(succ[b]) != 1:
            raise TopologyError(f"mesh branch device {b!r} must have exactly one link in (from root {root!r}) "
                                "and one link out (to the join device)", field="topology.links")
        joins.add(succ[b][0])
    if len(joins) != 1:
        raise TopologyError(f"mesh branches of root {root!r} must join again at one device, they go to "
                            f"{sorted(joins)}", field="topology.links")
    join = joins.pop()
    if sorted(pred[join]) != sorted(branches):
        raise TopologyError(f"join device {join!r} must receive exactly the branches {list(branches)}",
                            field="topology.links")
    after = [join]
    while succ[after[-1]]:
        if len(succ[after[-1]]) != 1:
            raise TopologyError(f"a mesh has one tree part; device {after[-1]!r} branches again",
                                field="topology.links")
        after.append(succ[after[-1]][0])
    return {"chain_before": tuple(before), "root": root, "branches": branches, "chain_after": tuple(after)}
