"""The ``plan.json`` artifact: a network cut across devices, what crosses each cut, its predicted latency.

``DeploymentPlan`` is what the planners of ``planners.py`` return and what export and the runtime
read; ``to_json`` writes ``plan.json`` (atomically), ``load`` / ``from_json`` read it back.

The frozen dataclasses below are the file's schema too: pydantic validates a file against them
(``extra="forbid"`` through ``__pydantic_config__``), so an unknown key, a wrong type or a missing
field raises `jmsnas.errors.ArtifactError` naming the file and the field
(``plan.json: cuts[0].payload_bytes: Input should be a valid number``). They stay plain dataclasses
(``dataclasses.replace`` works on them, constructing one validates nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter

from jmsnas.io import load_artifact, validate_artifact, write_json

#: The ``version`` written into ``plan.json``; files without one (written before it) are version 1.
PLAN_VERSION = 1
_STRICT_KEYS = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor crossing a cut (or entering / leaving a device)."""

    __pydantic_config__ = _STRICT_KEYS

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class DeviceSegment:
    """The layers one device runs: ``layers[start:stop]`` of network part ``part``.

    ``part`` is ``"main"`` for a sequential network, else ``"pre"``, ``"branch<i>"`` or ``"post"``.
    """

    __pydantic_config__ = _STRICT_KEYS

    device: str
    part: str
    start: int
    stop: int
    compute_ms: float


@dataclass(frozen=True)
class CutPlan:
    """What one device sends to the next over the link ``src -> dst``.

    ``tensors`` are what the sending segment produces, before its encoder (the manifest of a bundle
    lists what goes on the wire); empty means "not known yet" (the planner knew only bytes), and
    ``split.cut_tensors`` gives them for ``with_cut_tensors``.
    ``compressor_params`` is filled in by calibration (``compress.calibrate``); until then it holds only
    the settings calibration needs (``bits``).
    """

    __pydantic_config__ = _STRICT_KEYS

    src: str
    dst: str
    payload_bytes: float
    link_ms: float
    compressor: str = "none"
    compressor_params: dict[str, Any] = field(default_factory=dict)
    tensors: tuple[TensorSpec, ...] = ()


@dataclass(frozen=True)
class ExitPlan:
    """An early exit at the end of device ``device``'s segment (written by ``jmsnas.exits``).

    A sample whose top-1 softmax probability at this exit is at least ``threshold`` leaves here
    with the exit's logits and crosses no further link.
    """

    __pydantic_config__ = _STRICT_KEYS

    device: str
    unit: int
    threshold: float
    head_macs: int = 0
    latency_ms: float | None = None
    termination_rate: float | None = None


@dataclass(frozen=True)
class DeploymentPlan:
    """A network cut across devices, with the predicted latency (eq. (1) or eq. (2)).

    Args:
        topology_kind: ``"chain"`` or ``"mesh"``.
        segments: per device, in execution order (for a mesh: before, root, branches, join, after).
        cuts: one per used link, in execution order.
        total_latency_ms: predicted completion latency (with exits: the worst case, every head run).
        exits: early exits at device boundaries, in order (``jmsnas.exits``); empty without.
        mean_latency_ms: with exits, the expected latency over the termination rates.
        version: the ``plan.json`` format version.
    """

    __pydantic_config__ = _STRICT_KEYS

    topology_kind: str
    segments: tuple[DeviceSegment, ...]
    cuts: tuple[CutPlan, ...]
    total_latency_ms: float
    exits: tuple[ExitPlan, ...] = ()
    mean_latency_ms: float | None = None
    version: int = PLAN_VERSION

    @property
    def devices(self) -> list[str]:
        """The devices in execution order."""
        return [s.device for s in self.segments]

    def boundaries(self, part: str = "main") -> list[int]:
        """``[start of first, stop of each]`` over the segments of ``part`` (the chain split form)."""
        segs = [s for s in self.segments if s.part == part]
        return [segs[0].start, *(s.stop for s in segs)] if segs else []

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict; ``from_dict`` reverses it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentPlan:
        """The plan of a ``to_dict`` mapping, validated (``exits``, ``mean_latency_ms``, ``version`` may be absent).

        Raises:
            ArtifactError: an unknown key, a wrong type or a missing field, named by its path.
        """
        return validate_artifact(data, _SCHEMA.validate_python)

    def to_json(self, path: str | Path) -> None:
        """Write the plan as indented JSON with a trailing newline (``plan.json``), atomically."""
        write_json(path, self.to_dict(), newline=True)

    @classmethod
    def load(cls, path: str | Path) -> DeploymentPlan:
        """Read a ``plan.json`` written by ``to_json``.

        Raises:
            ArtifactError: a missing file, invalid JSON, or a field that does not fit; names the file and field.
        """
        return load_artifact(path, _SCHEMA.validate_python)

    @classmethod
    def from_json(cls, path: str | Path) -> DeploymentPlan:
        """Read a file written by ``to_json`` (the same as ``load``)."""
        return cls.load(path)

    def with_cut_tensors(self, tensors: Sequence[Sequence[TensorSpec]]) -> DeploymentPlan:
        """The same plan with the tensors of every cut (one sequence per cut, in order)."""
        if len(tensors) != len(self.cuts):
            raise ValueError(f"need tensors for {len(self.cuts)} cuts, got {len(tensors)}")
        cuts = tuple(replace(c, tensors=tuple(t)) for c, t in zip(self.cuts, tensors, strict=True))
        return replace(self, cuts=cuts)

    def with_exits(self, exits: Sequence[ExitPlan], total_latency_ms: float | None = None,
                   mean_latency_ms: float | None = None) -> DeploymentPlan:
        """The same plan with early exits (and, if given, its worst-case and mean latency with them)."""
        devices = self.devices
        for e in exits:
            if e.device not in devices[:-1]:
                raise ValueError(f"exit on {e.device!r}: exits sit at the end of a device other than the last "
                                 f"({devices[:-1]})")
        total = self.total_latency_ms if total_latency_ms is None else float(total_latency_ms)
        return replace(self, exits=tuple(exits), total_latency_ms=total, mean_latency_ms=mean_latency_ms)

    def with_compressor_params(self, params: Sequence[Mapping[str, Any]]) -> DeploymentPlan:
        """The same plan with calibrated compressor parameters (one mapping per cut, in order)."""
        if len(params) != len(self.cuts):
            raise ValueError(f"need parameters for {len(self.cuts)} cuts, got {len(params)}")
        cuts = tuple(replace(c, compressor_params=dict(p)) for c, p in zip(self.cuts, params, strict=True))
        return replace(self, cuts=cuts)


_SCHEMA: TypeAdapter[DeploymentPlan] = TypeAdapter(DeploymentPlan)
