"""Size of what crosses a cut (a link's latency for it is ``topology.Link.latency_ms``, paper 004 eq. (11))."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: bytes of one float32 value: what a cut sends uncompressed, and one weight in memory
FLOAT32_BYTES = 4
#: bytes of one float32 weight (memory of a layer = weights + output activation)
BYTES_PER_PARAM = FLOAT32_BYTES


def payload_bytes(shape_or_numel: int | Sequence[int], bits: int = 32) -> int:
    """Bytes of a tensor of ``shape_or_numel`` elements at ``bits`` per element (numel × bits / 8, rounded up)."""
    numel = shape_or_numel if isinstance(shape_or_numel, int) else math.prod(shape_or_numel)
    if numel < 0 or bits <= 0:
        raise ValueError(f"numel must be >= 0 and bits > 0, got {numel}, {bits}")
    return math.ceil(numel * bits / 8)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor takes on the wire as it is (all its elements, at its dtype's size)."""
    return tensor.numel() * tensor.element_size()
