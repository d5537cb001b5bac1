"""Compressors at a cut: an encoder on the sending device, a decoder on the receiving one.

A compressor is a kind (what ``plan.json`` stores), its settings (``Compressor``), its calibrated
parameters as JSON numbers, and a pair of plain ``nn.Module``, which export traces into the two
devices' graphs. Each module maps the tuple of tensors crossing the cut to a tuple.

- ``none``: sends the float32 tensors as they are.
- ``quantize``: affine quantisation per tensor to ``bits`` (8, 4 or 2) bits (the quantisation step
  of BottleNet++, paper 004 §IV). Scale and zero point are fixed by calibration on sample data:
  ``q = clamp(round(x / scale) + zp, 0, 2^bits - 1)``, ``(q - zp) * scale`` after the link. Both ends
  hold scale and zero point as constants (and ``manifest.json`` as numbers). 8-bit values travel as
  uint8, one per element; 4- and 2-bit values are packed 2 or 4 to a byte (per sample), so a tensor
  of ``n`` elements costs ``ceil(n * bits / 8)`` bytes. Inside the calibrated range the error is at
  most ``scale / 2`` per element; outside it values saturate.
- ``autoencoder``: a learned encoder/decoder (BottleNet++, paper 004 §IV) followed by ``quantize``
  (``bottleneck.py``); the receiving side is trained with it.
- ``distilled_bottleneck``: a small student head with a bottleneck inside replaces the sending
  device's part of the network (paper 002; ``distilled.py``), followed by ``quantize``.

The learned kinds have weights, so ``build_codec`` cannot make them from parameters: their modules
go to ``export.export_bundle(codecs=...)``. For planning, before anything is trained, their payload
is estimated from their settings (``Compressor.wire_bytes``); the exact figure is recorded once
they are built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from jmsnas.compress.registry import COMPRESSORS, LEARNED
from jmsnas.plan.wire import FLOAT32_BYTES

BITS: tuple[int, ...] = (2, 4, 8)


@dataclass(frozen=True)
class Compressor:
    """Settings of the compressor at one cut.

    Args:
        kind: one of ``COMPRESSORS``.
        bits: bits per value on the wire (lossy kinds): 8, 4 or 2.
        channel_fraction: learned kinds: share of the cut's channels the code keeps.
        positions_fraction: learned kinds: share of the cut's positions the code keeps (a stride-2
            code keeps 1/4 of a 2-D map, 1/2 of a 1-D one; used only to estimate the payload).
    """

    kind: str = "none"
    bits: int = 8
    channel_fraction: float = 0.25
    positions_fraction: float = 0.25

    def __post_init__(self) -> None:
        _check_name(self.kind)
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits}")
        if not (0 < self.channel_fraction <= 1 and 0 < self.positions_fraction <= 1):
            raise ValueError("channel_fraction and positions_fraction must lie in (0, 1]")

    def wire_bytes(self, raw_bytes: float) -> float:
        """Bytes on the wire for a cut whose float32 tensors take ``raw_bytes`` (an estimate for learned kinds)."""
        if self.kind == "none":
            return float(raw_bytes)
        values = float(raw_bytes) / FLOAT32_BYTES
        if self.kind in LEARNED:
            values *= self.channel_fraction * self.positions_fraction
        return float(math.ceil(values * self.bits / 8))


def as_compressor(spec: str | Compressor) -> Compressor:
    """A ``Compressor`` from a kind name (default settings) or a ``Compressor``."""
    return spec if isinstance(spec, Compressor) else Compressor(str(spec))


def packed_bytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` values of ``bits`` bits take on the wire."""
    return math.ceil(numel * bits / 8)


def calibrate(name: str, samples: Sequence[Sequence[torch.Tensor]], bits: int = 8) -> dict[str, Any]:
    """The parameters of compressor ``name`` for one cut, from sample tensors crossing it.

    Args:
        name: a compressor name.
        samples: per calibration batch, the tuple of tensors crossing the cut (batch first).
        bits: bits per value (``quantize``).

    Returns:
        JSON-ready parameters: ``{}`` for ``none``; for ``quantize`` the bits, one scale and zero point
        per tensor and each tensor's per-sample shape: ``{"bits", "scales", "zero_points", "shapes"}``.
    """
    _check_name(name)
    if name == "none":
        return {}
    if name in LEARNED:
        raise ValueError(f"{name!r} is learned: build it with bottleneck.py or distilled.py, not from parameters")
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if not samples:
        raise ValueError("quantize needs at least one calibration sample")
    levels = 2**bits - 1
    scales, zero_points = [], []
    for j in range(len(samples[0])):
        lo = min(0.0, min(float(s[j].min()) for s in samples))  # keep 0 exactly representable
        hi = max(0.0, max(float(s[j].max()) for s in samples))
        scale = (hi - lo) / levels if hi > lo else 1.0
        scales.append(scale)
        zero_points.append(int(min(levels, max(0, round(-lo / scale)))))
    shapes = [list(t.shape[1:]) for t in samples[0]]
    return {"bits": bits, "scales": scales, "zero_points": zero_points, "shapes": shapes}


def build_codec(name: str, params: Mapping[str, Any]) -> tuple[nn.Module, nn.Module]:
    """``(encoder, decoder)`` modules of compressor ``name`` with calibrated ``params``.

    Raises:
        ValueError: unknown or learned compressor, or ``quantize`` without its parameters.
    """
    _check_name(name)
    if name == "none":
        return PassThrough(), PassThrough()
    if name in LEARNED:
        raise ValueError(f"{name!r} is learned: build it with bottleneck.py or distilled.py and pass its modules "
                         "to export_bundle(codecs=...)")
    if not params.get("scales"):
        raise ValueError("quantize needs calibrated parameters (scales, zero_points); run calibrate first")
    bits = int(params.get("bits", 8))
    scales = torch.tensor(params["scales"], dtype=torch.float32)
    zero_points = torch.tensor(params["zero_points"], dtype=torch.float32)
    shapes = [tuple(int(v) for v in s) for s in params.get("shapes", [()] * len(scales))]
    return QuantizeEncoder(scales, zero_points, bits, shapes), QuantizeDecoder(scales, zero_points, bits, shapes)


class PassThrough(nn.Module):
    """The codec of ``none``: returns the tensors unchanged."""

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(xs)


class _QuantizeParams(nn.Module):
    """Holds one (scale, zero point) per tensor of a cut, as buffers shipped inside the exported graph.

    Plain ints (count, bits, shapes) are trace-time constants: the graph must not read a tensor's length.
    """

    def __init__(self, scales: torch.Tensor, zero_points: torch.Tensor, bits: int = 8,
                 shapes: Sequence[tuple[int, ...]] = ()) -> None:
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits}")
        self.count = len(scales)
        self.bits = bits
        self.levels = 2**bits - 1
        self.per_byte = 8 // bits
        self.shapes = [tuple(s) for s in shapes]
        if bits < 8 and len(self.shapes) != self.count:
            raise ValueError("packed quantisation needs the per-sample shape of every tensor (calibrate records them)")
        self.register_buffer("scales", scales)
        self.register_buffer("zero_points", zero_points)
        self.register_buffer("weights", torch.tensor([2 ** (bits * i) for i in range(self.per_byte)],
                                                     dtype=torch.int32))


class QuantizeEncoder(_QuantizeParams):
    """float32 tensors -> uint8 tensors; below 8 bits, ``8 / bits`` values packed per byte (per sample)."""

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        _check_count(len(xs), self.count)
        out = []
        for j, x in enumerate(xs):
            q = torch.clamp(torch.round(x / self.scales[j]) + self.zero_points[j], 0, self.levels)
            out.append(q.to(torch.uint8) if self.bits == 8 else self._pack(q, math.prod(self.shapes[j])))
        return tuple(out)

    def _pack(self, q: torch.Tensor, numel: int) -> torch.Tensor:
        flat = q.reshape(q.shape[0], numel).to(torch.int32)
        pad = (-numel) % self.per_byte
        if pad:
            flat = nn.functional.pad(flat, (0, pad))
        groups = flat.reshape(q.shape[0], (numel + pad) // self.per_byte, self.per_byte)
        return (groups * self.weights).sum(dim=-1).to(torch.uint8)


class QuantizeDecoder(_QuantizeParams):
    """uint8 tensors -> float32 tensors: unpack below 8 bits, then ``(q - zero_point) * scale``."""

    def forward(self, qs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        _check_count(len(qs), self.count)
        out = []
        for j, q in enumerate(qs):
            values = q.to(torch.float32) if self.bits == 8 else self._unpack(q, self.shapes[j])
            out.append((values - self.zero_points[j]) * self.scales[j])
        return tuple(out)

    def _unpack(self, packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        codes = packed.to(torch.int32).unsqueeze(-1)
        values = torch.remainder(torch.div(codes, self.weights, rounding_mode="floor"), self.levels + 1)
        values = values.reshape(packed.shape[0], -1)[:, :numel]
        return values.reshape(packed.shape[0], *shape).to(torch.float32)


def _check_count(got: int, expected: int) -> None:
    if got != expected:
        raise ValueError(f"codec calibrated for {expected} tensors, got {got}")


def _check_name(name: str) -> None:
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; valid: {', '.join(COMPRESSORS)}")
