"""Networks with parallel branches on a mesh (paper 003 eq. (2)): sizes for the planner, split, export.

A ``BranchedNet`` (`jmsnas.space.branched`) is ``pre`` layers, then parallel ``branches`` (each a
list of layers fed the same tensor), merged by channel concatenation or a sum, then ``post`` layers. ``plan_branched``
places the pre-branch layers on the mesh's chain up to its root, branch i on branch device i, and
the post-join layers from the join device on; ``branched_sizes`` gives it the payload sizes.

``export_branched_bundle`` writes the same ``bundle/`` format as ``export.export_bundle``, one part
per device in the plan's order (pre devices, branch devices, post devices), and records each part's
``sources``: which earlier part's output feeds each of its inputs (``[-1, 0]`` is the network
input). The root sends one payload that every branch receives; the join device takes one payload
per branch, decodes each, merges them and runs the first post-join layers. ``bundle.Bundle.run``
follows the sources, so ``load_bundle`` / ``run_bundle`` / ``verify_bundle`` work unchanged.

Compressors: ``none`` and ``quantize`` (per sending device, as the planner takes them). Learned
compressors and early exits are not supported on branched plans.

The manifest entries are ``manifest.part_files`` plus, per part, ``part`` (``"pre"``,
``"branch<i>"``, ``"post"``), ``sources``, ``decoders`` (one codec entry per input, ``None`` for
the network input) and ``encoder``; a branched codec entry also names its link (``src``, ``dst``).
The files are written by ``formats.py``, as for sequential bundles. The traced ``forward`` methods
here and in ``writer.DevicePart`` are recorded with their file and line in the exported files
(TorchScript debug info, ONNX stack traces): moving them changes the bundle's bytes and hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from jmsnas.compress.quantize import LEARNED, build_codec, calibrate
from jmsnas.export.formats import onnx_max_abs_diff, save_onnx, save_torchscript
from jmsnas.export.manifest import codec_entry, part_files, write_manifest
from jmsnas.export.split import LayerSegment
from jmsnas.export.writer import DevicePart
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.space.branched import BranchedNet, Merge, merge_outputs


@dataclass(frozen=True)
class BranchedSizes:
    """Float32 bytes per sample of every layer output, as ``plan_branched`` takes them."""

    pre: list[float]
    branches: list[list[float]]
    post: list[float]
    input_bytes: float
    join_input_bytes: float


def branched_sizes(model: BranchedNet, example_input: torch.Tensor) -> BranchedSizes:
    """Per-sample output sizes of every layer of ``model`` on ``example_input`` (batch first)."""
    per_sample = example_input.shape[0]

    def size(t: torch.Tensor) -> float:
        return float(t.numel() * t.element_size() // per_sample)

    with torch.no_grad():
        x, pre = example_input, []
        for layer in model.pre:
            x = layer(x)
            pre.append(size(x))
        outs, branches = [], []
        for branch in model.branches:
            h, sizes = x, []
            for layer in branch:
                h = layer(h)
                sizes.append(size(h))
            outs.append(h)
            branches.append(sizes)
        h = merge_outputs(outs, model.merge)
        join, post = size(h), []
        for layer in model.post:
            h = layer(h)
            post.append(size(h))
    return BranchedSizes(pre, branches, post, size(example_input), join)


class JoinSegment(nn.Module):
    """The join device's segment: merge the branch outputs, then run its post-join layers."""

    def __init__(self, layers: Sequence[nn.Module], merge: Merge) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.merge = merge

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor]:
        h = merge_outputs(xs, self.merge)
        for layer in self.layers:
            h = layer(h)
        return (h,)


class _Decoders(nn.Module):
    """One decoder per incoming payload (the join device's), each given its own tensor."""

    def __init__(self, decoders: Sequence[nn.Module]) -> None:
        super().__init__()
        self.decoders = nn.ModuleList(decoders)

    def forward(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for i, decoder in enumerate(self.decoders):
            out.extend(decoder((xs[i],)))
        return tuple(out)


@dataclass(frozen=True)
class _Node:
    """One device of a branched plan: its segment, where its inputs come from, which cuts it uses."""

    segment: nn.Module
    sources: list[tuple[int, int]]  # (part index, output index); part -1: the network input
    in_cuts: list[int]  # per input, the cut it arrives over (-1: the network input)
    out_cut: int | None  # the cut whose encoder it applies (the root: its first branch cut)


def _graph(model: BranchedNet, plan: DeploymentPlan) -> list[_Node]:
    parts = [s.part for s in plan.segments]
    if not any(p.startswith("branch") for p in parts) or any(p == "main" for p in parts):
        raise ValueError(f"need a branched plan (plan_branched), got parts {sorted(set(parts))}")
    cut_of = {(c.src, c.dst): k for k, c in enumerate(plan.cuts)}
    index = {s.device: m for m, s in enumerate(plan.segments)}
    pre = [s for s in plan.segments if s.part == "pre"]
    branch = [s for s in plan.segments if s.part.startswith("branch")]
    post = [s for s in plan.segments if s.part == "post"]
    if len(branch) != len(model.branches):
        raise ValueError(f"the plan has {len(branch)} branches, the model {len(model.branches)}")
    nodes: list[_Node] = []
    root = pre[-1].device
    for m, s in enumerate(pre):
        prev = pre[m - 1].device if m else None
        nxt = pre[m + 1].device if m + 1 < len(pre) else branch[0].device
        nodes.append(_Node(LayerSegment(model.pre[s.start:s.stop]), [(index[prev], 0)] if prev else [(-1, 0)],
                           [cut_of[(prev, s.device)]] if prev else [-1], cut_of[(s.device, nxt)]))
    join = post[0].device
    for s in branch:
        i = int(s.part.removeprefix("branch"))
        nodes.append(_Node(LayerSegment(model.branches[i][s.start:s.stop]), [(index[root], 0)],
                           [cut_of[(root, s.device)]], cut_of[(s.device, join)]))
    for m, s in enumerate(post):
        nxt = cut_of[(s.device, post[m + 1].device)] if m + 1 < len(post) else None
        if m == 0:
            nodes.append(_Node(JoinSegment(model.post[s.start:s.stop], model.merge),
                               [(index[b.device], 0) for b in branch], [cut_of[(b.device, join)] for b in branch], nxt))
        else:
            prev = post[m - 1].device
            nodes.append(_Node(LayerSegment(model.post[s.start:s.stop]), [(index[prev], 0)],
                               [cut_of[(prev, s.device)]], nxt))
    return nodes


def calibrate_branched(plan: DeploymentPlan, model: BranchedNet, inputs: Sequence[torch.Tensor]) -> DeploymentPlan:
    """The plan with each cut's compressor calibrated on what crosses it for ``inputs`` (batches)."""
    if any(c.compressor in LEARNED for c in plan.cuts):
        raise ValueError("learned compressors are not supported on branched plans; use 'none' or 'quantize'")
    nodes = _graph(model, plan)
    samples: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in plan.cuts]
    with torch.no_grad():
        for x in inputs:
            produced: list[tuple[torch.Tensor, ...]] = []
            for node in nodes:
                values = tuple(x if j < 0 else produced[j][k] for j, k in node.sources)
                for cut, v in zip(node.in_cuts, values, strict=True):
                    if cut >= 0:
                        samples[cut].append((v,))
                produced.append(tuple(node.segment(*values)))
    params = [calibrate(c.compressor, s, bits=int(c.compressor_params.get("bits", 8)))
              for c, s in zip(plan.cuts, samples, strict=True)]
    return plan.with_compressor_params(params)


def branched_parts(plan: DeploymentPlan, model: BranchedNet) -> list[tuple[DevicePart, list[tuple[int, int]]]]:
    """Per device in plan order: its part (decoders, segment, encoder) and the sources of its inputs."""
    return _parts(plan, _graph(model, plan))


def _parts(plan: DeploymentPlan, nodes: Sequence[_Node]) -> list[tuple[DevicePart, list[tuple[int, int]]]]:
    codecs = [build_codec(c.compressor, c.compressor_params) for c in plan.cuts]
    none_enc, none_dec = build_codec("none", {})
    out = []
    for node in nodes:
        decoders = [none_dec if cut < 0 else codecs[cut][1] for cut in node.in_cuts]
        decoder = decoders[0] if len(decoders) == 1 else _Decoders(decoders)
        encoder = none_enc if node.out_cut is None else codecs[node.out_cut][0]
        out.append((DevicePart(decoder, node.segment, encoder).eval(), node.sources))
    return out


def export_branched_bundle(model: BranchedNet, plan: DeploymentPlan, example_input: torch.Tensor,
                           out_dir: str | Path) -> Path:
    """Write ``out_dir`` (a bundle) for a calibrated branched ``plan`` of ``model``.

    Returns:
        The path of ``manifest.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    produced: list[tuple[torch.Tensor, ...]] = []
    entries = []
    nodes = _graph(model, plan)
    parts = _parts(plan, nodes)
    for m, (part, sources) in enumerate(parts):
        values = tuple(example_input if j < 0 else produced[j][k] for j, k in sources)
        with torch.no_grad():
            outputs = part(*values)
        in_names = ["input" if j < 0 else f"p{j}.out{k}" for j, k in sources]
        out_names = [f"output{k}" if m == len(parts) - 1 else f"p{m}.out{k}" for k in range(len(outputs))]
        stem = f"{m:02d}_{plan.segments[m].device}"
        save_torchscript(part, values, out / f"{stem}.pt")
        save_onnx(part, values, in_names, out_names, out / f"{stem}.onnx")
        entry = part_files(out, stem, plan.segments[m].device, (in_names, values), (out_names, outputs))
        node = nodes[m]
        entry.update(part=plan.segments[m].part, sources=[list(s) for s in sources],
                     decoders=[None if c < 0 else codec_entry(plan, c, link=True) for c in node.in_cuts],
                     encoder=None if node.out_cut is None else codec_entry(plan, node.out_cut, link=True),
                     onnx_max_abs_diff=onnx_max_abs_diff(out / f"{stem}.onnx", values, outputs))
        entries.append(entry)
        produced.append(outputs)
    return write_manifest(out, plan, entries)
