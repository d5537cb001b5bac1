"""A discrete architecture (one candidate per searchable layer) and the plain model built from it.

``ArchSpec`` is what the search outputs and what gets deployed: stem, blocks, head and all their
shapes. It round-trips through a plain dict / JSON file (Once-for-All style) and is rebuilt by
``build_model`` into an ``ArchNet``, a plain ``nn.Module`` the user can take away.

Compact block strings (the only place their grammar is written down; timm-like, for logs)::

    ir_k{K}_e{E}_s{S}_c{C}[_sc]   MBConv: kernel K, expansion E, stride S, C output channels,
                                  ``_sc`` when it has the residual shortcut
    id_c{C}                       identity, C channels

``ArchSpec.compact()`` joins the block strings with spaces, e.g.
``ir_k5_e6_s2_c24 ir_k3_e3_s1_c24_sc id_c24``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from jmsnas.errors import ConfigError
from jmsnas.space.ops import CANDIDATES, Dims, Head, Stem, allowed, build_op
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
    """

    op: str
    in_channels: PositiveInt
    out_channels: PositiveInt
    stride: PositiveInt
    kernel_size: int | None
    expansion: int | None
    shortcut: bool

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
        if not allowed(self.op, self.in_channels, self.out_channels, self.stride):
            raise FieldValueError(f"{self.op} needs in_channels == out_channels and stride 1", "op")
        return self

    def compact(self) -> str:
        """The compact block string (grammar in the module docstring)."""
        if self.op == "identity":
            return f"id_c{self.out_channels}"
        sc = "_sc" if self.shortcut else ""
        return f"ir_k{self.kernel_size}_e{self.expansion}_s{self.stride}_c{self.out_channels}{sc}"


class ArchSpec(_Frozen):
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
        return self

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
        """A plain, JSON-ready dict; ``ArchSpec.from_dict`` reverses it."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any, file: str | Path | None = None) -> ArchSpec:
        """Validate a dict made by ``to_dict``.

        Raises:
            ConfigError: naming ``file`` and the bad field.
        """
        return validate_or_raise(cls, data, file=file)

    def save_json(self, path: str | Path) -> None:
        """Write the spec as indented JSON, with its compact block string under ``compact`` for people and logs."""
        Path(path).write_text(json.dumps({**self.to_dict(), "compact": self.compact()}, indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> ArchSpec:
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


class ArchNet(nn.Module):
    """The plain network of an ``ArchSpec``: ``stem`` -> ``blocks`` -> ``head``.

    Args:
        stem: the stem module.
        blocks: the searchable layers' modules, in order.
        head: the head module.
    """

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def layers(self) -> list[nn.Module]:
        """``[stem, *blocks, head]``: the units a model split may cut between."""
        return [self.stem, *self.blocks, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers():
            x = layer(x)
        return x


def build_model(spec: ArchSpec) -> ArchNet:
    """Build the freshly initialised ``ArchNet`` described by ``spec``."""
    stem = Stem(spec.input_shape[0], spec.stem.channels, spec.stem.kernel_size, spec.stem.stride, spec.dims)
    blocks = [build_op(b.op, b.in_channels, b.out_channels, b.stride, spec.dims) for b in spec.blocks]
    last = spec.blocks[-1].out_channels if spec.blocks else spec.stem.channels
    head = Head(last, spec.head.channels, spec.num_classes, spec.head.dropout, spec.dims)
    return ArchNet(stem, blocks, head)
