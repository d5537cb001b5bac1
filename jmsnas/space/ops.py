"""Modules of the candidate operations (paper 003, Sec. III-A), stem and head; 1-D and 2-D.

The candidates, their name grammar and where each is allowed are in `jmsnas.space.candidates` (no
torch, so reading a search space stays cheap); they are re-exported here. Convolutions use
``padding = kernel_size // 2`` and no bias (a BatchNorm follows each one).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from jmsnas.space.candidates import (  # noqa: F401 - re-exported: ops is where modules look them up
    CANDIDATES,
    EXPANSIONS,
    KERNEL_SIZES,
    CandidateOp,
    Dims,
    OpKind,
    allowed,
    conv_output_size,
)


def conv_cls(dims: Dims) -> type[nn.Conv1d] | type[nn.Conv2d]:
    """The convolution class for ``dims`` (1 -> Conv1d, 2 -> Conv2d)."""
    if dims == 1:
        return nn.Conv1d
    if dims == 2:
        return nn.Conv2d
    raise ValueError(f"dims must be 1 or 2, got {dims!r}")


def bn_cls(dims: Dims) -> type[nn.BatchNorm1d] | type[nn.BatchNorm2d]:
    """The batch-norm class for ``dims`` (1 -> BatchNorm1d, 2 -> BatchNorm2d)."""
    if dims == 1:
        return nn.BatchNorm1d
    if dims == 2:
        return nn.BatchNorm2d
    raise ValueError(f"dims must be 1 or 2, got {dims!r}")


class MBConv(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, kxk depthwise, 1x1 linear projection.

    Layer names follow timm's ``InvertedResidual``: ``conv_pw``/``bn1``, ``conv_dw``/``bn2``,
    ``conv_pwl``/``bn3``; ReLU6 after the first two, none after the projection.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd depthwise kernel size.
        expansion: expansion ratio; the hidden width is ``in_channels * expansion``.
        stride: stride of the depthwise convolution.
        shortcut: add the input to the output (needs ``stride == 1`` and equal channels).
        dims: 1 for signals, 2 for images.
        hidden_channels: the hidden width when it is not ``in_channels * expansion`` (a network
            morphism widened it, `jmsnas.space.morph`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        expansion: int,
        stride: int,
        shortcut: bool,
        dims: Dims,
        hidden_channels: int | None = None,
    ) -> None:
        super().__init__()
        if shortcut and (stride != 1 or in_channels != out_channels):
            raise ValueError(
                f"shortcut needs stride 1 and in_channels == out_channels, "
                f"got stride {stride}, channels {in_channels} -> {out_channels}"
            )
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        conv, bn = conv_cls(dims), bn_cls(dims)
        mid = in_channels * expansion if hidden_channels is None else hidden_channels
        self.shortcut = shortcut
        self.conv_pw = conv(in_channels, mid, 1, bias=False)
        self.bn1 = bn(mid)
        self.act1 = nn.ReLU6()
        self.conv_dw = conv(mid, mid, kernel_size, stride, padding=kernel_size // 2, groups=mid, bias=False)
        self.bn2 = bn(mid)
        self.act2 = nn.ReLU6()
        self.conv_pwl = conv(mid, out_channels, 1, bias=False)
        self.bn3 = bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.shortcut else y


class Identity(nn.Module):
    """The ``identity`` candidate: returns its input (skips the layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def build_op(name: str, in_channels: int, out_channels: int, stride: int, dims: Dims,
             hidden_channels: int | None = None) -> nn.Module:
    """Build candidate ``name`` for one layer.

    Args:
        name: a key of ``CANDIDATES``.
        in_channels: input channels.
        out_channels: output channels.
        stride: the layer's stride.
        dims: 1 for signals, 2 for images.
        hidden_channels: an MBConv's hidden width when it is not ``in_channels * expansion``.

    Raises:
        ValueError: unknown name, or the candidate is not ``allowed`` on this layer.
    """
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; valid: {', '.join(CANDIDATES)}")
    if not allowed(name, in_channels, out_channels, stride):
        raise ValueError(
            f"candidate {name!r} needs in_channels == out_channels and stride 1, "
            f"got {in_channels} -> {out_channels}, stride {stride}"
        )
    op = CANDIDATES[name]
    if op.kind == "identity":
        return Identity()
    assert op.kernel_size is not None and op.expansion is not None
    return MBConv(in_channels, out_channels, op.kernel_size, op.expansion, stride, op.shortcut, dims, hidden_channels)


class SkipProjection(nn.Module):
    """The branch of a skip connection: 1x1 ``conv`` (strided to the target's resolution) -> ``bn``.

    A 1x1 convolution with stride ``s`` gives ``(L - 1) // s + 1`` outputs, which is what a chain of
    padded odd-kernel convolutions whose strides multiply to ``s`` gives, so one projection reaches
    any later block.

    Args:
        in_channels: channels of the earlier output it reads.
        out_channels: channels it adds to (or concatenates onto) the block's output.
        stride: product of the strides between the two points.
        dims: 1 for signals, 2 for images.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dims: Dims) -> None:
        super().__init__()
        self.conv = conv_cls(dims)(in_channels, out_channels, 1, stride, bias=False)
        self.bn = bn_cls(dims)(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MergeBlock(nn.Module):
    """A block joined by a skip connection from an earlier layer: ``body(x)`` merged with ``skip(earlier)``.

    ``merge="add"`` adds the projection to the body's output; ``merge="concat"`` appends its
    channels after the body's (paper 000 / Elsken et al.'s "add" and "concatenate" morphisms).

    Args:
        body: the block itself (an MBConv or the identity).
        skip: the projection of the earlier output.
        merge: ``"add"`` or ``"concat"``.
    """

    def __init__(self, body: nn.Module, skip: SkipProjection, merge: Literal["add", "concat"]) -> None:
        super().__init__()
        self.body = body
        self.skip = skip
        self.merge = merge

    def forward(self, x: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        s = self.skip(earlier)
        return y + s if self.merge == "add" else torch.cat([y, s], dim=1)


class Stem(nn.Module):
    """First, fixed layer: ``conv`` (k, stride, padding k//2) -> ``bn`` -> ReLU6.

    Args:
        in_channels: input channels (e.g. 1 for MNIST-1D, 3 for RGB).
        out_channels: stem width.
        kernel_size: odd kernel size.
        stride: stride.
        dims: 1 for signals, 2 for images.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, dims: Dims) -> None:
        super().__init__()
        self.conv = conv_cls(dims)(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = bn_cls(dims)(out_channels)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Head(nn.Module):
    """Last, fixed layer: 1x1 ``conv`` -> ``bn`` -> ReLU6 -> global average pool -> dropout -> ``classifier``.

    Args:
        in_channels: channels from the last block.
        channels: width of the 1x1 convolution.
        num_classes: classifier outputs.
        dropout: dropout probability before the classifier (0 disables it).
        dims: 1 for signals, 2 for images.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float, dims: Dims) -> None:
        super().__init__()
        self.conv = conv_cls(dims)(in_channels, channels, 1, bias=False)
        self.bn = bn_cls(dims)(channels)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.bn(self.conv(x))))
        return self.classifier(self.dropout(self.flatten(x)))
