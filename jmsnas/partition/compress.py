"""Compressors at a cut: an encoder on the sending device, a decoder on the receiving one.

A compressor is a name (what ``plan.json`` stores), its parameters as JSON numbers (what
calibration produces), and a pair of plain ``nn.Module`` built from both, which export traces
into the two devices' graphs. Each module maps the tuple of tensors crossing the cut to a tuple.

- ``none``: sends the float32 tensors as they are.
- ``quantize``: 8-bit affine quantisation per tensor (the quantisation step of BottleNet++,
  paper 004 §IV, without its learned encoder). Scale and zero point are fixed by calibration on
  sample data: ``q = clamp(round(x / scale) + zp, 0, 255)`` as uint8 on the wire, ``(q - zp) * scale``
  after it. Both ends hold scale and zero point as constants (and ``manifest.json`` as numbers),
  so only the uint8 values travel: ``numel`` bytes per tensor. Inside the calibrated range the
  error is at most ``scale / 2`` per element; outside it values saturate.

- ``bottleneck``: a learned autoencoder followed by ``quantize`` (``bottleneck.py``, paper 004);
  its modules have weights, so ``build_codec`` cannot make them from parameters: pass them to
  ``export.export_bundle(codecs=...)``. For planning it sends 1/64 of the float32 bytes (exact for
  ``reduction=4`` on even feature-map sizes, a close estimate otherwise).

Not built: the distilled bottleneck of paper 002 (a bottleneck trained into the network itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

CompressorName = Literal["none", "quantize", "bottleneck"]
COMPRESSORS: tuple[str, ...] = ("none", "quantize", "bottleneck")
LEARNED: tuple[str, ...] = ("bottleneck",)
_FLOAT32_BYTES = 4
_BOTTLENECK_RATIO = 64  # 1/4 channels x 1/4 positions (stride 2 in 2-D) x 8 of 32 bits


def compressed_bytes(name: str, raw_bytes: float) -> float:
    """Bytes on the wire for a cut whose float32 tensors take ``raw_bytes``.

    Raises:
        ValueError: unknown compressor.
    """
    _check_name(name)
    if name == "none":
        return float(raw_bytes)
    ratio = _FLOAT32_BYTES if name == "quantize" else _BOTTLENECK_RATIO
    return math.ceil(float(raw_bytes) / ratio)


def calibrate(name: str, samples: Sequence[Sequence[torch.Tensor]]) -> dict[str, Any]:
    """The parameters of compressor ``name`` for one cut, from sample tensors crossing it.

    Args:
        name: a compressor name.
        samples: per calibration batch, the tuple of tensors crossing the cut.

    Returns:
        JSON-ready parameters: ``{}`` for ``none``; for ``quantize`` one scale and zero point per tensor,
        ``{"scales": [...], "zero_points": [...]}``.
    """
    _check_name(name)
    if name == "none":
        return {}
    if name in LEARNED:
        raise ValueError(f"{name!r} is learned: use bottleneck.fit_bottleneck and bottleneck.bottleneck_codec")
    if not samples:
        raise ValueError("quantize needs at least one calibration sample")
    scales, zero_points = [], []
    for j in range(len(samples[0])):
        lo = min(0.0, min(float(s[j].min()) for s in samples))  # keep 0 exactly representable
        hi = max(0.0, max(float(s[j].max()) for s in samples))
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        scales.append(scale)
        zero_points.append(int(min(255, max(0, round(-lo / scale)))))
    return {"scales": scales, "zero_points": zero_points}


def build_codec(name: str, params: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """``(encoder, decoder)`` modules of compressor ``name`` with calibrated ``params``.

    Raises:
        ValueError: unknown or learned compressor, or ``quantize`` without its parameters.
    """
    _check_name(name)
    if name == "none":
        return PassThrough(), PassThrough()
    if name in LEARNED:
        raise ValueError(
            f"{name!r} is learned: build it with bottleneck.bottleneck_codec and pass its modules "
            "to export_bundle(codecs=...)"
        )
    if not params.get("scales"):
        raise ValueError("quantize needs calibrated parameters (scales, zero_points); run calibrate first")
    scales = torch.tensor(params["scales"], dtype=torch.float32)
    zero_points = torch.tensor(params["zero_points"], dtype=torch.float32)
    return QuantizeEncoder(scales, zero_points), QuantizeDecoder(scales, zero_points)


class PassThrough(nn.Module):
    """The codec of ``none``: returns the tensors unchanged."""

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(xs)


class _QuantizeParams(nn.Module):
    """Holds one (scale, zero point) per tensor of a cut, as buffers shipped inside the exported graph."""

    def __init__(self, scales: torch.Tensor, zero_points: torch.Tensor) -> None:
        super().__init__()
        self.count = len(scales)  # a plain int: the trace must not read a tensor's length
        self.register_buffer("scales", scales)
        self.register_buffer("zero_points", zero_points)


class QuantizeEncoder(_QuantizeParams):
    """float32 tensors -> uint8 tensors, one (scale, zero point) per tensor."""

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        _check_count(len(xs), self.count)
        return tuple(
            torch.clamp(torch.round(x / self.scales[j]) + self.zero_points[j], 0, 255).to(torch.uint8)
            for j, x in enumerate(xs)
        )


class QuantizeDecoder(_QuantizeParams):
    """uint8 tensors -> float32 tensors: ``(q - zero_point) * scale``."""

    def forward(self, qs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        _check_count(len(qs), self.count)
        return tuple((q.to(torch.float32) - self.zero_points[j]) * self.scales[j] for j, q in enumerate(qs))


def _check_count(got: int, expected: int) -> None:
    if got != expected:
        raise ValueError(f"codec calibrated for {expected} tensors, got {got}")


def _check_name(name: str) -> None:
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; valid: {', '.join(COMPRESSORS)}")
