"""Export a cut network as ``bundle/``: one TorchScript and one ONNX file per device, plus ``manifest.json``.

Each device's file holds the decoder of its incoming cut, its segment, and the encoder of its
outgoing cut, so what one file returns is exactly what goes on the wire to the next. The
manifest names every tensor on the wire (``c{k}.{name}`` for cut k; ``input`` and ``output{j}``
at the ends) with its shape and dtype, the compressor parameters of each cut, the plan, and
the sha256 of every file.

Loading needs no jmsnas class and no pickle of ours: ``load_bundle`` (``bundle.py``, re-exported
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

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jmsnas.compress.quantize import LEARNED, build_codec, calibrate
from jmsnas.export.split import run_segments
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.runtime.bundle import FORMAT, MANIFEST, BundleError, load_bundle, run_bundle, sha256_file, verify_bundle

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
    exits: Mapping[int, tuple[nn.Module, float]] | None = None,
) -> Path:
    """Write ``out_dir`` (a bundle) for a calibrated sequential ``plan`` and its ``segments``.

    Args:
        segments: one module per device in plan order, in the calling convention of ``split``.
        plan: the plan; lossy compressors must be calibrated (``calibrate_plan``).
        example_input: a network input; fixes every shape in the bundle.
        out_dir: the bundle folder (created).
        codecs: per cut index, ``(encoder, decoder)`` modules overriding the plan's (learned compressors).
        exits: per device index (not the last), ``(exit head, confidence threshold)``: that device's
            part also returns the head's logits, first (see the module docstring).

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
    heads = {m: head for m, (head, _) in exits.items()}
    for m, part in enumerate(device_parts(plan, segments, codecs, heads)):
        with torch.no_grad():
            outputs = part(*values)
        in_names = ["input"] if m == 0 else _wire_names(plan, m - 1, len(values))
        last = m == len(segments) - 1
        n_wire = len(outputs) - (m in exits)
        out_names = [f"output{j}" for j in range(len(outputs))] if last else _wire_names(plan, m, n_wire)
        if m in exits:
            out_names = [f"e{m}.logits", *out_names]
        stem = f"{m:02d}_{plan.segments[m].device}"
        _save_torchscript(part, values, out / f"{stem}.pt")
        _save_onnx(part, values, in_names, out_names, out / f"{stem}.onnx")
        entry = _entry(out, stem, plan, m, (in_names, values), (out_names, outputs))
        entry["onnx_max_abs_diff"] = _onnx_max_abs_diff(out / f"{stem}.onnx", values, outputs)
        if m in exits:
            entry["exit"] = {"threshold": float(exits[m][1]), "logits": f"e{m}.logits", "confidence": "max_softmax"}
        entries.append(entry)
        values = outputs[1:] if m in exits else outputs
    manifest = {"format": FORMAT, "version": 1, "devices": plan.devices, "parts": entries, "plan": plan.to_dict()}
    if exits:
        manifest["exits"] = [{"part": m, "device": plan.segments[m].device, **entries[m]["exit"]}
                             for m in sorted(exits)]
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _wire_names(plan: DeploymentPlan, cut: int, count: int) -> list[str]:
    names = [t.name for t in plan.cuts[cut].tensors]
    if len(names) != count:
        names = [f"t{j}" for j in range(count)]
    return [f"c{cut}.{name}" for name in names]


def _save_torchscript(part: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated")  # still the loadable format
        traced = torch.jit.trace(part, inputs, check_trace=False)
        torch.jit.save(traced, str(path))


def _save_onnx(
    part: nn.Module, inputs: tuple[torch.Tensor, ...], in_names: list[str], out_names: list[str], path: Path
) -> None:
    """ONNX opset 18 via ``torch.export``, batch axis dynamic where the graph allows it, checked by ``onnx``."""
    import onnx  # noqa: PLC0415  (export-only dependency)

    # forward(*xs) is one var-positional parameter, so its spec is a one-element tuple of per-tensor specs.
    batch = (tuple({0: torch.export.Dim.AUTO} for _ in inputs),)
    torch.onnx.export(
        part,
        inputs,
        str(path),
        dynamo=True,
        opset_version=18,
        external_data=False,
        input_names=in_names,
        output_names=out_names,
        dynamic_shapes=batch,
        verbose=False,
    )
    onnx.checker.check_model(str(path))


def _onnx_shapes(path: Path) -> tuple[list[list[int | None]], list[list[int | None]]]:
    """Input and output shapes of an ONNX file; ``None`` for a dynamic axis."""
    import onnx  # noqa: PLC0415

    graph = onnx.load(str(path)).graph

    def dims(value: onnx.ValueInfoProto) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    return [dims(v) for v in graph.input], [dims(v) for v in graph.output]


def _onnx_max_abs_diff(path: Path, inputs: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> float:
    """The export's own check: onnxruntime on the example against the eager part (uint8 compared as numbers)."""
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), inputs, strict=True)}
    got = session.run(None, feeds)
    return max(
        float(np.abs(g.astype(np.float64) - e.numpy().astype(np.float64)).max(initial=0.0))
        for g, e in zip(got, expected, strict=True)
    )


def _entry(
    out: Path,
    stem: str,
    plan: DeploymentPlan,
    m: int,
    ins: tuple[list[str], tuple[torch.Tensor, ...]],
    outs: tuple[list[str], tuple[torch.Tensor, ...]],
) -> dict[str, Any]:
    return {
        **_entry_files(out, stem, plan.segments[m].device, ins, outs),
        "decoder": None if m == 0 else _codec_entry(plan, m - 1),
        "encoder": None if m == len(plan.cuts) else _codec_entry(plan, m),
    }


def _entry_files(
    out: Path,
    stem: str,
    device: str,
    ins: tuple[list[str], tuple[torch.Tensor, ...]],
    outs: tuple[list[str], tuple[torch.Tensor, ...]],
) -> dict[str, Any]:
    """A part's manifest entry without its codecs: device, files with their sha256, input and output tensors."""
    files = {
        b: {"path": f"{stem}{ext}", "sha256": sha256_file(out / f"{stem}{ext}")}
        for b, ext in (("torchscript", ".pt"), ("onnx", ".onnx"))
    }
    in_shapes, out_shapes = _onnx_shapes(out / f"{stem}.onnx")
    return {
        "device": device,
        "files": files,
        "inputs": [_tensor_entry(n, t, d) for n, t, d in zip(*ins, in_shapes, strict=True)],
        "outputs": [_tensor_entry(n, t, d) for n, t, d in zip(*outs, out_shapes, strict=True)],
    }


def _tensor_entry(name: str, tensor: torch.Tensor, shape: list[int | None]) -> dict[str, Any]:
    """Name, shape (``None`` on a dynamic axis, as exported), example shape and dtype of one tensor."""
    return {
        "name": name,
        "shape": shape,
        "example_shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
    }


def _codec_entry(plan: DeploymentPlan, cut: int) -> dict[str, Any]:
    c = plan.cuts[cut]
    return {"cut": cut, "compressor": c.compressor, "params": c.compressor_params, "payload_bytes": c.payload_bytes}


def _check_sequential(plan: DeploymentPlan, segments: Sequence[nn.Module]) -> None:
    if any(s.part != "main" for s in plan.segments) or len(segments) != len(plan.segments):
        raise ValueError(
            f"need a sequential plan and one segment per device ({len(plan.segments)}), "
            f"got {len(segments)} segments for parts {sorted({s.part for s in plan.segments})}"
        )
