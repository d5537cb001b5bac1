"""A discrete architecture (one candidate per searchable layer) and the plain model built from it.

``ArchSpec`` is what the search outputs and what gets deployed: stem, blocks, head and all their
shapes. It round-trips through a plain dict / JSON file (Once-for-All style) and is rebuilt by
``build_model`` into an ``ArchNet``, a plain ``nn.Module`` the user can take away.

Compact block strings (the only place their grammar is written down; timm-like, for logs)::

    ir_k{K}_e{E}_s{S}_c{C}[_sc][_h{H}][_add{J}|_cat{J}c{N}]
                                  MBConv: kernel K, expansion E, stride S, C output channels,
                                  ``_sc`` when it has the residual shortcut
    id_c{C}[_add{J}]              identity, C channels

    optional suffixes (networks grown by network morphisms, `jmsnas.space.morph`):
    _h{H}        hidden width H instead of ``in_channels * E`` (widened)
    _add{J}      a skip connection from layer J (0 is the stem, j >= 1 block j - 1) is added to
                 the output, through a 1x1 projection strided to this block's resolution
    _cat{J}c{N}  the same projection, with N channels, is concatenated after the block's own
                 ``C - N`` channels (C counts both)

``ArchSpec.compact()`` joins the block strings with spaces, e.g.
``ir_k5_e6_s2_c24 ir_k3_e3_s1_c24_sc id_c24`` or, grown by morphisms,
``ir_k3_e3_s1_c12_h54 ir_k5_e3_s1_c12_sc_add0 ir_k3_e3_s2_c24_cat1c8``.

Skip connections are fields of the block they end in (``skip_from``, ``merge``, ``skip_channels``),
not a graph: the network stays an ordered list of layers ``[stem, *blocks, head]``, which is what
the latency models (one descriptor per layer) and the split planner (contiguous layers per device)
work on; a skip only adds the tensor it carries to every cut it crosses. All these fields are
optional, so an ``arch.json`` written before them loads unchanged, and a network without them
writes the same file as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from jmsnas.errors import ConfigError
from jmsnas.io import write_json
from jmsnas.space.ops import CANDIDATES, Dims, Head, MergeBlock, SkipProjection, Stem, allowed, build_op
from jmsnas.space.spec import SearchSpace
from jmsnas.validation import FieldValueError, validate_or_raise


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StemSpec(_Frozen):
    """The stem: ``channels`` out, ``kernel_size``, ``stride`` (input channels come from ``input_shape``)."""

    channels: PositiveInt
    kernel_size: PositiveInt
    stride: PositiveInt


class HeadSpec(_Frozen):
    """The head: 1x1 conv to ``channels``, pooling, ``dropout``, classifier."""

    channels: PositiveInt
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class BlockSpec(_Frozen):
    """One searchable layer with its chosen candidate.

    ``kernel_size``, ``expansion`` and ``shortcut`` repeat what ``op`` says (so that the JSON file
    reads on its own) and are checked against it; use ``BlockSpec.of`` to fill them in.

    The last four fields are optional (networks grown by `jmsnas.space.morph`):
    ``hidden_channels`` overrides an MBConv's hidden width ``in_channels * expansion``;
    ``skip_from`` names an earlier layer (0: the stem, j >= 1: block j - 1) whose output joins this
    block's output through a 1x1 projection, ``merge`` says how (``"add"``, or ``"concat"`` with
    ``skip_channels`` channels appended after the block's own ``out_channels - skip_channels``).
    """

    op: str
    in_channels: PositiveInt
    out_channels: PositiveInt
    stride: PositiveInt
    kernel_size: int | None
    expansion: int | None
    shortcut: bool
    hidden_channels: PositiveInt | None = None
    skip_from: NonNegativeInt | None = None
    merge: Literal["add", "concat"] = "add"
    skip_channels: PositiveInt | None = None

    @classmethod
    def of(cls, op: str, in_channels: int, out_channels: int, stride: int) -> BlockSpec:
        """Block for candidate ``op`` (a key of ``CANDIDATES``) on a layer of this shape."""
        cand = CANDIDATES[op]
        return cls(
            op=op,
            in_channels=in_channels,
            out_channels=out_channels,
            stride=stride,
            kernel_size=cand.kernel_size,
            expansion=cand.expansion,
            shortcut=cand.shortcut,
        )

    @model_validator(mode="after")
    def _matches_candidate(self) -> BlockSpec:
        cand = CANDIDATES.get(self.op)
        if cand is None:
            raise FieldValueError(f"unknown candidate {self.op!r}; valid: {', '.join(CANDIDATES)}", "op")
        for field in ("kernel_size", "expansion", "shortcut"):
            if getattr(self, field) != getattr(cand, field):
                raise FieldValueError(f"{self.op} has {field} {getattr(cand, field)!r}", field)
        self._check_skip(cand.kind)
        if not allowed(self.op, self.in_channels, self.body_out_channels, self.stride):
            raise FieldValueError(f"{self.op} needs in_channels == out_channels and stride 1", "op")
        if self.hidden_channels is not None and cand.kind != "mbconv":
            raise FieldValueError("only an MBConv has a hidden width", "hidden_channels")
        return self

    def _check_skip(self, kind: str) -> None:
        if self.skip_from is None:
            if self.merge != "add" or self.skip_channels is not None:
                raise FieldValueError("merge and skip_channels need skip_from", "skip_from")
            return
        if self.merge == "add" and self.skip_channels is not None:
            raise FieldValueError("an added skip has out_channels channels; skip_channels is for concat",
                                  "skip_channels")
        if self.merge == "concat":
            if self.skip_channels is None or self.skip_channels >= self.out_channels:
                raise FieldValueError(f"concat needs 0 < skip_channels < out_channels ({self.out_channels})",
                                      "skip_channels")
            if kind != "mbconv" or self.shortcut:
                raise FieldValueError("concat needs an MBConv without shortcut (its output must not be its input)",
                                      "merge")

    @property
    def body_out_channels(self) -> int:
        """Channels the block's own op produces (``out_channels`` less what a concatenated skip adds)."""
        return self.out_channels - (self.skip_channels or 0) if self.merge == "concat" else self.out_channels

    @property
    def hidden(self) -> int | None:
        """An MBConv's hidden width; None for the identity."""
        if self.expansion is None:
            return None
        return self.hidden_channels if self.hidden_channels is not None else self.in_channels * self.expansion

    @property
    def passes_through(self) -> bool:
        """Whether the output carries the input's channels as they are (identity, shortcut; not concat)."""
        return (self.op == "identity" or self.shortcut) and self.merge != "concat"

    def compact(self) -> str:
        """The compact block string (grammar in the module docstring)."""
        if self.skip_from is None:
            skip = ""
        elif self.merge == "add":
            skip = f"_add{self.skip_from}"
        else:
            skip = f"_cat{self.skip_from}c{self.skip_channels}"
        if self.op == "identity":
            return f"id_c{self.out_channels}{skip}"
        sc = "_sc" if self.shortcut else ""
        h = f"_h{self.hidden_channels}" if self.hidden_channels is not None else ""
        return f"ir_k{self.kernel_size}_e{self.expansion}_s{self.stride}_c{self.out_channels}{sc}{h}{skip}"


class SpecFile(_Frozen):
    """The file side of a network spec: ``from_dict``, ``save_json`` and ``load_json`` around its ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict; ``from_dict`` reverses it."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any, file: str | Path | None = None):
        """Validate a dict made by ``to_dict``.

        Raises:
            ConfigError: naming ``file`` and the bad field.
        """
        return validate_or_raise(cls, data, file=file)

    def save_json(self, path: str | Path) -> None:
        """Write the spec as indented JSON, with its compact block string under ``compact`` for people and logs.

        Written atomically (`jmsnas.io.write_json`): a reader never sees half a file.
        """
        write_json(path, {**self.to_dict(), "compact": self.compact()}, newline=True)

    @classmethod
    def load_json(cls, path: str | Path):
        """Read a file written by ``save_json``.

        Raises:
            ConfigError: missing file, invalid JSON, or a bad spec.
        """
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read file ({exc.strerror or exc})", file=path) from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=path) from exc
        if isinstance(data, dict):
            data.pop("compact", None)  # informational; the fields are the spec
        return cls.from_dict(data, file=path)


class ArchSpec(SpecFile):
    """A complete discrete network.

    Args:
        dims: 1 for signals, 2 for images.
        input_shape: input shape without batch, ``(C, L)`` or ``(C, H, W)``.
        num_classes: classifier outputs.
        stem: the stem.
        blocks: the searchable layers, in order, each with its chosen candidate.
        head: the head.
    """

    dims: Dims
    input_shape: tuple[PositiveInt, ...]
    num_classes: PositiveInt
    stem: StemSpec
    blocks: tuple[BlockSpec, ...]
    head: HeadSpec

    @model_validator(mode="after")
    def _chained(self) -> ArchSpec:
        if len(self.input_shape) != self.dims + 1:
            raise FieldValueError(f"dims {self.dims} needs {self.dims + 1} entries", "input_shape")
        channels = self.stem.channels
        for i, block in enumerate(self.blocks):
            if block.in_channels != channels:
                raise FieldValueError(
                    f"must equal the previous layer's output channels {channels}", f"blocks[{i}].in_channels"
                )
            channels = block.out_channels
            if block.skip_from is not None and block.skip_from > i:
                raise FieldValueError(f"must name an earlier layer: 0 (the stem) to {i}", f"blocks[{i}].skip_from")
        return self

    @property
    def is_sequential(self) -> bool:
        """True when no block has a skip connection: the layers form a plain chain."""
        return all(b.skip_from is None for b in self.blocks)

    def channels_at(self, layer: int) -> int:
        """Output channels of layer ``layer`` of ``[stem, *blocks]`` (0: the stem)."""
        return self.stem.channels if layer == 0 else self.blocks[layer - 1].out_channels

    def skip_stride(self, block: int) -> int:
        """Stride of block ``block``'s skip projection: the product of the strides it skips."""
        source = self.blocks[block].skip_from
        if source is None:
            raise ValueError(f"block {block} has no skip connection")
        return math.prod(b.stride for b in self.blocks[source:block + 1])

    @classmethod
    def from_choices(
        cls, space: SearchSpace, choices: list[str], num_classes: int, input_shape: tuple[int, ...] | None = None
    ) -> ArchSpec:
        """Build the spec that picks ``choices[n]`` on layer n of ``space``.

        Args:
            space: the search space.
            choices: one candidate name per searchable layer.
            num_classes: classifier outputs.
            input_shape: input shape without batch; default: the search space's.

        Raises:
            ValueError: wrong number of choices, or a choice not allowed on its layer.
        """
        slots = space.layers(input_shape)
        if len(choices) != len(slots):
            raise ValueError(f"expected {len(slots)} choices (one per searchable layer), got {len(choices)}")
        blocks = []
        for slot, name in zip(slots, choices, strict=True):
            if name not in slot.candidates:
                raise ValueError(f"layer {slot.index}: {name!r} is not allowed; valid: {', '.join(slot.candidates)}")
            blocks.append(BlockSpec.of(name, slot.in_channels, slot.out_channels, slot.stride))
        cfg = space.config
        return cls(
            dims=cfg.dims,
            input_shape=space.resolve_input_shape(input_shape),
            num_classes=num_classes,
            stem=StemSpec(**cfg.stem.model_dump()),
            blocks=tuple(blocks),
            head=HeadSpec(**cfg.head.model_dump()),
        )

    @property
    def choices(self) -> list[str]:
        """The candidate name of every block."""
        return [b.op for b in self.blocks]

    def compact(self) -> str:
        """Block strings joined by spaces (grammar in the module docstring)."""
        return " ".join(b.compact() for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict; ``ArchSpec.from_dict`` reverses it.

        The optional block fields are left out where they hold their defaults, so a network
        without morphism-grown parts writes exactly the file it did before they existed.
        """
        data = self.model_dump(mode="json")
        for block in data["blocks"]:
            for name in _OPTIONAL_BLOCK_FIELDS:
                if block[name] == BlockSpec.model_fields[name].default:
                    del block[name]
        return data


_OPTIONAL_BLOCK_FIELDS = ("hidden_channels", "skip_from", "merge", "skip_channels")


class ArchNet(nn.Module):
    """The plain network of an ``ArchSpec``: ``stem`` -> ``blocks`` -> ``head``.

    A block with a skip connection is a ``MergeBlock`` called as ``block(x, earlier)``, where
    ``earlier`` is the output of layer ``sources[i]`` of ``[stem, *blocks]``. ``layers()`` are then
    still the units to cut between, but a cut crossing a skip carries two tensors: split such a
    network with ``jmsnas.export.split.split_graph`` (``torch.fx`` traces it), not ``split_archnet``.

    Args:
        stem: the stem module.
        blocks: the searchable layers' modules, in order.
        head: the head module.
        sources: per block, the layer its skip connection starts at, or None; omitted: no skips.
    """

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module,
                 sources: Sequence[int | None] | None = None) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.sources = tuple(sources) if sources is not None else (None,) * len(blocks)
        if len(self.sources) != len(blocks):
            raise ValueError(f"need one source per block ({len(blocks)}), got {len(self.sources)}")
        self._kept = frozenset(s for s in self.sources if s is not None)

    def layers(self) -> list[nn.Module]:
        """``[stem, *blocks, head]``: the units a model split may cut between."""
        return [self.stem, *self.blocks, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._kept:
            for layer in self.layers():
                x = layer(x)
            return x
        x = self.stem(x)
        kept = {0: x} if 0 in self._kept else {}  # only the outputs a later skip reads
        for i, block in enumerate(self.blocks):
            source = self.sources[i]
            x = block(x) if source is None else block(x, kept[source])
            if i + 1 in self._kept:
                kept[i + 1] = x
        return self.head(x)


def build_block(spec: ArchSpec, index: int) -> nn.Module:
    """The module of block ``index`` of ``spec`` (a ``MergeBlock`` when it has a skip connection)."""
    b = spec.blocks[index]
    body = build_op(b.op, b.in_channels, b.body_out_channels, b.stride, spec.dims, b.hidden_channels)
    if b.skip_from is None:
        return body
    width = b.out_channels if b.merge == "add" else b.skip_channels
    skip = SkipProjection(spec.channels_at(b.skip_from), width, spec.skip_stride(index), spec.dims)
    return MergeBlock(body, skip, b.merge)


def build_model(spec: ArchSpec) -> ArchNet:
    """Build the freshly initialised ``ArchNet`` described by ``spec``."""
    stem = Stem(spec.input_shape[0], spec.stem.channels, spec.stem.kernel_size, spec.stem.stride, spec.dims)
    blocks = [build_block(spec, i) for i in range(len(spec.blocks))]
    last = spec.blocks[-1].out_channels if spec.blocks else spec.stem.channels
    head = Head(last, spec.head.channels, spec.num_classes, spec.head.dropout, spec.dims)
    return ArchNet(stem, blocks, head, [b.skip_from for b in spec.blocks])
