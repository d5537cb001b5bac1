"""The chosen EENN as a deployment plan with exits, and as an exported bundle.

``plan_with_exits`` re-evaluates the plan with its exits (DESIGN: "exits change the expected
latency, so the planner re-evaluates the plan with its exits before export"): the worst case
becomes ``total_latency_ms`` (every head run) and the expected latency over the calibration
termination rates ``mean_latency_ms``; each exit becomes an ``ExitPlan`` with its threshold.

``export_eenn`` writes the bundle through ``partition.export.export_bundle``: each device with an
exit returns the exit's logits and its features (no data-dependent control flow in the graph), and
the manifest records each threshold and logits name, so the runtime (``Bundle.run_exits``) decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from jmsnas.exits.result import ExitsResult
from jmsnas.export.writer import export_bundle
from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment, ExitPlan


def plan_with_exits(result: ExitsResult, topology_kind: str = "chain",
                    base_plan: DeploymentPlan | None = None) -> DeploymentPlan:
    """The EENN's plan: ``base_plan`` (the one ``augment`` kept) or one built from the chosen placement.

    Args:
        result: what ``augment`` returned.
        topology_kind: ``"chain"`` or ``"mesh"`` (the topology's kind; a mesh is used along one path).
        base_plan: the plan ``augment`` was given, whose cuts (compressors, tensors) are kept.
    """
    p = result.placement
    if base_plan is not None:
        if tuple(base_plan.boundaries()) != p.boundaries or tuple(base_plan.devices) != p.path:
            raise ValueError(f"the base plan's split {base_plan.boundaries()} on {base_plan.devices} is not the "
                             f"chosen one {list(p.boundaries)} on {list(p.path)}")
        plan = base_plan
    else:
        segments = tuple(DeviceSegment(name, "main", p.boundaries[m], p.boundaries[m + 1], p.compute_ms[m])
                         for m, name in enumerate(p.path))
        cuts = tuple(CutPlan(a, b, p.payload_bytes[m], p.link_ms[m])
                     for m, (a, b) in enumerate(zip(p.path, p.path[1:], strict=False)))
        plan = DeploymentPlan(topology_kind, segments, cuts, p.worst_latency_ms)
    rates = result.calibration.termination if result.calibration is not None else (1.0,)
    exits = [ExitPlan(dev, loc, thr, int(result.net.head_macs[k]), p.exit_latency_ms[k], float(rates[k]))
             for k, (dev, loc, thr) in enumerate(zip(p.exit_devices, p.exits, result.thresholds, strict=True))]
    return plan.with_exits(exits, p.worst_latency_ms, p.mean_latency_ms(rates) if exits else p.worst_latency_ms)


def exit_heads_by_device(result: ExitsResult, plan: DeploymentPlan) -> dict[int, tuple]:
    """Per device index of ``plan``, the exit head and threshold it runs, and its decision unit's data if it has one."""
    index = {name: m for m, name in enumerate(plan.devices)}
    out: dict[int, tuple] = {}
    for dev, loc, thr in zip(result.placement.exit_devices, result.exits, result.thresholds, strict=True):
        unit = result.decision_units.get(loc)
        out[index[dev]] = (result.heads[loc].eval(), thr) + ((unit.to_dict(),) if unit is not None else ())
    return out


def export_eenn(result: ExitsResult, plan: DeploymentPlan, example_input: torch.Tensor, out_dir: str | Path,
                codecs: Mapping[int, tuple[nn.Module, nn.Module]] | None = None) -> Path:
    """Export the EENN's bundle: one TorchScript and one ONNX file per device, exits in the manifest.

    Args:
        result: what ``augment`` returned (its graph's model is the backbone, fine-tuned or not).
        plan: ``plan_with_exits(result, ...)``, calibrated (``partition.export.calibrate_plan``) if its
            compressors need it.
        example_input: a network input.
        out_dir: the bundle folder.
        codecs: learned compressors per cut, as ``export_bundle`` takes them.

    Returns:
        The path of ``manifest.json``.
    """
    segments = result.graph.segments(plan.boundaries())
    return export_bundle(segments, plan, example_input, out_dir, codecs, exits=exit_heads_by_device(result, plan))
