"""Which ops to time for a search space, how to build them alone, and how to time one.

The profiler times every candidate op of a search space at every input shape the space presents
(the *exact* rows), plus a grid around them (channels and spatial size scaled) so the regressor in
`jmsnas.latency.model` can generalise to other input shapes and widths. Each op is timed in
isolation, in eval mode, after warm-up, as the median of repeated runs (`time_forward`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from jmsnas.space.macs import OpDescriptor, describe_head, describe_op, describe_space, describe_stem
from jmsnas.space.ops import Head, Stem, build_op
from jmsnas.space.spec import SearchSpace

#: Default grid around each exact shape: channel and spatial-size multipliers. Wide enough that a
#: user's other input size (e.g. 28x28 or 64x64 instead of 32x32) or a widened space stays inside it.
CHANNEL_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)
SIZE_SCALES: tuple[float, ...] = (0.5, 1.0, 2.0)
#: Classes of the head when profiling (the linear layer is a negligible part of a head's cost).
PROFILE_NUM_CLASSES = 10


def space_descriptors(space: SearchSpace, input_shape: Sequence[int] | None = None) -> list[OpDescriptor]:
    """Every op the space can present at ``input_shape``: the stem, each allowed candidate of each layer, the head."""
    ops = describe_space(space, PROFILE_NUM_CLASSES, input_shape)
    out = [ops.stem, *(d for layer in ops.layers for d in layer), ops.head]
    return _unique(out)


def scaled(desc: OpDescriptor, channel_scale: float, size_scale: float) -> OpDescriptor:
    """The same op with channels and spatial size scaled (rounded, at least 1)."""

    def ch(c: int) -> int:
        return max(1, round(c * channel_scale))

    size = tuple(max(1, round(s * size_scale)) for s in desc.in_size)
    if desc.kind == "stem":
        return describe_stem(desc.in_channels, ch(desc.out_channels), desc.kernel_size, desc.stride, size, desc.dims)
    if desc.kind == "head":
        return describe_head(ch(desc.in_channels), ch(desc.hidden_channels), desc.out_channels, size, desc.dims)
    return describe_op(desc.op, ch(desc.in_channels), ch(desc.out_channels), desc.stride, size, desc.dims)


def grid_descriptors(exact: Sequence[OpDescriptor], channel_scales: Sequence[float] = CHANNEL_SCALES,
                     size_scales: Sequence[float] = SIZE_SCALES) -> list[OpDescriptor]:
    """The exact ops first, then every scaled variant not already listed."""
    grid = [scaled(d, c, s) for d in exact for c in channel_scales for s in size_scales]
    return _unique([*exact, *grid])


def _unique(descs: Sequence[OpDescriptor]) -> list[OpDescriptor]:
    first: dict[str, OpDescriptor] = {}
    for d in descs:
        first.setdefault(descriptor_key(d), d)
    return list(first.values())


def descriptor_key(desc: OpDescriptor, batch_size: int = 1) -> str:
    """A string that identifies one measurement row (used to resume a profile)."""
    size = "x".join(map(str, desc.in_size))
    return (f"{desc.op}|{desc.dims}|{desc.in_channels}|{desc.out_channels}|{desc.hidden_channels}|"
            f"{desc.kernel_size}|{desc.stride}|{size}|{batch_size}")


def build_module(desc: OpDescriptor) -> nn.Module:
    """A standalone module computing the op a descriptor describes, in eval mode."""
    if desc.kind == "stem":
        module: nn.Module = Stem(desc.in_channels, desc.out_channels, desc.kernel_size, desc.stride, desc.dims)
    elif desc.kind == "head":
        module = Head(desc.in_channels, desc.hidden_channels, desc.out_channels, 0.0, desc.dims)
    else:
        module = build_op(desc.op, desc.in_channels, desc.out_channels, desc.stride, desc.dims)
    return module.eval()


def example_input(desc: OpDescriptor, batch_size: int = 1, device: str | torch.device = "cpu") -> torch.Tensor:
    return torch.randn(batch_size, desc.in_channels, *desc.in_size, device=device)


def log_features(desc: OpDescriptor, batch_size: int = 1) -> dict[str, float]:
    """Regressor features: the descriptor's numbers plus logs of the size-like ones and the batch size."""
    feats = desc.as_features()
    feats["batch_size"] = float(batch_size)
    for key in ("macs", "params", "input_numel", "output_numel"):
        feats[f"log_{key}"] = math.log1p(feats[key] * (batch_size if key != "params" else 1))
    feats["spatial"] = float(math.prod(desc.in_size)) if desc.in_size else 1.0
    return feats
