"""Search-space files: the fixed skeleton of the supernet (paper 003, Sec. III-A, Fig. 4(a)).

A search space fixes the stem, the head, and N searchable layers grouped in stages; each layer
picks one of R candidates (``jmsnas.space.ops``). File format, by example::

    name: example_1d
    dims: 1                      # 1: signals [C, L]; 2: images [C, H, W]
    input_shape: [1, 16]         # default input shape (without batch) for shapes and profiling
    stem: {channels: 4, kernel_size: 3, stride: 1}   # kernel_size must be odd
    stages:                      # the first layer of a stage uses the stage stride, the rest stride 1
      - {channels: 4, stride: 1, layers: 1}          # stride: 1 or 2
      - {channels: 8, stride: 2, layers: 2}
    head: {channels: 16, dropout: 0.0}     # dropout is optional (default 0)
    candidates: [mb_k3_e3, mb_k3_e3_sc, identity]   # optional; default: all 13

A *branched* space, for a mesh (paper 003 Fig. 2(b), eq. (2)), adds parallel branches after the
stages: ``stages`` are then the part before the branches (chain devices and the mesh's root), each
branch runs on one branch device (in the topology's ``branches`` order) and has its own stages and
optionally its own candidates, their outputs are merged at the join, and ``post`` stages follow::

    branches:                    # one per branch device; each is fed the root's output
      - stages: [{channels: 8, stride: 2, layers: 2}]
        candidates: [mb_k3_e3, mb_k5_e3, identity]   # optional; default: the space's
      - stages: [{channels: 8, stride: 2, layers: 2}]
    merge: concat                # concat (channels add up) or add (equal channels)
    post: [{channels: 16, stride: 1, layers: 1}]     # optional: searchable layers after the join

Every branch must end at the same resolution (the same product of strides); ``add`` also needs the
same channels. Searchable layers are numbered pre, branch 0, branch 1, ..., post (``LayerSlot.part``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from jmsnas.space.candidates import CANDIDATES, Dims, allowed, conv_output_size
from jmsnas.validation import FieldValueError, load_yaml_mapping, validate_or_raise


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StemConfig(_Strict):
    """The fixed first convolution: ``channels`` out, odd ``kernel_size``, ``stride``."""

    channels: PositiveInt
    kernel_size: PositiveInt = 3
    stride: PositiveInt = 1

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 != 1:
            raise ValueError(f"kernel_size must be odd (padding is kernel_size // 2), got {v}")
        return v


class StageConfig(_Strict):
    """``layers`` searchable layers of width ``channels``; the first one uses ``stride``."""

    channels: PositiveInt
    stride: Literal[1, 2] = 1
    layers: PositiveInt = 1


class HeadConfig(_Strict):
    """The fixed head: 1x1 conv to ``channels``, pooling, ``dropout``, linear classifier."""

    channels: PositiveInt
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


def _check_candidates(v: list[str]) -> list[str]:
    for i, name in enumerate(v):
        if name not in CANDIDATES:
            raise FieldValueError(f"unknown candidate {name!r}; valid: {', '.join(CANDIDATES)}", f"[{i}]")
        if name in v[:i]:
            raise FieldValueError(f"candidate {name!r} is listed twice", f"[{i}]")
    return v


class BranchConfig(_Strict):
    """One parallel branch of a branched space: its stages and, optionally, its own candidates."""

    stages: list[StageConfig] = Field(min_length=1)
    candidates: list[str] | None = Field(None, min_length=1)

    @field_validator("candidates")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_candidates(v)


class SearchSpaceConfig(_Strict):
    """The contents of a search-space YAML file (see the module docstring)."""

    name: str
    dims: Dims
    input_shape: list[PositiveInt]
    stem: StemConfig
    stages: list[StageConfig] = Field(min_length=1)
    head: HeadConfig
    candidates: list[str] = Field(default_factory=lambda: list(CANDIDATES), min_length=1)
    branches: list[BranchConfig] | None = Field(None, min_length=1)
    merge: Literal["concat", "add"] = "concat"
    post: list[StageConfig] = Field(default_factory=list)

    @field_validator("candidates")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        return _check_candidates(v)

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpaceConfig:
        if len(self.input_shape) != self.dims + 1:
            want = "[C, L]" if self.dims == 1 else "[C, H, W]"
            raise FieldValueError(f"dims {self.dims} needs input_shape {want}, got {self.input_shape}", "input_shape")
        if self.branches is None and (self.post or self.merge != "concat"):
            raise FieldValueError("'post' and 'merge' belong to a branched space: add 'branches' or remove them",
                                  "post" if self.post else "merge")
        if self.branches is not None:
            _check_join(self)
        for slot in SearchSpace(self).layers():
            if not slot.candidates:
                raise FieldValueError(
                    f"layer {slot.index} changes shape ({slot.in_channels} -> {slot.out_channels} channels, "
                    f"stride {slot.stride}) but every listed candidate needs an unchanged shape; "
                    "add an MBConv candidate without _sc",
                    "candidates",
                )
        return self


def _check_join(cfg: SearchSpaceConfig) -> None:
    """The branches end at one resolution (and, for ``add``, one width), so their outputs merge."""
    strides = [math.prod(st.stride for st in b.stages) for b in cfg.branches]
    widths = [b.stages[-1].channels for b in cfg.branches]
    for i in range(1, len(cfg.branches)):
        if strides[i] != strides[0]:
            raise FieldValueError(f"branch {i} strides by {strides[i]} in all, branch 0 by {strides[0]}: their "
                                  "outputs must have one resolution to merge", f"branches[{i}].stages")
        if cfg.merge == "add" and widths[i] != widths[0]:
            raise FieldValueError(f"merge 'add' needs equal widths; branch {i} ends with {widths[i]} channels, "
                                  f"branch 0 with {widths[0]} (or use merge: concat)", f"branches[{i}].stages")


@dataclass(frozen=True)
class LayerSlot:
    """One searchable layer of a search space, with the candidates allowed on it.

    Args:
        index: position among the searchable layers (0-based).
        stage: index of the stage it belongs to.
        in_channels: channels entering the layer.
        out_channels: channels leaving the layer.
        stride: the layer's stride.
        in_size: input spatial size, ``(L,)`` or ``(H, W)``.
        out_size: output spatial size.
        candidates: allowed candidate names, in the order of ``SearchSpaceConfig.candidates``.
        part: ``"main"`` in a sequential space; in a branched one ``"pre"``, ``"branch<i>"`` or ``"post"``.
    """

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    candidates: tuple[str, ...]
    part: str = "main"


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space.

    Args:
        config: the parsed file.
        path: where it was loaded from, if anywhere.
    """

    config: SearchSpaceConfig
    path: Path | None = None

    @property
    def dims(self) -> Dims:
        return self.config.dims

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Default input shape without batch: ``(C, L)`` or ``(C, H, W)``."""
        return tuple(self.config.input_shape)

    @property
    def num_layers(self) -> int:
        """Number of searchable layers N (every part of a branched space)."""
        cfg = self.config
        stages = [*cfg.stages, *(st for b in cfg.branches or () for st in b.stages), *cfg.post]
        return sum(stage.layers for stage in stages)

    @property
    def is_branched(self) -> bool:
        """True for a space with parallel branches (a mesh's, eq. (2))."""
        return self.config.branches is not None

    @property
    def num_branches(self) -> int:
        """How many parallel branches (0 for a sequential space)."""
        return len(self.config.branches or ())

    def resolve_input_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """``input_shape`` as a tuple, or the configured one when None; checks it fits ``dims``."""
        shape = self.input_shape if input_shape is None else tuple(input_shape)
        if len(shape) != self.dims + 1:
            raise ValueError(f"input_shape {shape} does not fit dims {self.dims}")
        return shape

    def stem_output_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Shape ``(C, *spatial)`` after the stem, for ``input_shape`` (default: the configured one)."""
        shape = self.resolve_input_shape(input_shape)
        stem = self.config.stem
        return (stem.channels, *conv_output_size(shape[1:], stem.kernel_size, stem.stride))

    def layers(self, input_shape: tuple[int, ...] | None = None) -> list[LayerSlot]:
        """The searchable layers in order (pre, branches, post), with shapes for ``input_shape``."""
        cfg = self.config
        shape = self.stem_output_shape(input_shape)
        slots: list[LayerSlot] = []
        counter = {"stage": 0}

        def run(stages, candidates, shape, part):
            channels, *size = shape
            in_size = tuple(size)
            for stage in stages:
                for i in range(stage.layers):
                    stride = stage.stride if i == 0 else 1
                    out_size = conv_output_size(in_size, 3, stride)  # the same for every odd kernel
                    names = tuple(c for c in candidates if allowed(c, channels, stage.channels, stride))
                    slots.append(LayerSlot(len(slots), counter["stage"], channels, stage.channels, stride, in_size,
                                           out_size, names, part))
                    channels, in_size = stage.channels, out_size
                counter["stage"] += 1
            return (channels, *in_size)

        if cfg.branches is None:
            run(cfg.stages, cfg.candidates, shape, "main")
            return slots
        root = run(cfg.stages, cfg.candidates, shape, "pre")
        ends = [run(b.stages, b.candidates or cfg.candidates, root, f"branch{i}") for i, b in enumerate(cfg.branches)]
        run(cfg.post, cfg.candidates, self._merged(ends), "post")
        return slots

    def _merged(self, ends: list[tuple[int, ...]]) -> tuple[int, ...]:
        channels = sum(e[0] for e in ends) if self.config.merge == "concat" else ends[0][0]
        return (channels, *ends[0][1:])

    def join_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Shape ``(C, *spatial)`` of the merged branch outputs (a branched space only)."""
        if not self.is_branched:
            raise ValueError(f"search space {self.config.name!r} has no branches")
        slots = self.layers(input_shape)
        ends = [next(s for s in reversed(slots) if s.part == f"branch{i}") for i in range(self.num_branches)]
        return self._merged([(s.out_channels, *s.out_size) for s in ends])

    def head_input_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Shape ``(C, *spatial)`` entering the head."""
        last = self.layers(input_shape)[-1]
        if last.part.startswith("branch"):  # no post layers: the head takes the merged outputs
            return self.join_shape(input_shape)
        return (last.out_channels, *last.out_size)


def load_search_space(path: str | Path) -> SearchSpace:
    """Load and validate a search-space YAML file.

    Args:
        path: the YAML file.

    Raises:
        ConfigError: missing file, YAML syntax, unknown key, wrong type or unknown candidate;
            the message names the file, the field path and what would be valid.
    """
    data = load_yaml_mapping(path)
    return SearchSpace(validate_or_raise(SearchSpaceConfig, data, file=path), Path(path))
