"""The local runtime: one process per device answers as ``Bundle.run_exits`` does, and leaves no process behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from partition_specs import tiny_arch_spec
from torch import nn

from jmsnas.exits.decision import exit_score
from jmsnas.export.split import run_segments, split_archnet
from jmsnas.export.writer import calibrate_plan, export_bundle
from jmsnas.plan.planners import plan_sequential
from jmsnas.runtime.bundle import load_bundle
from jmsnas.runtime.local import LocalRun, serve_local
from jmsnas.runtime.report import RuntimeReport
from jmsnas.space.arch import build_model
from jmsnas.space.macs import arch_descriptors
from jmsnas.topology import Device, Link, build_topology

FAST = {"timeout_ms": 500, "attempts": 2, "sample_deadline_s": 6.0, "startup_timeout_s": 120.0,
        "run_timeout_s": 120.0}


def _chain(n: int):
    names = [f"d{i}" for i in range(n)]
    links = [Link(a, b, 100.0, 1.0) for a, b in zip(names, names[1:], strict=False)]
    return build_topology("chain", [Device(name) for name in names], links)


def build_exit_bundle(out: Path, threshold_quantile: float = 0.5, unit=None) -> tuple[Path, torch.Tensor]:
    """A tiny ArchNet on three devices, an exit head on d0, an 8-bit cut d1 -> d2; returns the bundle and inputs.

    With a decision ``unit`` (``jmsnas.exits.decision.DecisionUnit``) the exit compares its certainty, not
    the top-1 probability, with the threshold (the quantile of what it compares).
    """
    torch.manual_seed(0)
    spec = tiny_arch_spec()
    model = build_model(spec).eval()
    out_bytes = [4.0 * d.output_numel for d in arch_descriptors(spec)]
    fast = {"d0": [1.0, 1.0, 90.0, 90.0], "d1": [90.0, 90.0, 1.0, 90.0], "d2": [90.0, 90.0, 90.0, 1.0]}
    plan = plan_sequential(fast, out_bytes, 4.0 * 3 * 16 * 16, _chain(3), compressors={"d1": "quantize"})
    segments = split_archnet(model, plan.boundaries())
    plan = calibrate_plan(plan, segments, [torch.randn(4, 3, 16, 16) for _ in range(3)])
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    x = torch.randn(12, 3, 16, 16)
    with torch.no_grad():
        conf = exit_score(head(run_segments(segments[:1], x)[0]), unit)
    threshold = float(torch.quantile(conf, threshold_quantile))
    export_bundle(segments, plan, x[:2], out, exits={0: (head, threshold) if unit is None else
                                                     (head, threshold, unit.to_dict())})
    return out, x


@pytest.fixture(scope="module")
def exit_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    return build_exit_bundle(tmp_path_factory.mktemp("serve") / "bundle")


def assert_gone(pids: list[int]) -> None:
    """Every process the launcher started has exited and been reaped."""
    assert pids
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} is still there"


def test_local_runtime_answers_as_the_in_process_cascade(exit_bundle, tmp_path: Path) -> None:
    """Every sample answered once, where ``run_exits`` answers it, with its logits; dropped sends are resent."""
    bundle, x = exit_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parts"][0]["exit"] and manifest["parts"][2]["decoder"]["compressor"] == "quantize"
    expected, exit_index = load_bundle(bundle, "onnx").run_exits(x)
    assert 0 < int((exit_index == 0).sum()) < len(x)  # some samples leave at d0, some go on
    going_on = [int(i) for i in torch.nonzero(exit_index == 1).flatten()]
    stall = {"d0": frozenset(going_on[:1])}  # a first send delivered after its resend: run once, answered once
    drop = {"d0": frozenset(going_on[1:3]), "d1": frozenset(going_on[2:4])}  # first sends lost on both links
    run = LocalRun(emulated=frozenset({"d1"}), drop=drop, stall=stall, **FAST)
    report = serve_local(bundle, [xi.numpy() for xi in x], run, out=tmp_path / "runtime.json")
    assert_gone(report["_pids"])
    d1_log = (tmp_path / "runtime_logs" / "01_d1.log").read_text()
    assert f"sample {going_on[0]} (attempt 0) came again" in d1_log  # the stalled copy arrived, was not run
    assert report["samples"] == report["answered"] == len(x) and report["lost"] == 0 and report["fell_back"] == 0
    assert report["duplicates"] == 0 and report["refed"] == 0  # a lost send is resent by its hop, not re-fed
    for row in report["per_sample"]:
        i = row["sample"]
        assert row["exit"] == int(exit_index[i]) and row["device"] == ("d0" if exit_index[i] == 0 else "d2")
        np.testing.assert_allclose(report["_logits"][i][0], expected[i].numpy(), atol=1e-5)
    assert report["answered_at"] == {"d0": int((exit_index == 0).sum()), "d2": int((exit_index == 1).sum())}
    loaded = RuntimeReport.load(tmp_path / "runtime.json")
    assert [d.label for d in loaded.devices] == ["measured on this CPU", "emulated", "measured on this CPU"]
    d1 = loaded.devices[1]
    assert d1.samples == int((exit_index == 1).sum())
    # it waited out its predicted time (a lower bound only; the clock's float rounding is allowed)
    assert d1.measured_mean_ms >= d1.predicted_ms * (1 - 1e-6)
    assert all(ln.samples == d1.samples for ln in loaded.links)


def test_a_device_refuses_a_bundle_it_does_not_hold(exit_bundle, tmp_path: Path) -> None:
    from jmsnas.errors import ConfigError
    from jmsnas.runtime.serve import DeviceServer

    with pytest.raises(ConfigError, match="not in this bundle"):
        DeviceServer(exit_bundle[0], "phone", "127.0.0.1:1", None)
    with pytest.raises(ConfigError, match="--next"):
        DeviceServer(exit_bundle[0], "d0", "127.0.0.1:1", None)


def test_served_exit_predictor_skips_as_run_exits(tmp_path: Path) -> None:
    """With an Exit Predictor in the bundle, the first device runs it and the sample carries its skip flags:
    every sample is answered where ``run_exits`` answers it, with its logits, and the devices whose exit
    it skips run the part without the head."""
    from exits_specs import predictor_bundle

    b = predictor_bundle(tmp_path / "bundle", samples=24)
    x, s, gam = b["x"], b["s"], torch.tensor(b["gammas"])
    computed = torch.zeros((len(x), 2), dtype=torch.bool)
    expected, exit_index = load_bundle(b["bundle"], "onnx").run_exits(x, computed)
    sure = ((s - gam).abs() > 1e-4).all(1)  # a score on its gamma may be skipped by one backend, not the other
    assert sure.sum() >= 20
    assert set(exit_index.tolist()) == {0, 1, 2} and not computed.all()
    report = serve_local(b["bundle"], [xi.numpy() for xi in x], LocalRun(**FAST), out=tmp_path / "runtime.json")
    assert_gone(report["_pids"])
    assert report["answered"] == len(x) and report["fell_back"] == 0 and report["lost"] == 0
    for row in report["per_sample"]:
        i = row["sample"]
        if sure[i]:
            assert row["exit"] == int(exit_index[i]) and row["device"] == ["d0", "d1", "d2"][int(exit_index[i])]
            np.testing.assert_allclose(report["_logits"][i][0], expected[i].numpy(), atol=1e-5)


def test_served_adaptive_thresholds_answer_as_run_exits_at_the_told_bandwidth(tmp_path: Path) -> None:
    """Told the bandwidth, every device takes the adaptive point: answers where ``run_exits`` at that
    bandwidth answers, and the point is reported in the devices' logs."""
    from exits_specs import predictor_bundle

    b = predictor_bundle(tmp_path / "bundle", samples=24, adaptive=True)
    bundle = load_bundle(b["bundle"], "onnx")
    lams, gams, point = bundle.operating_point(50.0)
    assert lams != bundle.operating_point(None)[0]  # the adaptive point is not the deployed one
    expected, exit_index = bundle.run_exits(b["x"], bandwidth_mbps=50.0)
    sure = ((b["s"] - torch.tensor(gams)).abs() > 1e-4).all(1)
    report = serve_local(b["bundle"], [xi.numpy() for xi in b["x"]], LocalRun(**FAST, bandwidth_mbps=50.0),
                         out=tmp_path / "runtime.json")
    assert_gone(report["_pids"])
    assert report["answered"] == len(b["x"]) and report["fell_back"] == 0
    for row in report["per_sample"]:
        i = row["sample"]
        if sure[i]:
            assert row["exit"] == int(exit_index[i])
            np.testing.assert_allclose(report["_logits"][i][0], expected[i].numpy(), atol=1e-5)
    assert "adaptive thresholds at 50 Mbit/s" in (tmp_path / "runtime_logs" / "00_d0.log").read_text()
    assert point.feasible
