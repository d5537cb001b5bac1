"""Payload vs accuracy at each cut (``stages.payload_sweep``): bytes counted by hand, lossless points exact."""

from __future__ import annotations

import json
import math

from jmsnas.config import load_experiment
from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment
from jmsnas.stages.deploy import deploy_choice
from jmsnas.stages.payload_sweep import compressor_label, payload_sweep


def _relaying(tiny_experiment: dict) -> dict:
    """Devices a and b relay the input (b too slow, c very fast): both cuts carry the 40 input values."""
    tiny_experiment["topology"]["devices"][1]["analytic"]["macs_per_s"] = 1.0e4
    tiny_experiment["topology"]["devices"][2]["analytic"]["macs_per_s"] = 1.0e10
    return tiny_experiment


def test_each_cut_is_swept_with_bytes_counted_by_hand_and_lossless_points_equal_the_unsplit_network(
        tiny_experiment, write_experiment, make_choice) -> None:
    _relaying(tiny_experiment).update(partition={"compressors": [{"kind": "quantize", "bits": 4}, {"kind": "none"}]})
    exp = load_experiment(write_experiment(tiny_experiment))
    choice = make_choice(exp)
    record = deploy_choice(exp, choice).to_dict()
    assert record["boundaries"] == [0, 0, 0, 5]
    points = record["payload_sweep"]
    by = {(p["cut"], p["compressor"]): p for p in points}
    # cut 0 deployed at 4 bits; cut 1 deployed as float32; every other calibrated kind tried once per cut
    assert set(by) == {(0, "quantize-4b"), (0, "none"), (0, "quantize-8b"), (0, "quantize-2b"),
                       (1, "none"), (1, "quantize-8b"), (1, "quantize-4b"), (1, "quantize-2b")}
    assert [p["compressor"] for p in points if p["deployed"]] == ["quantize-4b", "none"]
    for cut, bits in ((0, 32), (0, 8), (0, 4), (0, 2), (1, 32), (1, 8), (1, 2)):
        name = "none" if bits == 32 else f"quantize-{bits}b"
        assert by[cut, name]["payload_bytes"] == math.ceil(40 * bits / 8), (cut, name)
    # cut 0 without its quantizer and cut 1 as deployed: nothing lossy left, the unsplit network's accuracy
    assert by[0, "none"]["test_acc"] == record["test_acc_unsplit"]
    assert by[0, "quantize-4b"]["test_acc"] == record["test_acc_split"]
    assert by[1, "quantize-4b"]["test_acc"] == record["test_acc_split"]  # cut 0 keeps its 4 bits; none -> 4b at 1
    assert json.loads((choice / "deploy.json").read_text())["payload_sweep"] == points


def test_the_sweep_can_be_turned_off(tiny_experiment, write_experiment, make_choice) -> None:
    _relaying(tiny_experiment).update(partition={"compressors": [], "payload_sweep": False})
    exp = load_experiment(write_experiment(tiny_experiment))
    choice = make_choice(exp)
    assert "payload_sweep" not in deploy_choice(exp, choice).to_dict()
    assert "payload_sweep" not in json.loads((choice / "deploy.json").read_text())


def test_a_student_head_cut_gives_only_its_deployed_point() -> None:
    params = {"bits": 8, "student_macs": 10, "teacher_head_macs": 100}
    plan = DeploymentPlan("chain", (DeviceSegment("a", "main", 0, 2, 1.0), DeviceSegment("b", "main", 2, 5, 1.0)),
                          (CutPlan("a", "b", 12.0, 0.5, "distilled_bottleneck", params),), 2.5)
    points = payload_sweep(plan, [], {}, [], [], 0.9)  # nothing is run for such a cut
    assert points == [{"cut": 0, "src": "a", "dst": "b", "compressor": "distilled_bottleneck-8b",
                       "payload_bytes": 12.0, "test_acc": 0.9, "deployed": True}]
    assert compressor_label("none", {}) == "none" and compressor_label("quantize", {"bits": 2}) == "quantize-2b"
