"""A network with parallel branches on a mesh: planned (eq. (2)), exported one part per device, run from the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from jmsnas.export.branched import BranchedNet, branched_sizes, calibrate_branched, export_branched_bundle
from jmsnas.plan.planners import plan_branched
from jmsnas.runtime.bundle import load_bundle, run_bundle, verify_bundle
from jmsnas.topology import Device, Link, build_topology

SLOW = 100.0


def _model(merge: str = "concat") -> BranchedNet:
    torch.manual_seed(0)
    wide = 8 if merge == "add" else 4
    return BranchedNet(
        pre=[nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), nn.Conv2d(4, 8, 3, stride=2, padding=1)],
        branches=[[nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()], [nn.Conv2d(8, wide, 1)]],
        post=[nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12 if merge == "concat" else 8, 5)],
        merge=merge,
    ).eval()


def _mesh():
    names = ["src", "root", "b0", "b1", "join", "sink"]
    pairs = [("src", "root"), ("root", "b0"), ("root", "b1"), ("b0", "join"), ("b1", "join"), ("join", "sink")]
    return build_topology("mesh", [Device(n) for n in names], [Link(a, b, 10.0, 1.0) for a, b in pairs])


def _plan(model: BranchedNet, x: torch.Tensor, compressors: dict[str, str] | None = None):
    """Hand-made latencies: src runs pre layer 0, root pre layer 1, join the pooling, sink the rest."""
    sizes = branched_sizes(model, x)
    names = ["src", "root", "b0", "b1", "join", "sink"]
    pre = {n: [0.1 if n == "src" else SLOW, 0.1 if n == "root" else SLOW] for n in names}
    post = {n: [0.1 if n == "join" else SLOW] + [0.1 if n == "sink" else SLOW] * 2 for n in names}
    branches = [([0.5] * len(s), s) for s in sizes.branches]
    return plan_branched((pre, sizes.pre), branches, (post, sizes.post), sizes.input_bytes, sizes.join_input_bytes,
                         _mesh(), compressors=compressors), sizes


@pytest.mark.parametrize("merge", ["concat", "add"])
def test_branched_bundle_reproduces_the_model(merge: str, tmp_path: Path) -> None:
    model, x = _model(merge), torch.randn(4, 3, 8, 8)
    plan, sizes = _plan(model, x)
    assert [(s.device, s.part, s.start, s.stop) for s in plan.segments] == [
        ("src", "pre", 0, 1), ("root", "pre", 1, 2), ("b0", "branch0", 0, 2), ("b1", "branch1", 0, 1),
        ("join", "post", 0, 1), ("sink", "post", 1, 3)]
    assert sizes.pre == [4 * 8 * 8 * 4.0, 8 * 4 * 4 * 4.0] and sizes.input_bytes == 3 * 8 * 8 * 4
    plan = calibrate_branched(plan, model, [x])
    export_branched_bundle(model, plan, x, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert [p["device"] for p in manifest["parts"]] == ["src", "root", "b0", "b1", "join", "sink"]
    assert [p["sources"] for p in manifest["parts"]] == [[[-1, 0]], [[0, 0]], [[1, 0]], [[1, 0]],
                                                         [[2, 0], [3, 0]], [[4, 0]]]
    other = torch.randn(7, 3, 8, 8)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        for backend, tol in (("torchscript", 1e-5), ("onnx", 1e-4)):
            for inp in (x, other):
                torch.testing.assert_close(run_bundle(tmp_path / "bundle", inp, backend)[0], model(inp),
                                           rtol=0, atol=tol)
    assert verify_bundle(tmp_path / "bundle", model, [x, other]).max_abs_diff <= 1e-5


def test_quantized_branched_cuts_send_one_byte_per_value(tmp_path: Path) -> None:
    model, x = _model(), torch.randn(16, 3, 8, 8)
    plan, sizes = _plan(model, x, compressors={"root": "quantize", "b0": "quantize", "b1": "quantize"})
    plan = calibrate_branched(plan, model, [torch.randn(16, 3, 8, 8) for _ in range(4)])
    export_branched_bundle(model, plan, x, tmp_path / "bundle")
    cut = {(c.src, c.dst): c for c in plan.cuts}
    assert cut[("root", "b0")].payload_bytes == cut[("root", "b1")].payload_bytes == sizes.pre[-1] / 4
    assert cut[("b0", "join")].payload_bytes == sizes.branches[0][-1] / 4
    bundle = load_bundle(tmp_path / "bundle")
    parts = bundle.manifest["parts"]
    for m in (1, 2, 3):  # root and both branches put uint8 on the wire, as many bytes as the plan charges
        (wire,) = parts[m]["outputs"]
        assert wire["dtype"] == "uint8"
        per_sample = torch.Size(wire["example_shape"][1:]).numel()
        receiver = {1: "b0", 2: "join", 3: "join"}[m]
        assert per_sample == cut[(parts[m]["device"], receiver)].payload_bytes
    assert [d["compressor"] for d in parts[4]["decoders"]] == ["quantize", "quantize"]
    check = verify_bundle(tmp_path / "bundle", model, [x])
    assert check.top1_agreement >= 0.9 and 0 < check.max_abs_diff < 0.1


def test_a_sequential_plan_is_refused(tmp_path: Path) -> None:
    from jmsnas.plan.planners import plan_sequential

    model, x = _model(), torch.randn(2, 3, 8, 8)
    plan = plan_sequential({"src": [1.0]}, [4.0], 4.0, build_topology("chain", [Device("src")], []))
    with pytest.raises(ValueError, match="need a branched plan"):
        export_branched_bundle(model, plan, x, tmp_path / "bundle")
