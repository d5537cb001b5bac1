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

An Exit Predictor (``predictor``, paper 004) is exported as its own part of the first device
(``predictor_{device}.pt`` / ``.onnx``: network input in, one logit per early exit out) with its γs in
the manifest; each exit part then also has a second pair of files, ``{stem}_skip``, the same part
without its head, so a sample the predictor lets skip an exit does not compute the head (Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from jmsnas.compress.quantize import LEARNED, build_codec, calibrate
from jmsnas.errors import BundleError
from jmsnas.export.formats import onnx_max_abs_diff, save_onnx, save_torchscript
from jmsnas.export.manifest import codec_entry, part_files, wire_names, write_manifest
from jmsnas.export.split import run_segments
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.runtime.bundle import load_bundle, run_bundle, verify_bundle
from jmsnas.space.macs import count_macs

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
    predictor: tuple[nn.Module, Sequence[float]] | None = None,
    adaptive: dict | None = None,
) -> Path:
    """Write ``out_dir`` (a bundle) for a calibrated sequential ``plan`` and its ``segments``; returns the path of
    its ``manifest.json``.

    Args:
        segments: one module per device in plan order, in the calling convention of ``split``.
        plan: the plan; lossy compressors must be calibrated (``calibrate_plan``).
        example_input: a network input; fixes every shape in the bundle.
        out_dir: the bundle folder (created).
        codecs: per cut index, ``(encoder, decoder)`` modules overriding the plan's (learned compressors).
        exits: per device index (not the last), ``(exit head, confidence threshold)`` or ``(exit head,
            threshold, decision unit data)``: that device's part also returns the head's logits, first
            (see the module docstring); a decision unit (``DecisionUnit.to_dict()``) goes into the manifest.
        predictor: ``(Exit Predictor, gammas)``, one γ per exit in order (needs ``exits``): exported as its
            own part of the first device, and every exit part also without its head.
        adaptive: bandwidth-adaptive thresholds (``exits.adaptive_fit.adaptive_entry``), for the runtime.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exits = dict(exits or {})
    _check_exits(exits, predictor, len(segments))
    values: tuple[torch.Tensor, ...] = (example_input,)
    entries = []
    heads = {m: spec[0] for m, spec in exits.items()}
    bare = device_parts(plan, segments, codecs) if predictor is not None else []
    for m, part in enumerate(device_parts(plan, segments, codecs, heads)):
        outputs = _run(part, values)
        in_names = ["input"] if m == 0 else wire_names(plan, m - 1, len(values))
        last = m == len(segments) - 1
        n_out = len(outputs)
        out_names = [f"output{j}" for j in range(n_out)] if last else wire_names(plan, m, n_out - (m in exits))
        out_names = [f"e{m}.logits", *out_names] if m in exits else out_names
        stem = out / f"{m:02d}_{plan.segments[m].device}"
        entry = _export_part(part, (values, outputs), (in_names, out_names), stem, plan, m)
        entry |= {"decoder": None if m == 0 else codec_entry(plan, m - 1),
                  "encoder": None if last else codec_entry(plan, m)}
        if m in exits:
            entry["exit"] = _exit_entry(m, exits[m])
            if predictor is not None:  # the part without its head, for the samples that skip the exit
                skip = _export_part(bare[m], (values, outputs[1:]), (in_names, out_names[1:]),  # the same wire
                                    stem.with_name(f"{stem.name}_skip"), plan, m)
                entry["exit"]["skip_files"] = skip["files"]
                entry["onnx_max_abs_diff"] = max(entry["onnx_max_abs_diff"], skip["onnx_max_abs_diff"])
        entries.append(entry)
        values = outputs[1:] if m in exits else outputs
    exit_entries = [{"part": m, "device": plan.segments[m].device,
                     **{k: v for k, v in entries[m]["exit"].items() if k not in ("decision_unit", "skip_files")}}
                    for m in sorted(exits)]
    pred = None if predictor is None else _predictor_entry(out, plan, example_input, *predictor)
    return write_manifest(out, plan, entries, exit_entries, pred, adaptive)


def _check_exits(exits: Mapping[int, tuple], predictor: tuple | None, devices: int) -> None:
    if any(not 0 <= m < devices - 1 for m in exits):
        raise ValueError(f"exits go on devices 0..{devices - 2} (not the last), got {sorted(exits)}")
    if predictor is not None and len(predictor[1]) != len(exits):
        raise ValueError(f"need one gamma per exit ({len(exits)}), got {len(predictor[1])}")


def _run(part: nn.Module, values: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        got = part(*values)
    return tuple(got) if isinstance(got, (tuple, list)) else (got,)


def _export_part(part: nn.Module, io: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]],
                 names: tuple[list[str], list[str]], stem: Path, plan: DeploymentPlan, m: int) -> dict:
    """Write ``stem``.pt and .onnx for ``part``, given its example inputs and the outputs it gives on them
    (``io``); its ``part_files`` entry with the ONNX check."""
    values, outputs = io
    save_torchscript(part, values, stem.with_suffix(".pt"))
    save_onnx(part, values, names[0], names[1], stem.with_suffix(".onnx"))
    entry = part_files(stem.parent, stem.name, plan.segments[m].device, (names[0], values), (names[1], outputs))
    return entry | {"onnx_max_abs_diff": onnx_max_abs_diff(stem.with_suffix(".onnx"), values, outputs)}


class _OneInput(nn.Module):
    """A one-input module in the parts' calling convention (``forward(*xs)``, which ``save_onnx`` exports)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.module(xs[0])


def _predictor_entry(out: Path, plan: DeploymentPlan, example_input: torch.Tensor, predictor: nn.Module,
                     gammas: Sequence[float]) -> dict:
    predictor = predictor.eval()
    device = plan.segments[0].device
    part = _OneInput(predictor)
    entry = _export_part(part, ((example_input,), _run(part, (example_input,))), (["input"], ["predictor.logits"]),
                         out / f"predictor_{device}", plan, 0)
    macs = count_macs(predictor, tuple(example_input.shape[1:]))
    return entry | {"gammas": [float(g) for g in gammas], "macs": int(macs)}


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
