"""Multiply-accumulate (MAC) and parameter counts, and op descriptors for latency models.

MACs count only convolutions and linear layers, per sample: a convolution producing
``C_out x spatial`` outputs costs ``C_out * spatial * (C_in / groups) * prod(kernel)`` and a linear
layer ``in_features * out_features``. BatchNorm, activations, pooling and residual adds are
ignored (they are memory-bound and small next to the convolutions; the latency regressor sees
tensor sizes through ``input_numel`` / ``output_numel`` instead). Parameter counts include
BatchNorm's weight and bias (not its running statistics) and the classifier bias.

``op_macs`` and friends compute counts analytically from shapes; ``count_macs`` measures them with
forward hooks on a real module and is the reference the analytic formulas are tested against.

A block grown by network morphisms (`jmsnas.space.morph`) may have a hidden width other than
``in_channels * expansion`` and a skip connection; ``describe_block`` folds the skip's 1x1
projection into the block's counts and names the descriptor ``<op>+add`` / ``<op>+concat``, so a
profile's measurement of the plain op is never taken for it (the regressor estimates it instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from jmsnas.space.arch import ArchSpec, BlockSpec
from jmsnas.space.ops import CANDIDATES, Dims, allowed, conv_output_size

if TYPE_CHECKING:
    from jmsnas.space.spec import SearchSpace

DescriptorKind = Literal["mbconv", "identity", "stem", "head"]


def _conv(cin: int, cout: int, kernel: int, groups: int, out_size: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, params) of a bias-free conv followed by BatchNorm; the kernel spans every axis of out_size."""
    taps = kernel ** len(out_size)
    macs = cout * math.prod(out_size) * (cin // groups) * taps
    return macs, cout * (cin // groups) * taps + 2 * cout


def _op_counts(name: str, cin: int, cout: int, stride: int, in_size: tuple[int, ...],
               hidden: int | None = None) -> tuple[int, int]:
    op = CANDIDATES[name]
    if op.kind == "identity":
        return 0, 0
    assert op.kernel_size is not None and op.expansion is not None
    mid = cin * op.expansion if hidden is None else hidden
    out_size = conv_output_size(in_size, op.kernel_size, stride)
    parts = [
        _conv(cin, mid, 1, 1, in_size),  # conv_pw
        _conv(mid, mid, op.kernel_size, mid, out_size),  # conv_dw
        _conv(mid, cout, 1, 1, out_size),  # conv_pwl
    ]
    return sum(m for m, _ in parts), sum(p for _, p in parts)


def op_macs(name: str, in_channels: int, out_channels: int, stride: int, in_size: tuple[int, ...]) -> int:
    """MACs of candidate ``name`` on one sample.

    Args:
        name: a key of ``CANDIDATES``.
        in_channels: input channels.
        out_channels: output channels.
        stride: the layer's stride.
        in_size: input spatial size, ``(L,)`` or ``(H, W)``.
    """
    return _op_counts(name, in_channels, out_channels, stride, tuple(in_size))[0]


def stem_macs(in_channels: int, out_channels: int, kernel_size: int, stride: int, in_size: tuple[int, ...]) -> int:
    """MACs of the stem convolution on one sample."""
    return _conv(in_channels, out_channels, kernel_size, 1, conv_output_size(tuple(in_size), kernel_size, stride))[0]


def head_macs(in_channels: int, channels: int, num_classes: int, in_size: tuple[int, ...]) -> int:
    """MACs of the head (1x1 conv and classifier) on one sample."""
    return _conv(in_channels, channels, 1, 1, tuple(in_size))[0] + channels * num_classes


class MacCounter:
    """Context manager: the MACs of every convolution and matrix product executed inside it (whole batches).

    The one MAC counter of jmsnas: torch's ``FlopCounterMode`` (a MAC is two of its FLOPs), which sees
    every convolution and linear layer whatever module runs it. Pooling, normalisation and
    element-wise ops are not counted, as in the analytic counts. Entering again adds to ``macs``.

    Args:
        module: the module run inside (kept for reports; the count covers whatever runs).
    """

    def __init__(self, module: nn.Module | None = None) -> None:
        self.module = module
        self.macs = 0
        self._mode: FlopCounterMode | None = None

    def __enter__(self) -> MacCounter:
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._mode is not None
        self._mode.__exit__(*exc)
        self.macs += self._mode.get_total_flops() // 2
        self._mode = None


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Measure the MACs of one forward pass of ``module`` on a zero batch of one in eval mode (``MacCounter``).

    Args:
        module: any module.
        input_shape: input shape without batch.

    Returns:
        MACs per sample (the reference for the analytic counts).
    """
    modes = [(m, m.training) for m in module.modules()]  # each submodule's own mode, restored one by one
    counter = MacCounter(module)
    try:
        module.eval()
        with torch.no_grad(), counter:
            module(torch.zeros(1, *input_shape))
    finally:
        for m, training in modes:
            m.training = training
    return counter.macs


@dataclass(frozen=True)
class OpDescriptor:
    """Everything a latency profiler or regressor needs to know about one layer.

    ``kernel_size`` and ``expansion`` are 0 where they do not apply (identity; head expansion).
    ``hidden_channels`` is the widest internal width: ``in_channels * expansion`` for an MBConv,
    the 1x1 conv width for the head, ``out_channels`` for the stem, ``in_channels`` for identity.
    Counts are per sample.
    """

    op: str
    kind: DescriptorKind
    dims: int
    in_channels: int
    out_channels: int
    hidden_channels: int
    kernel_size: int
    expansion: int
    shortcut: bool
    stride: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    macs: int
    params: int
    input_numel: int
    output_numel: int

    def as_features(self) -> dict[str, float]:
        """The numeric fields (plus a one-hot of ``kind``) as floats, for a regressor."""
        feats = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, bool))}
        for kind in ("mbconv", "identity", "stem", "head"):
            feats[f"kind_{kind}"] = float(self.kind == kind)
        return feats


def describe_op(
    name: str, in_channels: int, out_channels: int, stride: int, in_size: tuple[int, ...], dims: Dims,
    hidden_channels: int | None = None,
) -> OpDescriptor:
    """Descriptor of candidate ``name`` on a layer of this shape (see ``op_macs`` for the arguments).

    ``hidden_channels`` overrides an MBConv's hidden width ``in_channels * expansion``.
    """
    in_size = tuple(in_size)
    if len(in_size) != dims:
        raise ValueError(f"in_size {in_size} does not have {dims} entries")
    if name not in CANDIDATES or not allowed(name, in_channels, out_channels, stride):
        raise ValueError(f"{name!r} is not a candidate allowed on {in_channels} -> {out_channels}, stride {stride}")
    op = CANDIDATES[name]
    hidden = hidden_channels if hidden_channels is not None and op.kind == "mbconv" else None
    macs, params = _op_counts(name, in_channels, out_channels, stride, in_size, hidden)
    out_size = conv_output_size(in_size, op.kernel_size or 1, stride)
    return OpDescriptor(
        op=name, kind=op.kind, dims=dims, in_channels=in_channels, out_channels=out_channels,
        hidden_channels=hidden or in_channels * (op.expansion or 1), kernel_size=op.kernel_size or 0,
        expansion=op.expansion or 0, shortcut=op.shortcut, stride=stride,
        in_size=in_size, out_size=out_size, macs=macs, params=params,
        input_numel=in_channels * math.prod(in_size), output_numel=out_channels * math.prod(out_size),
    )  # fmt: skip


def describe_stem(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, in_size: tuple[int, ...], dims: Dims
) -> OpDescriptor:
    """Descriptor of the stem (op name ``"stem"``)."""
    in_size = tuple(in_size)
    out_size = conv_output_size(in_size, kernel_size, stride)
    macs, params = _conv(in_channels, out_channels, kernel_size, 1, out_size)
    return OpDescriptor(
        op="stem", kind="stem", dims=dims, in_channels=in_channels, out_channels=out_channels,
        hidden_channels=out_channels,
        kernel_size=kernel_size, expansion=0, shortcut=False, stride=stride, in_size=in_size, out_size=out_size,
        macs=macs, params=params,
        input_numel=in_channels * math.prod(in_size), output_numel=out_channels * math.prod(out_size),
    )  # fmt: skip


def describe_head(
    in_channels: int, channels: int, num_classes: int, in_size: tuple[int, ...], dims: Dims
) -> OpDescriptor:
    """Descriptor of the head (op name ``"head"``; ``out_channels`` is ``num_classes``, ``out_size`` is ``()``)."""
    in_size = tuple(in_size)
    conv_macs, conv_params = _conv(in_channels, channels, 1, 1, in_size)
    return OpDescriptor(
        op="head", kind="head", dims=dims, in_channels=in_channels, out_channels=num_classes, hidden_channels=channels,
        kernel_size=1, expansion=0, shortcut=False, stride=1, in_size=in_size, out_size=(),
        macs=conv_macs + channels * num_classes, params=conv_params + channels * num_classes + num_classes,
        input_numel=in_channels * math.prod(in_size), output_numel=num_classes,
    )  # fmt: skip


def describe_block(block: BlockSpec, in_size: tuple[int, ...], dims: Dims,
                   skip_input: tuple[int, tuple[int, ...]] | None = None) -> OpDescriptor:
    """Descriptor of one ``BlockSpec``: its op, with a skip connection's projection folded in.

    Args:
        block: the block.
        in_size: its input spatial size.
        dims: 1 or 2.
        skip_input: ``(channels, spatial size)`` of the output its skip connection reads, when it has one.
    """
    desc = describe_op(block.op, block.in_channels, block.body_out_channels, block.stride, in_size, dims,
                       block.hidden_channels)
    if block.skip_from is None:
        return desc
    if skip_input is None:
        raise ValueError(f"block {block.compact()} has a skip connection: give skip_input")
    channels, size = skip_input
    width = block.out_channels if block.merge == "add" else block.skip_channels
    assert width is not None
    macs, params = _conv(channels, width, 1, 1, desc.out_size)
    return replace(desc, op=f"{block.op}+{block.merge}", out_channels=block.out_channels, macs=desc.macs + macs,
                   params=desc.params + params, input_numel=desc.input_numel + channels * math.prod(size),
                   output_numel=block.out_channels * math.prod(desc.out_size))


def arch_descriptors(spec: ArchSpec) -> list[OpDescriptor]:
    """Descriptors of ``[stem, *blocks, head]`` of ``spec``, in order, with their real shapes."""
    size = tuple(spec.input_shape[1:])
    out = [
        describe_stem(spec.input_shape[0], spec.stem.channels, spec.stem.kernel_size, spec.stem.stride, size, spec.dims)
    ]
    for b in spec.blocks:
        skip = None if b.skip_from is None else (out[b.skip_from].out_channels, out[b.skip_from].out_size)
        out.append(describe_block(b, out[-1].out_size, spec.dims, skip))
    out.append(describe_head(out[-1].out_channels, spec.head.channels, spec.num_classes, out[-1].out_size, spec.dims))
    return out


def arch_macs(spec: ArchSpec) -> list[int]:
    """MACs per sample of ``[stem, *blocks, head]`` of ``spec``."""
    return [d.macs for d in arch_descriptors(spec)]


@dataclass(frozen=True)
class SpaceOps:
    """Every op a search space presents at one input shape: the stem, each layer's candidates, the head."""

    stem: OpDescriptor
    layers: list[list[OpDescriptor]]
    head: OpDescriptor


def describe_space(space: SearchSpace, num_classes: int, input_shape: Sequence[int] | None = None) -> SpaceOps:
    """``SpaceOps`` of ``space`` for a classifier of ``num_classes`` at ``input_shape`` (default: the space's).

    The one description of a search space's ops: the E[T] predictor prices it, the profiler times it.
    """
    shape = space.resolve_input_shape(None if input_shape is None else tuple(input_shape))
    cfg, dims = space.config, space.dims
    stem = describe_stem(shape[0], cfg.stem.channels, cfg.stem.kernel_size, cfg.stem.stride, tuple(shape[1:]), dims)
    layers = [[describe_op(c, s.in_channels, s.out_channels, s.stride, s.in_size, dims) for c in s.candidates]
              for s in space.layers(tuple(shape))]
    head_in, *head_size = space.head_input_shape(tuple(shape)) if layers else (stem.out_channels, *stem.out_size)
    head = describe_head(head_in, cfg.head.channels, num_classes, tuple(head_size), dims)
    return SpaceOps(stem, layers, head)
