"""Splitting a network over devices: which device runs which contiguous run of layers.

- ``chain``: the exact split on a chain of devices (paper 003 eq. (1)) by dynamic programming,
  ``best_chain_split``, and ``chain_latency``, eq. (1) for given boundaries with gradients.
- ``plan``: ``plan_sequential`` (chain, or the best path of a mesh) and ``plan_branched``
  (parallel branches on a mesh, eq. (2)), both exact, giving a ``DeploymentPlan`` (``plan.json``).
- ``split``: one module per device for an ``ArchNet`` or any ``torch.fx``-traceable model; a cut
  across a skip connection carries every live tensor.
- ``compress``: compressors at a cut (``none``, ``quantize`` to 8/4/2 bits); ``bottleneck``: the
  ``autoencoder`` compressor (paper 004's two training steps); ``distilled``: the
  ``distilled_bottleneck`` compressor, a student head with a bottleneck (paper 002).
- ``export`` / ``bundle``: ``bundle/`` with one TorchScript and one ONNX file per device and a
  hashed ``manifest.json``; loading, running and verifying it without jmsnas classes.
- ``branched``: a network with parallel branches (``BranchedNet``): its payload sizes for
  ``plan_branched``, and its bundle, one part per device of the mesh.
"""

from __future__ import annotations

from jmsnas.partition.bottleneck import AutoencoderFit, fit_autoencoder, make_autoencoder
from jmsnas.partition.branched import BranchedNet, branched_sizes, calibrate_branched, export_branched_bundle
from jmsnas.partition.bundle import Bundle, BundleCheck, BundleError, load_bundle, run_bundle, verify_bundle
from jmsnas.partition.chain import ChainSplit, best_chain_split, chain_latency, sent_bytes
from jmsnas.partition.compress import COMPRESSORS, Compressor, build_codec, calibrate, compressed_bytes
from jmsnas.partition.distilled import DistilledFit, fit_student_head, make_student_head
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
    "AutoencoderFit",
    "BranchedNet",
    "Bundle",
    "BundleCheck",
    "BundleError",
    "ChainSplit",
    "Compressor",
    "CutPlan",
    "DeploymentPlan",
    "DeviceSegment",
    "DistilledFit",
    "TensorSpec",
    "best_chain_split",
    "branched_sizes",
    "calibrate_branched",
    "build_codec",
    "calibrate",
    "calibrate_plan",
    "chain_latency",
    "compressed_bytes",
    "cut_tensors",
    "device_parts",
    "export_branched_bundle",
    "export_bundle",
    "fit_autoencoder",
    "fit_student_head",
    "load_bundle",
    "make_autoencoder",
    "make_student_head",
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
