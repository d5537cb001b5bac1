"""Splitting a network over devices: which device runs which contiguous run of layers.

- ``chain``: the exact split on a chain of devices (paper 003 eq. (1)) by dynamic programming,
  ``best_chain_split``, and ``chain_latency``, eq. (1) for given boundaries with gradients.
- ``plan``: ``plan_sequential`` (chain, or the best path of a mesh) and ``plan_branched``
  (parallel branches on a mesh, eq. (2)), both exact, giving a ``DeploymentPlan`` (``plan.json``).
- ``split``: one module per device for an ``ArchNet`` or any ``torch.fx``-traceable model; a cut
  across a skip connection carries every live tensor.
- ``compress``: compressors at a cut (``none``, 8-bit ``quantize``); ``bottleneck``: a learned
  autoencoder plus 8 bits (paper 004), trained by distillation from the unsplit model.
- ``export`` / ``bundle``: ``bundle/`` with one TorchScript and one ONNX file per device and a
  hashed ``manifest.json``; loading, running and verifying it without jmsnas classes.
"""

from __future__ import annotations

from jmsnas.partition.bottleneck import bottleneck_codec, fit_bottleneck, make_bottleneck
from jmsnas.partition.bundle import Bundle, BundleCheck, BundleError, load_bundle, run_bundle, verify_bundle
from jmsnas.partition.chain import ChainSplit, best_chain_split, chain_latency, sent_bytes
from jmsnas.partition.compress import COMPRESSORS, build_codec, calibrate, compressed_bytes
from jmsnas.partition.export import calibrate_plan, device_parts, export_bundle
from jmsnas.partition.plan import CutPlan, DeploymentPlan, DeviceSegment, TensorSpec, plan_branched, plan_sequential
from jmsnas.partition.split import (
    cut_tensors,
    run_segments,
    split_archnet,
    split_graph,
    split_layers,
    trace_units,
    unit_output_bytes,
)

__all__ = [
    "COMPRESSORS",
    "Bundle",
    "BundleCheck",
    "BundleError",
    "ChainSplit",
    "CutPlan",
    "DeploymentPlan",
    "DeviceSegment",
    "TensorSpec",
    "best_chain_split",
    "bottleneck_codec",
    "build_codec",
    "calibrate",
    "calibrate_plan",
    "chain_latency",
    "compressed_bytes",
    "cut_tensors",
    "device_parts",
    "export_bundle",
    "fit_bottleneck",
    "load_bundle",
    "make_bottleneck",
    "plan_branched",
    "plan_sequential",
    "run_bundle",
    "run_segments",
    "sent_bytes",
    "split_archnet",
    "split_graph",
    "split_layers",
    "trace_units",
    "unit_output_bytes",
    "verify_bundle",
]
