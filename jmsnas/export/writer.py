"""Export a cut network as ``bundle/``: one TorchScript and one ONNX file per device, plus ``manifest.json``.

Each device's file holds the decoder of its incoming cut, its segment, and the encoder of its
outgoing cut, so what one file returns is exactly what goes on the wire to the next. The
manifest names every tensor on the wire (``c{k}.{name}`` for cut k; ``input`` and ``output{j}``
at the ends) with its shape and dtype, the compressor parameters of each cut, the plan, and
the sha256 of every file. The manifest's schema and its entries are in ``manifest.py``, the two
file formats (TorchScript, ONNX) in ``formats.py``.

Loading needs no jmsnas class and no pickle of ours: ``load_bundle`` (``runtime/bundle.py``, re-exported
here) checks every hash first, then opens the files with ``torch.jit.load`` (TorchScript's own
restricted loader) or onnxruntime. The batch axis is dynamic where the graph allows it (the
manifest writes ``null`` for a dynamic axis); every other axis is the example input's.

``export_bundle`` takes sequential plans (a chain, or one path through a mesh); a branched plan
(``plan_branched``) of a ``branched.BranchedNet`` is exported by ``branched.export_branched_bundle``
in the same format.

Early exits (``exits``, from ``jmsnas.exits``): a device with an exit returns its exit's logits
first (named ``e{m}.logits``), then what goes on the wire. The graph has no data-dependent control
flow; the manifest records each exit's threshold and logits name, and the runtime decides which
samples leave (``bundle.Bundle.run_exits``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from jmsnas.compress.quantize import LEARNED, build_codec, calibrate
from jmsnas.errors import BundleError
from jmsnas.export.formats import onnx_max_abs_diff, save_onnx, save_torchscript
from jmsnas.export.manifest import part_entry, wire_names, write_manifest
from jmsnas.export.split import run_segments
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.runtime.bundle import load_bundle, run_bundle, verify_bundle

__all__ = [
    "BundleError",
    "DevicePart",
    "calibrate_plan",
    "device_parts",
    "export_bundle",
    "load_bundle",
    "run_bundle",
    "verify_bundle",
]


class DevicePart(nn.Module):
    """What one device runs: decode the incoming cut, run the segment, encode the outgoing cut.

    With an exit ``head``, the head's logits on the segment's (single) output come first.
    """

    def __init__(self, decoder: nn.Module, segment: nn.Module, encoder: nn.Module,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        self.decoder, self.segment, self.encoder = decoder, segment, encoder
        self.head = head

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = tuple(self.segment(*self.decoder(tuple(xs))))
        wire = tuple(self.encoder(features))
        return wire if self.head is None else (self.head(features[0]), *wire)


def calibrate_plan(
    plan: DeploymentPlan, segments: Sequence[nn.Module], inputs: Sequence[torch.Tensor]
) -> DeploymentPlan:
    """The plan with every cut's compressor calibrated on what crosses it for ``inputs`` (batches).

    Learned compressors keep the parameters they have (``bottleneck.bottleneck_codec`` makes them).
    """
    _check_sequential(plan, segments)
    samples: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in plan.cuts]
    with torch.no_grad():
        for x in inputs:
            values: tuple[torch.Tensor, ...] = (x,)
            for k, segment in enumerate(segments[:-1]):
                values = run_segments([segment], *values)
                samples[k].append(values)
    params = [
        c.compressor_params if c.compressor in LEARNED
        else calibrate(c.compressor, s, bits=int(c.compressor_params.get("bits", 8)))
        for c, s in zip(plan.cuts, samples, strict=True)
    ]
    return plan.with_compressor_params(params)


def device_parts(
    plan: DeploymentPlan,
    segments: Sequence[nn.Module],
    codecs: Mapping[int, tuple[nn.Module, nn.Module]] | None = None,
    heads: Mapping[int, nn.Module] | None = None,
) -> list[DevicePart]:
    """Per device, its segment wrapped with the codecs of its cuts (the modules export traces).

    Args:
        plan: a sequential plan.
        segments: one module per device.
        codecs: per cut index, ``(encoder, decoder)`` modules to use instead of building them from
            the plan (needed for learned compressors).
        heads: per device index, an exit head run on that device's segment output.
    """
    _check_sequential(plan, segments)
    given = dict(codecs or {})
    codecs = [
        given[k] if k in given else build_codec(c.compressor, c.compressor_params) for k, c in enumerate(plan.cuts)
    ]
    parts = []
    for m, segment in enumerate(segments):
        decoder = codecs[m - 1][1] if m > 0 else build_codec("none", {})[1]
        encoder = codecs[m][0] if m < len(codecs) else build_codec("none", {})[0]
        parts.append(DevicePart(decoder, segment, encoder, (heads or {}).get(m)).eval())
    return parts


def export_bundle(
    segments: Sequence[nn.Module],
    plan: DeploymentPlan,
    example_input: torch.Tensor,
    out_dir: str | Path,
    codecs: Mapping[int, tuple[nn.Module, nn.Module]] | None = None,
    exits: Mapping[int, tuple[nn.Module, float] | tuple[nn.Module, float, dict | None]] | None = None,
) -> Path:
    """Write ``out_dir`` (a bundle) for a calibrated sequential ``plan`` and its ``segments``.

    Args:
        segments: one module per device in plan order, in the calling convention of ``split``.
        plan: the plan; lossy compressors must be calibrated (``calibrate_plan``).
        example_input: a network input; fixes every shape in the bundle.
        out_dir: the bundle folder (created).
        codecs: per cut index, ``(encoder, decoder)`` modules overriding the plan's (learned compressors).
        exits: per device index (not the last), ``(exit head, confidence threshold)`` or ``(exit head,
            threshold, decision unit data)``: that device's part also returns the head's logits, first
            (see the module docstring); a decision unit (``DecisionUnit.to_dict()``) goes into the manifest.

    Returns:
        The path of ``manifest.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exits = dict(exits or {})
    if any(not 0 <= m < len(segments) - 1 for m in exits):
        raise ValueError(f"exits go on devices 0..{len(segments) - 2} (not the last), got {sorted(exits)}")
    values: tuple[torch.Tensor, ...] = (example_input,)
    entries = []
    heads = {m: spec[0] for m, spec in exits.items()}
    for m, part in enumerate(device_parts(plan, segments, codecs, heads)):
        with torch.no_grad():
            outputs = part(*values)
        in_names = ["input"] if m == 0 else wire_names(plan, m - 1, len(values))
        last = m == len(segments) - 1
        n_wire = len(outputs) - (m in exits)
        out_names = [f"output{j}" for j in range(len(outputs))] if last else wire_names(plan, m, n_wire)
        if m in exits:
            out_names = [f"e{m}.logits", *out_names]
        stem = f"{m:02d}_{plan.segments[m].device}"
        save_torchscript(part, values, out / f"{stem}.pt")
        save_onnx(part, values, in_names, out_names, out / f"{stem}.onnx")
        entry = part_entry(out, stem, plan, m, (in_names, values), (out_names, outputs))
        entry["onnx_max_abs_diff"] = onnx_max_abs_diff(out / f"{stem}.onnx", values, outputs)
        if m in exits:
            entry["exit"] = _exit_entry(m, exits[m])
        entries.append(entry)
        values = outputs[1:] if m in exits else outputs
    exit_entries = [{"part": m, "device": plan.segments[m].device,
                     **{k: v for k, v in entries[m]["exit"].items() if k != "decision_unit"}} for m in sorted(exits)]
    return write_manifest(out, plan, entries, exit_entries)


def _exit_entry(m: int, spec: tuple) -> dict:
    unit = spec[2] if len(spec) > 2 else None
    entry = {"threshold": float(spec[1]), "logits": f"e{m}.logits",
             "confidence": "max_softmax" if unit is None else "decision_unit"}
    return entry if unit is None else entry | {"decision_unit": unit}


def _check_sequential(plan: DeploymentPlan, segments: Sequence[nn.Module]) -> None:
    if any(s.part != "main" for s in plan.segments) or len(segments) != len(plan.segments):
        raise ValueError(
            f"need a sequential plan and one segment per device ({len(plan.segments)}), "
            f"got {len(segments)} segments for parts {sorted({s.part for s in plan.segments})}"
        )
