"""Export: the bundle reproduces the unsplit model (TorchScript, ONNX), hashes catch tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from partition_specs import tiny_arch_spec
from torch import nn

from jmsnas.export.split import cut_tensors, split_archnet, split_graph, trace_units, unit_output_bytes, units
from jmsnas.export.writer import calibrate_plan, export_bundle
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.planners import plan_sequential
from jmsnas.runtime.bundle import BundleError, load_bundle, run_bundle, verify_bundle
from jmsnas.space.arch import build_model
from jmsnas.space.macs import arch_descriptors
from jmsnas.topology import Device, Link, build_topology


class TinyResidual(nn.Module):
    """A stem and one residual block: a cut inside the block carries the skip too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(x + y), 1), 1))


def _chain(n: int):
    names = [f"d{i}" for i in range(n)]
    links = [Link(a, b, 100.0, 1.0) for a, b in zip(names, names[1:], strict=False)]
    return build_topology("chain", [Device(name) for name in names], links)


@pytest.fixture(scope="module")
def archnet_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A tiny ArchNet exported over three devices (built once: ONNX export takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("archnet")
    torch.manual_seed(0)
    spec = tiny_arch_spec()
    model = build_model(spec).eval()
    out_bytes = [4.0 * d.output_numel for d in arch_descriptors(spec)]
    fast = {"d0": [1.0, 1.0, 90.0, 90.0], "d1": [90.0, 90.0, 1.0, 90.0], "d2": [90.0, 90.0, 90.0, 1.0]}
    plan = plan_sequential(fast, out_bytes, 4.0 * 3 * 16 * 16, _chain(3))
    assert plan.boundaries() == [0, 2, 3, 4]
    x = torch.randn(2, 3, 16, 16)
    export_bundle(split_archnet(model, plan.boundaries()), plan, x, tmp_path / "bundle")
    return model, tmp_path / "bundle"


def test_archnet_bundle_reproduces_model_on_both_backends(archnet_bundle: tuple[nn.Module, Path]) -> None:
    model, bundle = archnet_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["devices"] == ["d0", "d1", "d2"]
    assert manifest["parts"][1]["inputs"] == [
        {"name": "c0.t0", "shape": [None, 8, 8, 8], "example_shape": [2, 8, 8, 8], "dtype": "float32"}
    ]
    assert manifest["parts"][2]["outputs"][0]["shape"] == [None, 5]
    assert all(part["onnx_max_abs_diff"] <= 1e-4 for part in manifest["parts"])
    assert DeploymentPlan.from_dict(manifest["plan"]).boundaries() == [0, 2, 3, 4]
    for part in manifest["parts"]:
        onnx.checker.check_model(str(bundle / part["files"]["onnx"]["path"]))
    inputs = [torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)]  # the batch axis is dynamic
    assert verify_bundle(bundle, model, inputs, "torchscript").max_abs_diff <= 1e-5
    check = verify_bundle(bundle, model, inputs, "onnx")
    assert check.max_abs_diff <= 1e-4 and check.top1_agreement == 1.0 and check.samples == 5


def test_tampered_file_is_refused(archnet_bundle: tuple[nn.Module, Path], tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(archnet_bundle[1], tmp_path / "copy"))
    load_bundle(bundle, "onnx")  # intact: loads
    target = bundle / json.loads((bundle / "manifest.json").read_text())["parts"][1]["files"]["onnx"]["path"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 does not match"):
        load_bundle(bundle, "torchscript")  # every file is checked, whatever the backend


def test_two_tensor_cut_with_quantization_exports_and_runs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyResidual().eval()
    gm = trace_units(model)
    n = len(units(gm))
    inside = [u.name for u in units(gm)].index("conv1") + 1
    x = torch.randn(2, 3, 8, 8)
    lat = {"d0": [1.0] * inside + [50.0] * (n - inside), "d1": [50.0] * inside + [1.0] * (n - inside)}
    plan = plan_sequential(lat, unit_output_bytes(model, x), 4.0 * x.numel(), _chain(2), compressors={"d0": "quantize"})
    assert plan.boundaries() == [0, inside, n]
    plan = plan.with_cut_tensors(cut_tensors(model, x, plan.boundaries()))
    assert [t.name for t in plan.cuts[0].tensors] == ["stem_2", "conv1"]
    segments = split_graph(gm, plan.boundaries())
    plan = calibrate_plan(plan, segments, [torch.randn(2, 3, 8, 8) for _ in range(4)] + [x])
    export_bundle(segments, plan, x, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    wire = manifest["parts"][0]["outputs"]
    assert [(w["name"], w["dtype"]) for w in wire] == [("c0.stem_2", "uint8"), ("c0.conv1", "uint8")]
    assert manifest["parts"][1]["decoder"]["compressor"] == "quantize"
    assert plan.cuts[0].payload_bytes == sum(int(np.prod(w["example_shape"])) for w in wire)
    other = torch.randn(3, 3, 8, 8)  # another batch size than the example's
    expected = model(other)
    for backend in ("torchscript", "onnx"):
        (logits,) = run_bundle(tmp_path / "bundle", other, backend)
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max() < 0.1  # 8-bit cut: close, not exact


def test_torchvision_resnet_bundle_reproduces_the_model(tmp_path: Path) -> None:
    """A model the user brings: torchvision's resnet18, cut by the planner inside two residual blocks."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    gm = trace_units(model)
    names = [u.name for u in units(gm)]
    cuts = [names.index("layer1_0_conv2"), names.index("layer3_0_conv2")]  # each inside a residual block
    n = len(names)
    owner = [sum(i >= c for c in cuts) for i in range(n)]
    lat = {f"d{m}": [1.0 if owner[i] == m else 90.0 for i in range(n)] for m in range(3)}
    plan = plan_sequential(lat, unit_output_bytes(model, x), 4.0 * x.numel() / 2, _chain(3))
    assert plan.boundaries() == [0, *cuts, n]
    plan = plan.with_cut_tensors(cut_tensors(model, x, plan.boundaries()))
    assert [len(c.tensors) for c in plan.cuts] == [2, 2]  # the block's input rides along for its skip
    export_bundle(split_graph(gm, plan.boundaries()), plan, x, tmp_path / "bundle")
    inputs = [x, torch.randn(3, 3, 32, 32)]
    assert verify_bundle(tmp_path / "bundle", model, inputs, "torchscript").max_abs_diff <= 1e-5
    assert verify_bundle(tmp_path / "bundle", model, inputs, "onnx").max_abs_diff <= 1e-4
