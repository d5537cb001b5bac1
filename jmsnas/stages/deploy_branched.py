"""The deploy stage for a network with parallel branches (a branched search space on a mesh).

``deploy_branched_choice`` reads the choice's ``arch.json`` (``kind: branched``) and ``model.pt``,
places it exactly by eq. (2) (`jmsnas.plan.branched_costs`: the pre part over the chain devices
and the root, branch i whole on branch device i, the post part from the join on), writes
``plan.json`` and, when the experiment exports, ``bundle/`` (`jmsnas.export.branched`, one part per
device with named sources) verified against the unsplit network on test batches. ``deploy.json``
is a ``DeployRecord`` like a sequential choice's; ``boundaries`` index the flat layer list
``[stem, pre..., branch 0..., ..., post..., head]``, one contiguous range per device in plan order.

Only lossless cuts are built for branched networks (``--check`` refuses others), so the split
network computes the unsplit one: ``test_acc_split`` is measured on the bundle when there is one,
and is the unsplit accuracy otherwise (a note says which). The sequential baselines (device-only,
cloud-only, Neurosurgeon, HiveMind) place a chain of layers and are not computed for a branched
network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from jmsnas.builders import datamodule as build_datamodule
from jmsnas.builders import latency_models
from jmsnas.config import Experiment
from jmsnas.data import JmsnasDataModule
from jmsnas.export.branched import calibrate_branched, export_branched_bundle
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.branched_costs import plan_branched_arch
from jmsnas.runtime.bundle import load_bundle
from jmsnas.runtime.verify import accuracy, verify_parts
from jmsnas.space.branched import BranchedArchSpec, BranchedNet, build_branched
from jmsnas.stages.deploy_record import CutRecord, DeployRecord

PLAN_JSON = "plan.json"
BUNDLE_DIR = "bundle"


def is_branched_choice(choice_dir: Path) -> bool:
    """Whether the choice's ``arch.json`` is a network with parallel branches."""
    try:
        return json.loads((choice_dir / "arch.json").read_text()).get("kind") == "branched"
    except (OSError, ValueError, AttributeError):
        return False


def load_branched_choice(choice_dir: Path) -> tuple[BranchedArchSpec, BranchedNet]:
    """The branched network of a choice folder: ``arch.json`` and the weights in ``model.pt`` (no pickle)."""
    spec = BranchedArchSpec.load_json(choice_dir / "arch.json")
    model = build_branched(spec)
    model.load_state_dict(torch.load(choice_dir / "model.pt", map_location="cpu", weights_only=True))
    return spec, model.eval()


def flat_boundaries(spec: BranchedArchSpec, plan: DeploymentPlan) -> list[int]:
    """Per plan segment, where its layers start in ``[stem, pre..., branch 0..., ..., post..., head]``; then the end."""
    offsets, at = {"pre": 0}, 1 + len(spec.pre)
    for i, branch in enumerate(spec.branches):
        offsets[f"branch{i}"] = at
        at += len(branch)
    offsets["post"] = at
    return [offsets[s.part] + s.start for s in plan.segments] + [at + len(spec.post) + 1]


def deploy_branched_choice(exp: Experiment, choice_dir: Path, *, datamodule: JmsnasDataModule | None = None,
                           seed: int | None = None) -> DeployRecord:
    """Plan (eq. (2)), export and verify the branched network in ``choice_dir``; write its ``deploy.json``."""
    torch.manual_seed(exp.config.seed if seed is None else seed)
    spec, model = load_branched_choice(choice_dir)
    dm = datamodule if datamodule is not None else build_datamodule(exp)
    dm.setup()
    calib = [x for x, _ in list(dm.train_dataloader())[:4]]
    plan = calibrate_branched(plan_branched_arch(spec, latency_models(exp), exp.topology), model, calib)
    plan.to_json(choice_dir / PLAN_JSON)
    test = list(dm.test_dataloader())
    acc_full = accuracy(model, test)
    update: dict = {}
    if exp.config.export is not None:
        export_branched_bundle(model, plan, calib[0], choice_dir / BUNDLE_DIR)
        bundle = load_bundle(choice_dir / BUNDLE_DIR, "onnx")
        acc_split = accuracy(lambda x: bundle.run(x)[0], test)
        update["bundle"] = BUNDLE_DIR
        if exp.config.export.verify:  # every cut is lossless ('none'): held to the lossless tolerance
            update["verify"] = verify_parts(choice_dir / BUNDLE_DIR, model, test[:4], lossless=True)
        note = "test_acc_split: the ONNX bundle run part by part on the test split"
    else:
        acc_split = acc_full
        note = "test_acc_split: lossless cuts, so the split computes the unsplit network (no bundle exported)"
    record = DeployRecord(
        arch=spec.compact(), plan=PLAN_JSON, predicted_latency_ms=plan.total_latency_ms, devices=plan.devices,
        boundaries=flat_boundaries(spec, plan),
        cuts=[CutRecord(src=c.src, dst=c.dst, compressor=c.compressor, payload_bytes=c.payload_bytes,
                        link_ms=c.link_ms) for c in plan.cuts],
        mean_latency_ms=plan.mean_latency_ms, input_bytes=float(calib[0][0].numel() * 4), test_acc_unsplit=acc_full,
        test_acc_split=acc_split, acc_change_pp=100 * (acc_split - acc_full),
        notes=[note, "baselines: the sequential placements (device-only, cloud-only, Neurosurgeon, HiveMind) do not "
               "apply to parallel branches"], baselines=[], **update)
    record.save(choice_dir / "deploy.json")
    return record
