"""The block-level graph of a trained classifier and its candidate exit locations (paper 001 §3.1).

Paper 001 keeps two views of the model: a fine-grained one to count costs and to read the
classifier's blueprint, and a coarse *block-level* one "that collapses residual blocks and fuses
post-processing layers with compute layers", whose boundaries are where exits may go. Here:

- **Units** are what a deployment plan cuts between (``partition.split``): the compute nodes of a
  ``torch.fx`` trace (torchvision's ``resnet18``: ``conv1``, ``bn1``, ..., ``fc``). An ``ArchNet`` is
  traced with its layers (stem, blocks, head) as leaves, so its units are ``ArchNet.layers()``, the
  indices its plans use, and a morphism-grown skip connection makes the cuts it crosses carry two
  tensors. Plan boundaries are unit indices; location ``b`` is the cut before unit ``b``.
- A location is a **block boundary** when (1) exactly one tensor crosses it, so no skip connection
  is cut and every residual block collapses into one block, and (2) the unit after it computes
  (MACs > 0), so BatchNorm, activations, pooling, residual adds and identity layers fuse with the
  compute before them.
- The **classifier** is the units from the last one-tensor location before the global pooling on
  (``ArchNet.head``; torchvision's ``avgpool, flatten, fc``). Its pooling, its optional 1x1
  convolution and its final ``nn.Linear`` are the blueprint every exit head is built from.
- **Candidate exit locations** are the block boundaries strictly between the input and the
  classifier: an exit in front of the classifier would duplicate it.

MACs are counted by ``space.macs.MacCounter`` (convolutions and linear layers, per sample), the
counter the cascade measures with at run time, so the figures match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from jmsnas.errors import ConfigError
from jmsnas.export.split import live_values, split_graph, trace_units, units
from jmsnas.space.macs import MacCounter
from jmsnas.space.ops import Head

_AVG_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
_MAX_POOLS = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.MaxPool1d, nn.MaxPool2d)
_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.GELU: "gelu", nn.Hardswish: "hardswish"}


@dataclass(frozen=True)
class UnitInfo:
    """One unit: per-sample MACs and parameters, and the bytes crossing a cut right after it."""

    name: str
    macs: int
    params: int
    output_bytes: float


@dataclass(frozen=True)
class ClassifierBlueprint:
    """What an exit head copies from the model's own classifier.

    Args:
        num_classes: outputs of the final ``nn.Linear``.
        pool: global pooling of the classifier (``avg`` when it has none that says otherwise).
        hidden_channels: width of a 1x1 convolution in front of the pooling (``ArchNet``'s head), or None.
        activation: the classifier's activation after that convolution (``relu`` when none is found).
        input_shape: ``(C, *spatial)`` the classifier sees; exits downsample towards its spatial size.
    """

    num_classes: int
    pool: Literal["avg", "max"]
    hidden_channels: int | None
    activation: str
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class Block:
    """Units ``start:stop`` fused into one block; ``output_shape`` is what leaves it (no batch)."""

    start: int
    stop: int
    macs: int
    params: int
    output_shape: tuple[int, ...]


class BlockGraph:
    """The block-level graph of ``model`` (see the module docstring); build it with ``block_graph``.

    Attributes:
        model: the model (in eval mode; never modified).
        gm: its ``torch.fx`` trace (sharing its parameters).
        input_shape: the input shape without batch.
        dims: 1 for signals, 2 for images.
        units: one ``UnitInfo`` per unit.
        blocks: the blocks, in order; the last is the classifier.
        locations: candidate exit locations (unit indices).
        classifier_start: the unit index where the classifier begins.
        blueprint: the classifier blueprint.
        feature_shapes: per location, the shape (no batch) of the tensor crossing it.
    """

    def __init__(self, model: nn.Module, gm: fx.GraphModule, input_shape: tuple[int, ...],
                 unit_infos: list[UnitInfo], shapes: dict[int, tuple[int, ...]], single: list[bool],
                 blueprint: ClassifierBlueprint, classifier_start: int) -> None:
        self.model = model
        self.gm = gm
        self.input_shape = tuple(input_shape)
        self.dims = len(input_shape) - 1
        self.units = unit_infos
        self.blueprint = blueprint
        self.classifier_start = classifier_start
        n = len(unit_infos)
        bounds = [b for b in range(1, classifier_start) if single[b] and unit_infos[b].macs > 0]
        self.locations: list[int] = bounds
        self.feature_shapes = {b: shapes[b] for b in bounds}
        self.feature_shapes[classifier_start] = shapes[classifier_start]
        cuts = [0, *bounds, classifier_start, n]
        self.blocks = [Block(lo, hi, self.macs_between(lo, hi), sum(u.params for u in unit_infos[lo:hi]),
                             shapes.get(hi, (blueprint.num_classes,)))
                       for lo, hi in zip(cuts, cuts[1:], strict=False) if hi > lo]

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def total_macs(self) -> int:
        """MACs per sample of the whole model."""
        return sum(u.macs for u in self.units)

    @property
    def total_params(self) -> int:
        return sum(u.params for u in self.units)

    def macs_between(self, lo: int, hi: int) -> int:
        """MACs per sample of units ``lo:hi``."""
        return sum(u.macs for u in self.units[lo:hi])

    def segments(self, cuts: Sequence[int]) -> list[nn.Module]:
        """One module per range ``cuts[i]:cuts[i + 1]`` in the calling convention of ``partition.split``.

        The modules share the model's parameters. Cuts at exit locations carry one tensor.
        """
        return list(split_graph(self.gm, cuts))

    def feature_extractor(self, locations: Sequence[int]) -> nn.Module:
        """A module ``x -> (logits, feature at locations[0], ...)``: one backbone pass feeds every head."""
        return _fx_features(self.gm, list(locations))

    def describe(self) -> list[dict]:
        """The blocks as plain dicts (for reports)."""
        return [{"units": [b.start, b.stop], "macs": b.macs, "params": b.params, "output_shape": list(b.output_shape)}
                for b in self.blocks]


def _fx_features(gm: fx.GraphModule, locations: list[int]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out_node = None
    for node in gm.graph.nodes:
        if node.op == "output":
            out_node = node
            continue
        env[node] = graph.node_copy(node, lambda a: env[a])
    assert out_node is not None
    final = fx.node.map_arg(out_node.args[0], lambda a: env[a])
    feats = [env[live_values(gm, b)[0]] for b in locations]
    graph.output((final, *feats))
    return fx.GraphModule(gm, graph)


def block_graph(model: nn.Module, input_shape: Sequence[int]) -> BlockGraph:
    """Build the block-level graph of a trained classifier.

    Args:
        model: an ``ArchNet`` or any classifier ``torch.fx`` can trace, ending in an ``nn.Linear``.
        input_shape: one input without batch, e.g. ``(1, 40)`` or ``(3, 32, 32)``.

    Raises:
        ConfigError: the model cannot be traced, or has no classifier (``nn.Linear``) at its end.
    """
    input_shape = tuple(int(v) for v in input_shape)
    model.eval()
    example = torch.zeros(1, *input_shape)
    try:
        gm = trace_units(model)  # an ArchNet: its layers are the units
    except Exception as exc:  # torch.fx raises many types on data-dependent control flow
        raise ConfigError(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
                          "exits need a model without data-dependent control flow", field="model") from exc
    return _fx_graph(model, gm, input_shape, example)


def _fx_graph(model: nn.Module, gm: fx.GraphModule, input_shape: tuple[int, ...], example: torch.Tensor) -> BlockGraph:
    ShapeProp(gm).propagate(example)
    nodes = units(gm)
    macs = _fx_unit_macs(gm, example)
    modules = dict(gm.named_modules())
    seen: set[int] = set()
    infos, shapes, single = [], {0: input_shape}, [True]
    for b, node in enumerate(nodes, start=1):
        live = live_values(gm, b)  # after the last unit: what the output returns (the logits)
        params = _new_params(modules[node.target], seen) if node.op == "call_module" else _attr_params(gm, node, seen)
        infos.append(UnitInfo(node.name, macs.get(node, 0), params, float(sum(_bytes(v) for v in live))))
        single.append(b < len(nodes) and len(live) == 1 and _is_tensor(live[0]))
        if single[-1]:
            shapes[b] = tuple(int(v) for v in live[0].meta["tensor_meta"].shape[1:])
    spatial = [b for b in range(1, len(nodes)) if single[b] and len(shapes[b]) == len(input_shape)]
    if not spatial:
        raise ConfigError("found no point where one feature map enters the classifier; exits need a "
                          "convolutional backbone followed by pooling and a linear classifier", field="model")
    head = [b for b in spatial if isinstance(modules.get(nodes[b].target), Head)]
    pooled = [b for b in spatial if _is_pool(nodes[b], modules)]
    start = (head or pooled or spatial)[-1]  # right before the head / the global pooling
    bp = _blueprint(nodes[start:], modules, shapes[start])
    return BlockGraph(model, gm, input_shape, infos, shapes, single, bp, start)


def _counted(call) -> tuple[int, torch.Tensor]:
    with MacCounter() as counter:
        out = call()
    return counter.macs, out


def _fx_unit_macs(gm: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, int]:
    """Per node, MACs of the convolutions and linear layers it runs (``MacCounter``, attributed by an interpreter)."""
    per_node: dict[fx.Node, int] = {}

    class Counter(fx.Interpreter):
        def run_node(self, n: fx.Node):
            macs, out = _counted(lambda: super(Counter, self).run_node(n))
            if macs:
                per_node[n] = macs
            return out

    with torch.no_grad():
        Counter(gm).run(example)
    return per_node


def _new_params(module: nn.Module, seen: set[int]) -> int:
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _attr_params(gm: fx.GraphModule, node: fx.Node, seen: set[int]) -> int:
    if node.op != "get_attr":
        return 0
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor) and id(value) not in seen:
        seen.add(id(value))
        return value.numel()
    return 0


def _is_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "shape")


def _bytes(node: fx.Node) -> float:
    if not _is_tensor(node):
        return math.inf
    meta = node.meta["tensor_meta"]
    return float(torch.Size(meta.shape[1:]).numel() * torch.empty((), dtype=meta.dtype).element_size())


def _is_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _AVG_POOLS + _MAX_POOLS)
    name = getattr(node.target, "__name__", str(node.target))
    return "pool" in name or name in ("mean", "amax")


def _blueprint(tail: list[fx.Node], modules: dict[str, nn.Module], in_shape: tuple[int, ...]) -> ClassifierBlueprint:
    pool: Literal["avg", "max"] = "avg"
    hidden, act, linear = None, "relu", None
    for node in tail:
        mod = modules.get(node.target) if node.op == "call_module" else None
        name = getattr(node.target, "__name__", str(node.target))
        if isinstance(mod, Head):  # an ArchNet's head: 1x1 conv, ReLU6, average pool, linear
            return ClassifierBlueprint(mod.classifier.out_features, "avg", mod.conv.out_channels, "relu6", in_shape)
        if isinstance(mod, _MAX_POOLS) or "max_pool" in name or name == "amax":
            pool = "max"
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)) and math.prod(mod.kernel_size) == 1 and linear is None:
            hidden = mod.out_channels
        elif isinstance(mod, nn.Linear):
            linear = mod
        elif mod is not None and type(mod) in _ACTIVATIONS:
            act = _ACTIVATIONS[type(mod)]
    if linear is None:
        raise ConfigError("the model's classifier has no nn.Linear after its last feature map; exit heads are "
                          "built from that classifier", field="model")
    return ClassifierBlueprint(linear.out_features, pool, hidden, act, in_shape)
