"""A bundle's ``manifest.json``: its schema (``Manifest``) and the entries the exporters write into it.

The manifest is the file a stranger sends you with a bundle: it names every part's files with
their sha256, every tensor on the wire (``c{k}.{name}`` for cut k, ``p{m}.out{k}`` in a branched
bundle; ``input`` and ``output{j}`` at the ends) with its shape and dtype, the codec of every cut,
early exits, and the plan. It stays plain JSON (``json.load`` reads it without jmsnas);
``Manifest.load`` validates it (``extra="forbid"``, a ``version`` key), raising
`jmsnas.errors.BundleError` naming the file and the field.

The entry builders (``part_files``, ``tensor_entry``, ``codec_entry``,
``wire_names``) are shared by ``writer.export_bundle`` (sequential plans) and
``branched.export_branched_bundle``; ``write_manifest`` checks the result against ``Manifest``
and writes it atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from jmsnas.errors import BundleError
from jmsnas.export.formats import onnx_shapes
from jmsnas.io import load_artifact, write_json
from jmsnas.plan.artifact import DeploymentPlan

MANIFEST = "manifest.json"
FORMAT = "jmsnas-bundle"
#: The ``version`` a manifest is written with; a manifest without one is version 1.
MANIFEST_VERSION = 1

Backend = Literal["torchscript", "onnx"]
#: A part's inputs or outputs as the exporters see them: tensor names and example tensors.
NamedTensors = tuple[list[str], tuple[torch.Tensor, ...]]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorEntry(_Entry):
    """One tensor a part takes or returns: ``shape`` has ``None`` on a dynamic axis, as exported."""

    name: str
    shape: list[int | None]
    example_shape: list[int]
    dtype: str


class FileEntry(_Entry):
    """One file of a part: its name inside the bundle and the sha256 of its bytes."""

    path: str
    sha256: str


class PartFiles(_Entry):
    """A part's two files, one per backend."""

    torchscript: FileEntry
    onnx: FileEntry

    def of(self, backend: Backend) -> FileEntry:
        """The file ``backend`` loads."""
        return self.torchscript if backend == "torchscript" else self.onnx


class CodecEntry(_Entry):
    """The compressor of one cut: the sending part's encoder or the receiving part's decoder.

    ``src`` and ``dst`` (the link) are written by branched bundles only.
    """

    cut: int
    compressor: str
    params: dict[str, Any]
    payload_bytes: float
    src: str | None = None
    dst: str | None = None


class PartExit(_Entry):
    """An early exit in a part: its logits come first; a sample leaves when its confidence reaches ``threshold``.

    ``confidence`` says what is compared with the threshold: ``max_softmax`` (the top-1 probability, float64)
    or ``decision_unit`` (paper 000: the certainty of the unit in ``decision_unit``, plain data as
    ``jmsnas.exits.decision.DecisionUnit.to_dict`` writes it: ``kind``, the ``features`` it reads from the
    softmax (max_prob, margin, sum_p_ln_p, std) and its weights).
    """

    threshold: float
    logits: str
    confidence: Literal["max_softmax", "decision_unit"]
    decision_unit: dict[str, Any] | None = None
    skip_files: PartFiles | None = None


class PredictorEntry(_Entry):
    """Paper 004's Exit Predictor, its own part of the first device: it runs on the network ``input`` first and
    returns one logit per early exit; exit k is computed for a sample only where ``sigmoid(logit_k) >=
    gammas[k]``. Each exit part then has ``skip_files``: the same part without its head, for the samples
    that skip it."""

    device: str
    files: PartFiles
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    onnx_max_abs_diff: float
    gammas: list[float]
    macs: int


class ExitEntry(_Entry):
    """A manifest-level summary of one exit: the part and device it sits on, and its ``PartExit`` fields."""

    part: int
    device: str
    threshold: float
    logits: str
    confidence: Literal["max_softmax", "decision_unit"]


class AdaptiveEntry(_Entry):
    """Paper 004's bandwidth-adaptive thresholds (``jmsnas.exits.adaptive_fit``): told the bandwidth of cut
    ``cut`` (the link after the last exit), the runtime takes the exits' λ (and the predictor's γ) from
    ``regressors`` and repairs a point that would break ``tau_ms`` on the calibration ``stats``."""

    cut: int
    payload_bits: float
    tau_ms: float
    regressors: dict[str, Any]
    part_ms: dict[str, Any]
    stats: dict[str, Any]


class PartEntry(_Entry):
    """What one device runs.

    A sequential bundle writes ``decoder`` (None on the first part) and ``encoder`` (None on the
    last) and, with an exit, ``exit``. A branched bundle writes ``part`` (``"pre"``,
    ``"branch<i>"``, ``"post"``), ``sources`` (per input: the earlier part and output index it
    comes from, part ``-1`` being the network input), ``decoders`` (one per input) and ``encoder``.
    """

    device: str
    files: PartFiles
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    part: str | None = None
    sources: list[tuple[int, int]] | None = None
    decoders: list[CodecEntry | None] | None = None
    decoder: CodecEntry | None = None
    encoder: CodecEntry | None = None
    onnx_max_abs_diff: float
    exit: PartExit | None = None


class Manifest(_Entry):
    """The schema of ``manifest.json``: devices in order, one entry per part, the exits, the plan."""

    format: Literal["jmsnas-bundle"]
    version: int = MANIFEST_VERSION
    devices: list[str]
    parts: list[PartEntry]
    plan: DeploymentPlan
    exits: list[ExitEntry] | None = None
    predictor: PredictorEntry | None = None
    adaptive: AdaptiveEntry | None = None

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and validate a ``manifest.json``.

        Raises:
            BundleError: a missing file, invalid JSON, not a jmsnas bundle (``format``), an unknown
                key, a wrong type or a missing field; names the file and the field.
        """
        return load_artifact(path, cls.model_validate, error=BundleError)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON data, with the keys the file has (absent optional keys stay absent)."""
        return self.model_dump(mode="json", exclude_unset=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wire_names(plan: DeploymentPlan, cut: int, count: int) -> list[str]:
    """Names of the ``count`` tensors on cut ``cut``: ``c{cut}.{name}`` from the plan, else ``c{cut}.t{j}``."""
    names = [t.name for t in plan.cuts[cut].tensors]
    if len(names) != count:
        names = [f"t{j}" for j in range(count)]
    return [f"c{cut}.{name}" for name in names]


def tensor_entry(name: str, tensor: torch.Tensor, shape: list[int | None]) -> dict[str, Any]:
    """Name, shape (``None`` on a dynamic axis, as exported), example shape and dtype of one tensor."""
    return {
        "name": name,
        "shape": shape,
        "example_shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
    }


def codec_entry(plan: DeploymentPlan, cut: int, *, link: bool = False) -> dict[str, Any]:
    """The ``CodecEntry`` of cut ``cut``; with ``link``, also its ``src`` and ``dst`` (branched bundles)."""
    c = plan.cuts[cut]
    entry = {"cut": cut, "compressor": c.compressor, "params": c.compressor_params, "payload_bytes": c.payload_bytes}
    return {**entry, "src": c.src, "dst": c.dst} if link else entry


def part_files(out: Path, stem: str, device: str, ins: NamedTensors, outs: NamedTensors) -> dict[str, Any]:
    """A part's manifest entry without its codecs: device, files with their sha256, input and output tensors.

    Args:
        out: the bundle folder, holding ``{stem}.pt`` and ``{stem}.onnx`` already.
        stem: the part's file name without extension.
        device: the device that runs the part.
        ins: the part's input names and example inputs.
        outs: its output names and example outputs.
    """
    files = {
        b: {"path": f"{stem}{ext}", "sha256": sha256_file(out / f"{stem}{ext}")}
        for b, ext in (("torchscript", ".pt"), ("onnx", ".onnx"))
    }
    in_shapes, out_shapes = onnx_shapes(out / f"{stem}.onnx")
    return {
        "device": device,
        "files": files,
        "inputs": [tensor_entry(n, t, d) for n, t, d in zip(*ins, in_shapes, strict=True)],
        "outputs": [tensor_entry(n, t, d) for n, t, d in zip(*outs, out_shapes, strict=True)],
    }


def write_manifest(out: Path, plan: DeploymentPlan, parts: list[dict[str, Any]],
                   exits: list[dict[str, Any]] | None = None, predictor: dict[str, Any] | None = None,
                   adaptive: dict[str, Any] | None = None) -> Path:
    """Write ``out/manifest.json`` (indented, trailing newline, atomically) and return its path.

    The data is checked against ``Manifest`` first, so what is written is what ``Manifest.load`` reads.

    Args:
        out: the bundle folder.
        plan: the exported plan (its devices, and a copy of it).
        parts: one entry per part, in order (``part_files`` plus codecs).
        exits: the manifest-level exit entries (``ExitEntry``); the key is left out without exits.
        predictor: the Exit Predictor's ``PredictorEntry``; left out without one.
        adaptive: the adaptive thresholds' ``AdaptiveEntry``; left out without them.
    """
    manifest = {"format": FORMAT, "version": MANIFEST_VERSION, "devices": plan.devices, "parts": parts,
                "plan": plan.to_dict()}
    if exits:
        manifest["exits"] = exits
    if predictor is not None:
        manifest["predictor"] = predictor
    if adaptive is not None:
        manifest["adaptive"] = adaptive
    Manifest.model_validate(manifest)  # an exporter bug, not the user's: a plain ValidationError
    path = out / MANIFEST
    write_json(path, manifest, newline=True)
    return path
