"""Payload against accuracy at each cut of a deployed network: the report's "payload vs accuracy" figure.

For every cut of the plan, the cut's compressor is swapped for each calibrated kind (``none``, then
``quantize`` at 8, 4 and 2 bits) while every other cut keeps what was deployed; the split network is run
on the test split and the bytes the swapped cut sends for one sample are counted the way the deploy
stage counts them (the encoder's output, ``plan.wire.tensor_bytes``). The deployed compressor is one more
point. A cut whose compressor replaced the sending device's layers (``first_cut_only``, the distilled
student head) has no raw tensor to quantize: only its deployed point is given.

Nothing is trained here: the calibrated kinds need one calibration pass, a learned kind keeps its codec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from jmsnas.compress.quantize import calibrate
from jmsnas.compress.registry import COMPRESSORS
from jmsnas.export.split import run_segments
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.wire import tensor_bytes
from jmsnas.runtime.verify import SplitPipeline, accuracy

#: The calibrated compressors each cut is tried with: (kind, bits on the wire).
SWEEP: tuple[tuple[str, int], ...] = (("none", 32), ("quantize", 8), ("quantize", 4), ("quantize", 2))


def compressor_label(kind: str, params: Mapping) -> str:
    """``none``, ``quantize-8b``, ``autoencoder-8b``: the kind with its bits where it has any."""
    return kind if kind == "none" or "bits" not in params else f"{kind}-{int(params['bits'])}b"


def _crossing(segments: Sequence[nn.Module], k: int, calib: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Per calibration batch, what segment ``k`` sends (the raw tensors, before any encoder)."""
    out = []
    with torch.no_grad():
        for x in calib:
            out.append(run_segments(list(segments[:k + 1]), x))
    return out


def _sent_bytes(pipe: SplitPipeline, k: int, x: torch.Tensor) -> float:
    """Bytes the encoder of cut ``k`` puts on the wire for the one sample ``x``."""
    values: tuple[torch.Tensor, ...] = (x,)
    with torch.no_grad():
        for part in pipe.parts[:k + 1]:
            values = part(*values)
    return float(sum(tensor_bytes(v) for v in values))


def payload_sweep(plan: DeploymentPlan, segments: Sequence[nn.Module],
                  codecs: Mapping[int, tuple[nn.Module, nn.Module]],
                  test: Sequence[tuple[torch.Tensor, torch.Tensor]], calib: Sequence[torch.Tensor],
                  deployed_acc: float) -> list[dict]:
    """Per cut and compressor, the bytes sent and the test accuracy of the split network.

    Args:
        plan: the deployed, calibrated sequential plan (its cuts name the deployed compressors).
        segments: one module per device, as deployed (learned compressors fitted).
        codecs: the learned cuts' ``(encoder, decoder)`` modules, by cut index.
        test: the test batches.
        calib: input batches that calibrate the swapped quantizers.
        deployed_acc: the deployed split network's test accuracy (the deployed points).

    Returns:
        One dict per point: ``cut``, ``src``, ``dst``, ``compressor`` (a `compressor_label`),
        ``payload_bytes``, ``test_acc``, ``deployed``.
    """
    points = []
    for k, cut in enumerate(plan.cuts):
        where = {"cut": k, "src": cut.src, "dst": cut.dst}
        deployed = compressor_label(cut.compressor, cut.compressor_params)
        points.append({**where, "compressor": deployed, "payload_bytes": float(cut.payload_bytes),
                       "test_acc": float(deployed_acc), "deployed": True})
        if COMPRESSORS[cut.compressor].first_cut_only:
            continue
        samples = _crossing(segments, k, calib)
        others = {j: c for j, c in codecs.items() if j != k}
        for kind, bits in SWEEP:
            params = calibrate(kind, samples, bits=bits) if kind != "none" else {}
            if compressor_label(kind, params) == deployed:
                continue
            cuts = list(plan.cuts)
            cuts[k] = replace(cut, compressor=kind, compressor_params=params)
            pipe = SplitPipeline(segments, replace(plan, cuts=tuple(cuts)), others).eval()
            points.append({**where, "compressor": compressor_label(kind, params),
                           "payload_bytes": _sent_bytes(pipe, k, calib[0][:1]), "test_acc": accuracy(pipe, test),
                           "deployed": False})
    return points
