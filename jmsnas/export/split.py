"""Cutting a model into one ``nn.Module`` per device, for the boundaries a plan chose.

Every segment has the same calling convention, which export and the runtime rely on: it takes
the tensors crossing its incoming cut as positional arguments and returns a tuple of the
tensors crossing its outgoing cut (the last segment returns ``(logits,)``).

Two kinds of model:

- an ``ArchNet`` (or any list of layers applied one after another): ``split_archnet``; its units
  are ``ArchNet.layers()``. Without skip connections a cut carries one tensor; a network grown by
  the morphism search may have skips, and is then split through its ``torch.fx`` trace (below).
- any model ``torch.fx`` can trace (e.g. torchvision's ``resnet18``): its *units* are the
  graph's compute nodes in order, and boundaries index them like layers. Where a cut crosses a
  skip connection, every value produced before the cut and used after it is *live*: the segment
  before returns them all and the segment after takes them all, so a cut may carry several tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from jmsnas.plan.artifact import TensorSpec

if TYPE_CHECKING:
    from jmsnas.space.arch import ArchNet


class LayerSegment(nn.Module):
    """Layers run one after another, in the segment calling convention (one tensor in, ``(out,)`` out)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        for layer in self.layers:
            x = layer(x)
        return (x,)


def split_layers(layers: Sequence[nn.Module], boundaries: Sequence[int]) -> list[nn.Module]:
    """One ``LayerSegment`` per device: device m gets ``layers[boundaries[m]:boundaries[m + 1]]``.

    The segments share the layers' parameters (no copy). An empty range relays its input.

    Raises:
        ValueError: boundaries not non-decreasing from 0 to ``len(layers)``.
    """
    _check_boundaries(boundaries, len(layers))
    return [LayerSegment(layers[lo:hi]) for lo, hi in zip(boundaries, boundaries[1:], strict=False)]


def split_archnet(model: ArchNet, boundaries: Sequence[int]) -> list[nn.Module]:
    """One segment per device over ``model.layers()`` (stem, blocks, head).

    A plain chain is split into ``LayerSegment``s; a network with skip connections through its trace
    (``split_graph``), so that a cut crossing a skip carries the skip's tensor too.
    """
    if all(source is None for source in model.sources):
        return split_layers(model.layers(), boundaries)
    return list(split_graph(trace_units(model), boundaries))


def run_segments(segments: Sequence[nn.Module], *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run segments in order, each fed the previous one's outputs; returns the last one's."""
    values: tuple[torch.Tensor, ...] = inputs
    for segment in segments:
        values = tuple(segment(*values))
    return values


def trace_units(model: nn.Module) -> fx.GraphModule:
    """The ``torch.fx`` trace of ``model`` whose compute nodes are the units to cut between.

    An ``ArchNet`` is traced with its layers (stem, blocks, head) as leaves, so its units are
    ``ArchNet.layers()`` and boundaries index them as the planner's layer costs do. Any other
    module is traced down to its primitive calls. The trace shares the model's parameters.
    """
    from jmsnas.space.arch import ArchNet

    if isinstance(model, fx.GraphModule):
        return model
    if isinstance(model, ArchNet):
        return fx.GraphModule(model, _LeafTracer(model.layers()).trace(model))
    return fx.symbolic_trace(model)


class _LeafTracer(fx.Tracer):
    """Traces with the given modules as leaves."""

    def __init__(self, leaves: Sequence[nn.Module]) -> None:
        super().__init__()
        self.leaves = {id(m) for m in leaves}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, module_qualified_name)


def units(graph_module: fx.GraphModule) -> list[fx.Node]:
    """The compute nodes in execution order (no placeholders, no output)."""
    return [n for n in graph_module.graph.nodes if n.op not in ("placeholder", "output")]


def live_values(graph_module: fx.GraphModule, boundary: int) -> list[fx.Node]:
    """Values produced before unit ``boundary`` (inputs included) and used from it on, in graph order."""
    nodes = list(graph_module.graph.nodes)
    done = [n for n in nodes if n.op == "placeholder"] + units(graph_module)[:boundary]
    done_set = set(done)
    return [n for n in done if any(user not in done_set for user in n.users)]


def split_graph(model: nn.Module, boundaries: Sequence[int]) -> list[fx.GraphModule]:
    """One ``GraphModule`` per device; device m runs units ``boundaries[m]:boundaries[m + 1]``.

    Args:
        model: a module ``torch.fx`` can trace, or its ``GraphModule`` (from ``trace_units``).
        boundaries: non-decreasing unit indices from 0 to the number of units.

    Raises:
        ValueError: bad boundaries.
    """
    gm = trace_units(model)
    nodes = units(gm)
    _check_boundaries(boundaries, len(nodes))
    segments = []
    for lo, hi in zip(boundaries, boundaries[1:], strict=False):
        segments.append(_segment(gm, live_values(gm, lo), nodes[lo:hi], live_values(gm, hi)))
    return segments


def _segment(gm: fx.GraphModule, inputs: list[fx.Node], body: list[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: graph.placeholder(n.name) for n in inputs}
    for node in body:
        env[node] = graph.node_copy(node, lambda arg: env[arg])
    graph.output(tuple(env[n] for n in outputs))
    return fx.GraphModule(gm, graph)


def cut_tensors(model: nn.Module, example_input: torch.Tensor, boundaries: Sequence[int]) -> list[list[TensorSpec]]:
    """The tensors crossing each inner cut of ``boundaries`` (names, shapes, dtypes), for the plan.

    Raises:
        ValueError: a cut would carry something that is not a tensor (choose another boundary).
    """
    gm = trace_units(model)
    ShapeProp(gm).propagate(example_input)
    return [[_spec(node) for node in live_values(gm, b)] for b in boundaries[1:-1]]


def unit_output_bytes(model: nn.Module, example_input: torch.Tensor) -> list[float]:
    """Per unit n, the bytes crossing a cut right after it (all live tensors): the planner's ``layer_output_bytes``.

    A cut that would carry a non-tensor value (``x.size(0)`` used further on) costs ``inf``, so the
    planner never chooses it.
    """
    gm = trace_units(model)
    ShapeProp(gm).propagate(example_input)
    sizes = []
    for b in range(1, len(units(gm)) + 1):
        sizes.append(float(sum(_numel_bytes(n) for n in live_values(gm, b))))
    return sizes


def _spec(node: fx.Node) -> TensorSpec:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ValueError(f"value {node.name!r} crossing the cut is not a tensor; cut elsewhere")
    return TensorSpec(node.name, tuple(int(v) for v in meta.shape), str(meta.dtype).removeprefix("torch."))


def _numel_bytes(node: fx.Node) -> float:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return math.inf  # not a tensor: cannot go into an exported graph's outputs
    element = torch.empty((), dtype=meta.dtype).element_size()
    return int(torch.Size(meta.shape).numel()) * element


def _check_boundaries(boundaries: Sequence[int], n_units: int) -> None:
    b = [int(v) for v in boundaries]
    if len(b) < 2 or b[0] != 0 or b[-1] != n_units or any(x > y for x, y in zip(b, b[1:], strict=False)):
        raise ValueError(f"boundaries must be non-decreasing ints from 0 to {n_units}, got {b}")
