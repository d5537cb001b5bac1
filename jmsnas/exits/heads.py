"""Exit heads built from the model's own classifier, under a MAC cap (paper 001 §3.1).

Paper 001 builds every exit from "the classifier blueprint that was extracted from the backbone
model", with "additional downsampling layers ... inserted before the EE classifier" when the
feature map at the location is large, by a rule that keeps every branch far below the backbone's
cost. The paper does not spell the rule out; this one is ours:

1. **Target size.** The exit should pool a feature map no larger than the one the model's own
   classifier pools (``ClassifierBlueprint.input_shape``): stride-2 stages are added until every
   spatial axis is at most the classifier's (a 40-sample signal before a classifier that sees 10
   gets two stages; an 8x8 map in front of ResNet's 1x1 gets three). A stage is a 3-wide convolution
   with stride 2 (``conv``), its depthwise-separable form (``separable``, about 1/k of the cost in 2-D),
   or a 2-wide average pooling (``pool``, no MACs, no learning).
2. **Blueprint.** Then the classifier itself: its 1x1 convolution (if it has one, e.g. ``ArchNet``'s
   head), its global pooling (average or max) and a linear layer to the classes.
3. **MAC cap.** Among a small family of such heads (stage kind ``conv`` > ``separable`` > ``pool``,
   stage width 1, 1/2, 1/4 of the location's channels, 1x1-conv width 1, 1/2, 1/4 of the blueprint's
   or none) the richest one whose MACs are at most ``max_macs`` is chosen (ties: that order). A
   location where even pooling + linear exceeds the cap gets no head.

"Richest that fits" rather than "cheapest": with a cap of a few percent of the backbone, head
capacity decides how many samples can leave early, and paper 001 names its aggressive
downsampling as what limited its exits on larger models.

A head round-trips through a plain dict (``HeadConfig``), so heads are saved as a JSON config plus a
state dict of plain tensors (``torch.load(..., weights_only=True)`` reads it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from jmsnas.exits.graph import ClassifierBlueprint
from jmsnas.space.macs import count_macs
from jmsnas.space.ops import bn_cls, conv_cls

StageKind = Literal["conv", "separable", "pool"]
_ACT = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU, "hardswish": nn.Hardswish}
_WIDTHS = (1.0, 0.5, 0.25)
_MIN_WIDTH = 4


@dataclass(frozen=True)
class HeadConfig:
    """Everything needed to rebuild an exit head.

    Args:
        dims: 1 for signals, 2 for images.
        in_shape: the feature map at the location, ``(C, *spatial)``.
        stages: number of stride-2 downsampling stages.
        stage_kind: ``conv``, ``separable`` or ``pool``.
        stage_channels: output channels of each learned stage (ignored for ``pool``).
        hidden_channels: width of the blueprint's 1x1 convolution, or None.
        activation: activation name (``relu``, ``relu6``, ...).
        pool: global pooling, ``avg`` or ``max``.
        num_classes: classifier outputs.
    """

    dims: int
    in_shape: tuple[int, ...]
    stages: int
    stage_kind: StageKind
    stage_channels: int
    hidden_channels: int | None
    activation: str
    pool: Literal["avg", "max"]
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "in_shape": list(self.in_shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        return cls(**{**data, "in_shape": tuple(int(v) for v in data["in_shape"])})


class ExitHead(nn.Module):
    """``downsample`` (stride-2 stages) -> [``conv`` 1x1 -> ``bn`` -> act] -> global pool -> ``classifier``."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        conv, bn, act = conv_cls(config.dims), bn_cls(config.dims), _ACT[config.activation]
        c = config.in_shape[0]
        stages: list[nn.Module] = []
        for _ in range(config.stages):
            if config.stage_kind == "pool":
                pool = nn.AvgPool1d if config.dims == 1 else nn.AvgPool2d
                stages.append(pool(2, 2, ceil_mode=True))
                continue
            out = config.stage_channels
            if config.stage_kind == "conv":
                stages += [conv(c, out, 3, 2, 1, bias=False), bn(out), act()]
            else:
                stages += [conv(c, c, 3, 2, 1, groups=c, bias=False), bn(c), act(),
                           conv(c, out, 1, bias=False), bn(out), act()]
            c = out
        self.downsample = nn.Sequential(*stages)
        if config.hidden_channels:
            self.conv = conv(c, config.hidden_channels, 1, bias=False)
            self.bn = bn(config.hidden_channels)
            self.act = act()
            c = config.hidden_channels
        else:
            self.conv = self.bn = self.act = nn.Identity()
        if config.pool == "avg":
            self.pool = nn.AdaptiveAvgPool1d(1) if config.dims == 1 else nn.AdaptiveAvgPool2d(1)
        else:
            self.pool = nn.AdaptiveMaxPool1d(1) if config.dims == 1 else nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(c, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(self.downsample(x))))
        return self.classifier(self.flatten(self.pool(x)))

    @property
    def macs(self) -> int:
        """MACs per sample (counted with hooks, as the backbone's are)."""
        return count_macs(self, self.config.in_shape)


def stages_needed(in_size: tuple[int, ...], target: tuple[int, ...]) -> int:
    """Stride-2 stages (each ``ceil(s / 2)``) until every axis is at most the target's (at least 1)."""
    n, size = 0, list(in_size)
    while any(s > max(t, 1) for s, t in zip(size, target, strict=True)):
        size = [math.ceil(s / 2) for s in size]
        n += 1
    return n


def head_family(in_shape: tuple[int, ...], blueprint: ClassifierBlueprint) -> list[HeadConfig]:
    """The heads the rule chooses from, richest first (see the module docstring)."""
    dims = len(in_shape) - 1
    target = tuple(blueprint.input_shape[1:]) if len(blueprint.input_shape) == len(in_shape) else (1,) * dims
    n = stages_needed(tuple(in_shape[1:]), target)
    c = in_shape[0]
    stage_options: list[tuple[StageKind, int]] = [("pool", c)]
    if n:
        widths = sorted({max(_MIN_WIDTH, round(c * w)) for w in _WIDTHS}, reverse=True)
        stage_options = [(k, w) for k in ("conv", "separable") for w in widths] + stage_options
    hidden_options: list[int | None] = [None]
    if blueprint.hidden_channels:
        h = blueprint.hidden_channels
        hidden_options = sorted({max(_MIN_WIDTH, round(h * w)) for w in _WIDTHS}, reverse=True) + [None]
    return [HeadConfig(dims, tuple(in_shape), n, kind, width, hidden, blueprint.activation, blueprint.pool,
                       blueprint.num_classes)
            for kind, width in stage_options for hidden in hidden_options]


def config_macs(config: HeadConfig) -> int:
    """MACs per sample of the head ``config`` describes, from shapes (``ExitHead.macs`` counts them by hooks)."""
    c, size = config.in_shape[0], list(config.in_shape[1:])
    taps = 3 ** config.dims
    macs = 0
    for _ in range(config.stages):
        size = [math.ceil(s / 2) for s in size]
        out, positions = config.stage_channels, math.prod(size)
        if config.stage_kind == "conv":
            macs += out * positions * c * taps
        elif config.stage_kind == "separable":
            macs += c * positions * taps + out * positions * c
        else:
            continue
        c = out
    if config.hidden_channels:
        macs += config.hidden_channels * math.prod(size) * c
        c = config.hidden_channels
    return macs + c * config.num_classes


def build_exit_head(in_shape: tuple[int, ...], blueprint: ClassifierBlueprint, max_macs: float) -> ExitHead | None:
    """The richest head of ``head_family`` with at most ``max_macs`` MACs, or None if none fits.

    Args:
        in_shape: the feature map at the location, ``(C, *spatial)``.
        blueprint: the model's classifier blueprint.
        max_macs: the cap (``ExitsConfig.max_head_mac_fraction`` times the backbone's MACs).
    """
    best: tuple[int, HeadConfig] | None = None
    for config in head_family(tuple(in_shape), blueprint):
        macs = config_macs(config)
        if macs <= max_macs and (best is None or macs > best[0]):
            best = (macs, config)
    return None if best is None else ExitHead(best[1])
