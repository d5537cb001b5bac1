"""Networks with parallel branches (paper 003's mesh, eq. (2)): the discrete spec and its module.

``BranchedArchSpec`` is to a branched search space (`jmsnas.space.spec`, ``branches:``) what
``ArchSpec`` is to a sequential one: stem, the ``pre`` blocks (run on the chain devices and the
mesh's root), one tuple of blocks per branch (each run on its branch device, all fed the root's
output), the ``merge`` at the join (``concat`` on channels or ``add``), the ``post`` blocks and the
head. It round-trips through JSON (``kind: branched`` tells it from a sequential ``arch.json``) and
``build_branched`` turns it into a ``BranchedNet``, whose ``pre`` starts with the stem and whose
``post`` ends with the head: the layer lists that ``plan.planners.plan_branched`` places and
``export.branched.export_branched_bundle`` cuts.

Compact string: ``pre blocks [branch 0 | branch 1 | ...] post blocks``, each block as in
`jmsnas.space.arch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import PositiveInt, model_validator
from torch import nn

from jmsnas.space.arch import BlockSpec, HeadSpec, SpecFile, StemSpec
from jmsnas.space.candidates import Dims
from jmsnas.space.ops import Head, Stem, build_op
from jmsnas.space.spec import LayerSlot, SearchSpace
from jmsnas.validation import FieldValueError

Merge = Literal["concat", "add"]


def merge_outputs(values: Sequence[torch.Tensor], merge: str) -> torch.Tensor:
    """The join: channel concatenation (dim 1) or the sum of the branch outputs."""
    if merge == "concat":
        return torch.cat(list(values), dim=1)
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


class BranchedNet(nn.Module):
    """``post(merge(branch_1(h), ..., branch_k(h)))`` with ``h = pre(x)``.

    Args:
        pre: layers before the branches.
        branches: per branch, its layers (at least one branch).
        post: layers after the merge.
        merge: ``"concat"`` (channels, dim 1) or ``"add"``.
    """

    def __init__(self, pre: Sequence[nn.Module], branches: Sequence[Sequence[nn.Module]], post: Sequence[nn.Module],
                 merge: Merge = "concat") -> None:
        super().__init__()
        if not branches:
            raise ValueError("a branched network needs at least one branch")
        if merge not in ("concat", "add"):
            raise ValueError(f"merge must be 'concat' or 'add', got {merge!r}")
        self.pre = nn.ModuleList(pre)
        self.branches = nn.ModuleList(nn.ModuleList(b) for b in branches)
        self.post = nn.ModuleList(post)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.pre:
            x = layer(x)
        outs = []
        for branch in self.branches:
            h = x
            for layer in branch:
                h = layer(h)
            outs.append(h)
        h = merge_outputs(outs, self.merge)
        for layer in self.post:
            h = layer(h)
        return h


def _chain(blocks: Sequence[BlockSpec], channels: int, where: str) -> int:
    for i, block in enumerate(blocks):
        if block.in_channels != channels:
            raise FieldValueError(f"must equal the previous layer's output channels {channels}",
                                  f"{where}[{i}].in_channels")
        if block.skip_from is not None:
            raise FieldValueError("skip connections are for sequential networks (morphism search)",
                                  f"{where}[{i}].skip_from")
        channels = block.out_channels
    return channels


class BranchedArchSpec(SpecFile):
    """A complete discrete network with parallel branches (see the module docstring)."""

    kind: Literal["branched"] = "branched"
    dims: Dims
    input_shape: tuple[PositiveInt, ...]
    num_classes: PositiveInt
    stem: StemSpec
    pre: tuple[BlockSpec, ...]
    branches: tuple[tuple[BlockSpec, ...], ...]
    merge: Merge
    post: tuple[BlockSpec, ...]
    head: HeadSpec

    @model_validator(mode="after")
    def _chained(self) -> BranchedArchSpec:
        if len(self.input_shape) != self.dims + 1:
            raise FieldValueError(f"dims {self.dims} needs {self.dims + 1} entries", "input_shape")
        if not self.branches:
            raise FieldValueError("needs at least one branch", "branches")
        root = _chain(self.pre, self.stem.channels, "pre")
        ends = [_chain(b, root, f"branches[{i}]") for i, b in enumerate(self.branches)]
        strides = [math.prod(blk.stride for blk in b) for b in self.branches]
        for i in range(1, len(self.branches)):
            if strides[i] != strides[0]:
                raise FieldValueError(f"strides by {strides[i]}, branch 0 by {strides[0]}: one resolution is needed "
                                      "to merge", f"branches[{i}]")
            if self.merge == "add" and ends[i] != ends[0]:
                raise FieldValueError(f"merge 'add' needs equal widths: {ends[i]} vs {ends[0]}", f"branches[{i}]")
        _chain(self.post, self.join_channels, "post")
        return self

    @property
    def join_channels(self) -> int:
        """Channels of the merged branch outputs."""
        root = self.pre[-1].out_channels if self.pre else self.stem.channels
        ends = [b[-1].out_channels if b else root for b in self.branches]
        return sum(ends) if self.merge == "concat" else ends[0]

    @property
    def blocks(self) -> tuple[BlockSpec, ...]:
        """Every searchable block in the search space's slot order: pre, branch 0, branch 1, ..., post."""
        return (*self.pre, *(b for branch in self.branches for b in branch), *self.post)

    @property
    def choices(self) -> list[str]:
        """The candidate name of every block, in slot order."""
        return [b.op for b in self.blocks]

    @classmethod
    def from_choices(cls, space: SearchSpace, choices: Sequence[str], num_classes: int,
                     input_shape: tuple[int, ...] | None = None) -> BranchedArchSpec:
        """The spec that picks ``choices[n]`` on slot n of the branched ``space``.

        Raises:
            ValueError: not a branched space, wrong number of choices, or a choice not allowed on its layer.
        """
        if not space.is_branched:
            raise ValueError(f"search space {space.config.name!r} has no branches; use ArchSpec.from_choices")
        slots: list[LayerSlot] = space.layers(input_shape)
        if len(choices) != len(slots):
            raise ValueError(f"expected {len(slots)} choices (one per searchable layer), got {len(choices)}")
        parts: dict[str, list[BlockSpec]] = {}
        for slot, name in zip(slots, choices, strict=True):
            if name not in slot.candidates:
                raise ValueError(f"layer {slot.index}: {name!r} is not allowed; valid: {', '.join(slot.candidates)}")
            parts.setdefault(slot.part, []).append(BlockSpec.of(name, slot.in_channels, slot.out_channels,
                                                                slot.stride))
        cfg = space.config
        return cls(dims=cfg.dims, input_shape=space.resolve_input_shape(input_shape), num_classes=num_classes,
                   stem=StemSpec(**cfg.stem.model_dump()), pre=tuple(parts.get("pre", ())),
                   branches=tuple(tuple(parts.get(f"branch{i}", ())) for i in range(space.num_branches)),
                   merge=cfg.merge, post=tuple(parts.get("post", ())), head=HeadSpec(**cfg.head.model_dump()))

    def compact(self) -> str:
        """``pre [branch 0 | branch 1 | ...] post``, block strings as in `jmsnas.space.arch`."""
        pre = " ".join(b.compact() for b in self.pre)
        branches = " | ".join(" ".join(b.compact() for b in branch) for branch in self.branches)
        post = " ".join(b.compact() for b in self.post)
        return " ".join(s for s in (pre, f"[{branches}]", post) if s)


def build_branched(spec: BranchedArchSpec) -> BranchedNet:
    """A fresh ``BranchedNet`` of ``spec`` (``pre`` starts with the stem, ``post`` ends with the head)."""

    def blocks(specs: Sequence[BlockSpec]) -> list[nn.Module]:
        return [build_op(b.op, b.in_channels, b.out_channels, b.stride, spec.dims, b.hidden_channels) for b in specs]

    stem = Stem(spec.input_shape[0], spec.stem.channels, spec.stem.kernel_size, spec.stem.stride, spec.dims)
    last = spec.post[-1].out_channels if spec.post else spec.join_channels
    head = Head(last, spec.head.channels, spec.num_classes, spec.head.dropout, spec.dims)
    return BranchedNet([stem, *blocks(spec.pre)], [blocks(b) for b in spec.branches], [*blocks(spec.post), head],
                       spec.merge)


def branched_descriptors(spec: BranchedArchSpec) -> tuple[list, list[list], list]:
    """The layers' descriptors for the planner: ``([stem, *pre], [[...] per branch], [*post, head])``."""
    from jmsnas.space.macs import describe_block, describe_head, describe_stem

    size = tuple(spec.input_shape[1:])
    pre = [describe_stem(spec.input_shape[0], spec.stem.channels, spec.stem.kernel_size, spec.stem.stride, size,
                         spec.dims)]
    for b in spec.pre:
        pre.append(describe_block(b, pre[-1].out_size, spec.dims))
    branches = []
    for branch in spec.branches:
        ops, at = [], pre[-1].out_size
        for b in branch:
            ops.append(describe_block(b, at, spec.dims))
            at = ops[-1].out_size
        branches.append(ops)
    at = branches[0][-1].out_size if branches[0] else pre[-1].out_size
    post = []
    for b in spec.post:
        post.append(describe_block(b, at, spec.dims))
        at = post[-1].out_size
    last = spec.post[-1].out_channels if spec.post else spec.join_channels
    post.append(describe_head(last, spec.head.channels, spec.num_classes, at, spec.dims))
    return pre, branches, post
