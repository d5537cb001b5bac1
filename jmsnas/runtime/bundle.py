"""Load, run and verify a bundle written by ``export.export_bundle``.

Every file's sha256 is checked against ``manifest.json`` before anything is loaded; the parts
are opened with ``torch.jit.load`` or onnxruntime only, so no jmsnas class and no pickle of
ours is involved. ``verify_bundle`` compares a bundle with the unsplit model it came from.

A bundle of a branched plan (``branched.export_branched_bundle``) names, per part, the ``sources``
of its inputs (earlier parts' outputs); ``Bundle.run`` follows them.

The manifest is validated by ``export.manifest.Manifest`` (an unknown key, a wrong type or a missing
file raises `BundleError` naming the file and the field) and read through its typed fields.

A bundle with early exits (the manifest's ``exits``) has parts that return an exit's logits before
their wire tensors. ``Bundle.run`` computes every part for every sample (the exit logits are set
aside), ``Bundle.run_exits`` is the runtime's decision: after each exit the samples whose top-1
softmax probability (float64) reaches its threshold leave with its logits, and only the others go
on to the next device. An exit whose manifest entry carries a decision unit (paper 000,
``confidence: decision_unit``) compares the unit's certainty on the logits' softmax meta-features instead
(``jmsnas.exits.decision``, the same code as in-process). With an Exit Predictor (the manifest's
``predictor``, paper 004) ``run_exits`` runs it first and computes exit k's head only for the samples whose
score reaches its γ; the others run the part's ``skip_files`` (the part without its head).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jmsnas.errors import BundleError
from jmsnas.export.manifest import MANIFEST, Backend, FileEntry, Manifest, PartExit, sha256_file

__all__ = [
    "Backend",
    "Bundle",
    "BundleCheck",
    "BundleError",
    "load_bundle",
    "read_manifest",
    "run_bundle",
    "sha256_file",
    "verify_bundle",
]

Runner = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its validated manifest and one runner per device, in order."""

    spec: Manifest
    runners: tuple[Runner, ...]
    #: The Exit Predictor's runner (the manifest's ``predictor``), and per part with an exit the part
    #: without its head (its ``skip_files``); None and empty without a predictor.
    predictor: Runner | None = None
    skip_runners: Mapping[int, Runner] = field(default_factory=dict)

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as plain JSON data (``spec`` is the same, typed)."""
        return self.spec.to_dict()

    def run(self, x: torch.Tensor, record: list[tuple[torch.Tensor, ...]] | None = None) -> tuple[torch.Tensor, ...]:
        """Run every device in order on network input ``x``; returns the last device's outputs.

        Args:
            x: the network input.
            record: when given, each part's input tensors are appended to it, in order.
        """
        values: tuple[torch.Tensor, ...] = (x,)
        produced: list[tuple[torch.Tensor, ...]] = []
        for m, runner in enumerate(self.runners):
            sources = self.spec.parts[m].sources
            if sources is not None:  # a branched bundle: inputs from named earlier parts (-1: the input)
                values = tuple(x if j < 0 else produced[j][k] for j, k in sources)
            if record is not None:
                record.append(values)
            values = runner(values)
            produced.append(values)
            if self.exit_of(m) is not None:
                values = values[1:]  # the exit's logits; the rest goes on the wire
        return values

    @cached_property
    def decision_units(self) -> dict[int, Any]:
        """Per part with an exit that has one, its decision unit (built once from the manifest's data)."""
        from jmsnas.exits.decision import DecisionUnit

        out = {}
        for m, part in enumerate(self.spec.parts):
            if part.exit is not None and part.exit.decision_unit is not None:
                try:
                    out[m] = DecisionUnit.from_dict(part.exit.decision_unit)
                except ValueError as exc:
                    raise BundleError(f"{exc}", field=f"parts[{m}].exit.decision_unit") from None
        return out

    def exit_confidence(self, part: int, logits: torch.Tensor) -> torch.Tensor:
        """``[B]`` float64: what part ``part``'s exit compares with its threshold (``>=``): the top-1 softmax
        probability, or the certainty of the exit's decision unit when the manifest has one."""
        from jmsnas.exits.decision import exit_score  # not at the top: jmsnas.exits imports jmsnas.export

        return exit_score(logits, self.decision_units.get(part))

    def exit_of(self, part: int) -> PartExit | None:
        """The manifest's ``exit`` entry of part ``part`` (threshold, logits name), or None."""
        return self.spec.parts[part].exit

    def exit_scores(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[B, K]``: the Exit Predictor's sigmoid scores on network input ``x`` (None without a predictor)."""
        return None if self.predictor is None else torch.sigmoid(self.predictor((x,))[0].float())

    @cached_property
    def adaptive(self) -> Any:
        """The manifest's adaptive thresholds read back once (``exits.adaptive_fit.StoredAdaptive``), or None."""
        from jmsnas.exits.adaptive_fit import StoredAdaptive  # noqa: PLC0415  (jmsnas.exits imports jmsnas.export)

        return None if self.spec.adaptive is None else StoredAdaptive.from_entry(self.spec.adaptive.model_dump())

    def operating_point(self, bandwidth_mbps: float | None) -> tuple[list[float], list[float] | None, Any]:
        """The exits' thresholds and the predictor's γs to use: the manifest's, or with ``bandwidth_mbps`` (Mbit/s on
        the adaptive cut) the adaptive thresholds' repaired prediction, returned third (an ``OperatingPoint``).

        Raises:
            BundleError: a bandwidth for a bundle without adaptive thresholds.
        """
        lams = [p.exit.threshold for p in self.spec.parts if p.exit is not None]
        gams = None if self.spec.predictor is None else list(self.spec.predictor.gammas)
        if bandwidth_mbps is None:
            return lams, gams, None
        if self.adaptive is None:
            raise BundleError("this bundle has no adaptive thresholds (exits.adaptive); serve it without a "
                              "bandwidth", field="adaptive")
        point = self.adaptive.point(bandwidth_mbps)
        return point.thresholds, point.gammas if point.gammas is not None else gams, point

    def run_exits(self, x: torch.Tensor, computed: torch.Tensor | None = None,
                  bandwidth_mbps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run with early exits; returns ``(logits [B, P], exit index [B])``, the final classifier last.

        With an Exit Predictor in the manifest it runs first (Algorithm 1 of paper 004): at exit k only the
        samples whose score reaches ``gammas[k]`` run the part with its head (and may leave); the others run
        the part without it (``skip_files``). ``computed`` ([B, K] bool, when given) is set where a sample
        ran exit k's head. With ``bandwidth_mbps`` the thresholds and γs are the adaptive ones
        (``operating_point``).

        Raises:
            BundleError: a wire tensor without the batch as its first axis (exited samples cannot be dropped).
        """
        batch = x.shape[0]
        active = torch.arange(batch)
        exit_index = torch.full((batch,), -1, dtype=torch.long)
        logits: torch.Tensor | None = None
        values: tuple[torch.Tensor, ...] = (x,)
        scores = self.exit_scores(x)
        lams, gams, _ = self.operating_point(bandwidth_mbps)
        k = 0
        for m, runner in enumerate(self.runners):
            exit_ = self.exit_of(m)
            if exit_ is None and m < len(self.runners) - 1:
                values = runner(values)
                continue
            run = torch.ones(len(active), dtype=torch.bool)  # the rows that compute this exit's head
            if exit_ is None:  # the final classifier: everyone left leaves
                outputs, leave = runner(values), run
            else:
                if scores is not None:
                    assert gams is not None
                    run = scores[active, k] >= gams[k]
                outputs, leave = self._exit_part(m, values, run), torch.zeros(len(active), dtype=torch.bool)
                if run.any():
                    leave[run] = self.exit_confidence(m, outputs[0]) >= lams[k]
                if computed is not None:
                    computed[active[run], k] = True
            if logits is None and outputs[0].shape[0]:
                logits = outputs[0].new_zeros((batch, outputs[0].shape[-1]))
            if leave.any():
                assert logits is not None
                logits[active[leave]] = outputs[0][leave[run]]
            exit_index[active[leave]] = k
            k += 1
            keep = ~leave
            if not keep.any():
                break
            values = tuple(self._rows(v, keep, m) for v in outputs[1:])
            active = active[keep]
        assert logits is not None
        return logits, exit_index

    def _exit_part(self, m: int, values: tuple[torch.Tensor, ...], run: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Part ``m`` (with an exit) on ``values``: the head's logits for the ``run`` rows first, then the wire
        tensors of every row (the ``~run`` rows from the part without its head)."""
        if bool(run.all()):
            return self.runners[m](values)
        with_head = self.runners[m](tuple(self._rows(v, run, m) for v in values)) if run.any() else None
        bare = self.skip_runners[m](tuple(self._rows(v, ~run, m) for v in values))
        if with_head is None:
            return (torch.empty(0), *bare)
        wire = []
        for a, b in zip(with_head[1:], bare, strict=True):
            full = a.new_empty((len(run), *a.shape[1:]))
            full[run], full[~run] = a, b
            wire.append(full)
        return (with_head[0], *wire)

    def _rows(self, value: torch.Tensor, keep: torch.Tensor, part: int) -> torch.Tensor:
        if value.dim() == 0 or value.shape[0] != keep.shape[0]:
            raise BundleError(f"part {part} sends a tensor of shape {tuple(value.shape)} without the batch "
                              f"({keep.shape[0]}) first; exited samples cannot be dropped from it")
        return value[keep]


@dataclass(frozen=True)
class BundleCheck:
    """How a bundle's outputs compare with the unsplit model's on the same inputs."""

    max_abs_diff: float
    top1_agreement: float
    samples: int


def load_bundle(bundle_dir: str | Path, backend: Backend = "torchscript") -> Bundle:
    """Check every file's hash, then load each device's part for ``backend``.

    Raises:
        BundleError: missing or invalid manifest, a missing file, or a hash that does not match.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    for part in manifest.parts:
        for entry in (part.files.torchscript, part.files.onnx):
            _verify_file(root, entry)
    skips = {m: part.exit.skip_files for m, part in enumerate(manifest.parts)
             if part.exit is not None and part.exit.skip_files is not None}
    if manifest.predictor is not None:
        for files in (manifest.predictor.files, *skips.values()):
            for entry in (files.torchscript, files.onnx):
                _verify_file(root, entry)
        missing = [m for m, part in enumerate(manifest.parts) if part.exit is not None and m not in skips]
        if missing or len(manifest.predictor.gammas) != len(skips):
            raise BundleError(f"a bundle with an Exit Predictor needs one gamma ({len(manifest.predictor.gammas)} "
                              f"given) and skip_files per exit part (missing on parts {missing})",
                              file=root / MANIFEST, field="predictor")
    load = _load_torchscript if backend == "torchscript" else _load_onnx
    runners = tuple(load(root / part.files.of(backend).path) for part in manifest.parts)
    if manifest.predictor is None:
        return Bundle(manifest, runners)
    return Bundle(manifest, runners, load(root / manifest.predictor.files.of(backend).path),
                  {m: load(root / files.of(backend).path) for m, files in skips.items()})


def read_manifest(root: str | Path) -> Manifest:
    """The validated ``manifest.json`` of a bundle folder.

    Raises:
        BundleError: missing file, invalid JSON, not a jmsnas bundle (``format``), an unknown key, a
            wrong type or a missing field; names the file and the field.
    """
    return Manifest.load(Path(root) / MANIFEST)


def _verify_file(root: Path, entry: FileEntry) -> None:
    name = entry.path
    if Path(name).name != name:
        raise BundleError(f"file {name!r} must be a plain name inside the bundle", file=root / MANIFEST)
    path = root / name
    if not path.is_file():
        raise BundleError("file listed in the manifest is missing", file=path)
    if sha256_file(path) != entry.sha256:
        raise BundleError(
            "sha256 does not match the manifest: the file was changed after export; do not load it", file=path
        )


def _load_torchscript(path: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated")  # still the format we ship
        module = torch.jit.load(str(path), map_location="cpu")

    def run(values: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            out = module(*values)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    return run


def _load_onnx(path: Path) -> Runner:
    import onnxruntime as ort  # noqa: PLC0415  (only needed for this backend)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(values: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        feeds = {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}
        return tuple(torch.from_numpy(o) for o in session.run(None, feeds))

    return run


def run_bundle(bundle_dir: str | Path, x: torch.Tensor, backend: Backend = "torchscript") -> tuple[torch.Tensor, ...]:
    """Load the bundle (hashes checked) and run its parts in order on ``x``; returns the final outputs.

    A bundle with exits applies their thresholds (``Bundle.run_exits``) and returns ``(logits, exit index)``.
    """
    bundle = load_bundle(bundle_dir, backend)
    return bundle.run_exits(x) if bundle.spec.exits else bundle.run(x)


def verify_bundle(
    bundle_dir: str | Path, reference_model: nn.Module, inputs: Sequence[torch.Tensor], backend: Backend = "torchscript"
) -> BundleCheck:
    """Compare the bundle's logits with ``reference_model``'s on each batch of ``inputs``.

    Without lossy compressors ``max_abs_diff`` should be at most ~1e-5 (TorchScript) or ~1e-4
    (ONNX); with them, ``top1_agreement`` is the figure that matters.
    """
    bundle = load_bundle(bundle_dir, backend)
    worst, agree, total = 0.0, 0, 0
    reference_model.eval()
    for x in inputs:
        with torch.no_grad():
            expected = reference_model(x)
        got = bundle.run(x)[0]
        worst = max(worst, float((got - expected).abs().max()))
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        total += int(expected.shape[0])
    return BundleCheck(worst, agree / max(total, 1), total)
