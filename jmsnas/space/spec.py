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

"""

from __future__ import annotations

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


class SearchSpaceConfig(_Strict):
    """The contents of a search-space YAML file (see the module docstring)."""

    name: str
    dims: Dims
    input_shape: list[PositiveInt]
    stem: StemConfig
    stages: list[StageConfig] = Field(min_length=1)
    head: HeadConfig
    candidates: list[str] = Field(default_factory=lambda: list(CANDIDATES), min_length=1)

    @field_validator("candidates")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if name not in CANDIDATES:
                raise FieldValueError(f"unknown candidate {name!r}; valid: {', '.join(CANDIDATES)}", f"[{i}]")
            if name in v[:i]:
                raise FieldValueError(f"candidate {name!r} is listed twice", f"[{i}]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpaceConfig:
        if len(self.input_shape) != self.dims + 1:
            want = "[C, L]" if self.dims == 1 else "[C, H, W]"
            raise FieldValueError(f"dims {self.dims} needs input_shape {want}, got {self.input_shape}", "input_shape")
        for slot in SearchSpace(self).layers():
            if not slot.candidates:
                raise FieldValueError(
                    f"layer {slot.index} changes shape ({slot.in_channels} -> {slot.out_channels} channels, "
                    f"stride {slot.stride}) but every listed candidate needs an unchanged shape; "
                    "add an MBConv candidate without _sc",
                    "candidates",
                )
        return self


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
    """

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    candidates: tuple[str, ...]


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
        """Number of searchable layers N."""
        return sum(stage.layers for stage in self.config.stages)

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
        """The searchable layers in order, with shapes for ``input_shape`` (default: the configured one)."""
        channels, *size = self.stem_output_shape(input_shape)
        in_size = tuple(size)
        slots = []
        for s, stage in enumerate(self.config.stages):
            for i in range(stage.layers):
                stride = stage.stride if i == 0 else 1
                out_size = conv_output_size(in_size, 3, stride)  # the same for every odd kernel
                names = tuple(c for c in self.config.candidates if allowed(c, channels, stage.channels, stride))
                slots.append(LayerSlot(len(slots), s, channels, stage.channels, stride, in_size, out_size, names))
                channels, in_size = stage.channels, out_size
        return slots

    def head_input_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Shape ``(C, *spatial)`` entering the head."""
        last = self.layers(input_shape)[-1]
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
