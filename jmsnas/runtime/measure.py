"""Time a bundle's exported parts where they run, and put the figures beside the plan's predictions.

The design promises measured and predicted latency side by side. Every part that runs on a device
with a measured profile is timed here, on this machine, with the profile's timing method
(`jmsnas.latency.timing`: round-robin blocks, median of block minima; its thread count, warm-up,
blocks and block size; batch 1; the contention guard's reference timed with every block) for both
exported formats: ONNX Runtime (an ``InferenceSession`` with the profile's intra-op thread count)
and TorchScript. A part on an analytic device is not measured ("analytic: not measured"), nor one
whose profile was measured on another processor, thread count or torch ("profile from another
machine: not measured here"): timing it here would compare two machines.

The prediction of a part is its segment's ``compute_ms`` in the plan: the layers it runs. What the
exported part runs besides (an exit head, a compressor's encoder or decoder) is not in that figure,
so a part with them is expected to come out slower; the report flags every part more than
``flag_above`` (15 %) off its prediction.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from jmsnas.export.manifest import PartEntry
from jmsnas.latency.guard import ContentionError, ContentionGuard
from jmsnas.latency.profiler import measurement_conditions
from jmsnas.latency.timing import time_callables
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.runtime.bundle import Bundle, load_bundle
from jmsnas.topology import Device

#: A part whose measured latency is more than this far from its prediction is flagged.
FLAG_ABOVE = 0.15
#: Conditions a profile must share with this machine for its parts to be timed here.
_SAME_MACHINE = ("device", "processor", "torch")


def profile_meta(device: Device, profiles_dir: str | Path) -> dict[str, Any] | None:
    """How a device's profile was measured (its JSON), or None for an analytic device."""
    if device.analytic is not None:
        return None
    path = Path(profiles_dir) / f"{device.profile}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def part_inputs(bundle: Bundle, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The input tensors of every part when the bundle runs on ``x`` (exits ignored)."""
    seen: list[tuple[torch.Tensor, ...]] = []
    bundle.run(x, record=seen)
    return seen


def _onnx_call(path: Path, values: tuple[torch.Tensor, ...], threads: int) -> Callable[[], object]:
    import onnxruntime as ort  # noqa: PLC0415  (only needed here)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), values, strict=True)}
    return lambda: session.run(None, feeds)


def _torchscript_call(path: Path, values: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def call() -> object:
        with torch.inference_mode():
            return module(*values)

    return call


def _why_not_measured(meta: Mapping[str, Any] | None) -> str | None:
    if meta is None:
        return "analytic: not measured"
    here = measurement_conditions(int(meta.get("threads", 1)), str(meta.get("device", "cpu")))
    if meta.get("device", "cpu") != "cpu" or any(meta.get(k) != here[k] for k in _SAME_MACHINE):
        return "profile from another machine: not measured here"
    return None


def measure_parts(bundle_dir: str | Path, plan: DeploymentPlan, x: torch.Tensor,
                  profiles: Mapping[str, Mapping[str, Any] | None], *, guard: ContentionGuard | None = None,
                  flag_above: float = FLAG_ABOVE) -> dict[str, Any]:
    """Time each part of a sequential bundle on this machine at batch 1; measured beside predicted.

    Args:
        bundle_dir: the exported bundle.
        plan: its plan (per device ``compute_ms`` is the prediction; links stay as predicted).
        x: one network input (its first sample is used).
        profiles: per device name, its profile's JSON metadata (how it was measured), None for analytic.
        guard: the contention guard (default: a fresh one); a part that finds no quiet window is
            reported ``contended`` instead of with figures.
        flag_above: relative error above which a part is flagged.

    Returns:
        ``{"parts": [...], "total": {...}, "method": ...}`` as ``deploy.json["latency_measured"]`` holds it.
    """
    root = Path(bundle_dir)
    guard = guard or ContentionGuard()
    bundle = load_bundle(root, "torchscript")
    inputs = part_inputs(bundle, x[:1])
    parts = [_measure_part(root, m, entry, plan.segments[m].compute_ms, inputs[m], profiles.get(entry.device),
                           guard, flag_above) for m, entry in enumerate(bundle.spec.parts)]
    measured = {b: sum(p.get(f"{b}_ms", p["predicted_ms"]) for p in parts) for b in ("onnx", "torchscript")}
    predicted_compute = sum(p["predicted_ms"] for p in parts)
    links = plan.total_latency_ms - predicted_compute
    total = {"predicted_ms": plan.total_latency_ms, "links_ms_predicted": links,
             **{f"{b}_ms": measured[b] + links for b in measured},
             "note": "measured compute of the measured devices + predicted links and analytic devices"}
    return {"method": "batch 1, round-robin blocks, median of block minima, profile's threads/warm-up/blocks; "
                      "contention guard", "flag_above": flag_above, "parts": parts, "total": total,
            "flagged": [p["device"] for p in parts if p.get("flagged")],
            "guard": {**guard.stats.to_dict(), "speed_index_ms": guard.speed_index_ms}}


def _measure_part(root: Path, m: int, entry: PartEntry, predicted_ms: float,
                  values: tuple[torch.Tensor, ...], meta: Mapping[str, Any] | None, guard: ContentionGuard,
                  flag_above: float) -> dict[str, Any]:
    out: dict[str, Any] = {"part": m, "device": entry.device, "predicted_ms": predicted_ms}
    why = _why_not_measured(meta)
    if why is not None:
        return {**out, "status": why}
    assert meta is not None
    threads = int(meta.get("threads", 1))
    calls = [_onnx_call(root / entry.files.onnx.path, values, threads),
             _torchscript_call(root / entry.files.torchscript.path, values)]
    timing = {"blocks": int(meta.get("blocks", 10)), "block_size": int(meta.get("block_size", 10)),
              "warmup": int(meta.get("warmup", 5)), "threads": threads}

    def block(reference: Callable[[], object]) -> tuple[list[tuple[float, float]], float]:
        times = time_callables([*calls, reference], **timing)
        return times[:-1], times[-1][0]

    try:
        (onnx_ms, _), (ts_ms, _) = guard.measure(block, f"part {m} ({entry.device})", "bundle parts")
    except ContentionError as exc:
        return {**out, "status": f"contended: {exc.message}"}
    out.update(status="measured", onnx_ms=onnx_ms, torchscript_ms=ts_ms)
    if predicted_ms <= 0:  # a device that only relays: no layers planned, nothing to compare
        return {**out, "onnx_rel_err": None, "torchscript_rel_err": None, "flagged": False}
    err = {b: ms / predicted_ms - 1.0 for b, ms in (("onnx", onnx_ms), ("torchscript", ts_ms))}
    return {**out, "onnx_rel_err": err["onnx"], "torchscript_rel_err": err["torchscript"],
            "flagged": abs(err["onnx"]) > flag_above or abs(err["torchscript"]) > flag_above}
