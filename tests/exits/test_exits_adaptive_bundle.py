"""Bandwidth-adaptive thresholds in the bundle (paper 004 §IV): told the bandwidth, the runtime takes λ and γ
from the stored regressors, repairs a point that breaks τ, and decides as the in-process cascade with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from exits_specs import predictor_bundle

from jmsnas.errors import BundleError
from jmsnas.exits.adaptive import AdaptiveThresholds, ExitStats, evaluate
from jmsnas.exits.adaptive_fit import grids, operating_point, part_ms_of
from jmsnas.exits.cascade import EarlyExitNet
from jmsnas.exits.skip import ExitParts, SkippingCascade
from jmsnas.runtime.bundle import load_bundle


@pytest.fixture(scope="module")
def adaptive_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return predictor_bundle(tmp_path_factory.mktemp("adaptive") / "bundle", samples=60, adaptive=True)


def _stats(entry: dict) -> tuple[ExitStats, ExitParts]:
    s, p = entry["stats"], entry["part_ms"]
    return (ExitStats(np.asarray(s["confidences"]), np.asarray(s["correct"], dtype=bool), np.asarray(s["scores"])),
            ExitParts(p["segments"], p["heads"], p["predictor"]))


def test_part_ms_and_grids_by_hand() -> None:
    parts = part_ms_of([3.0, 6.0], [0.5, 1.0], 0.2)
    assert list(parts.segments) == [2.5, 2.0] and list(parts.heads) == [0.5, 1.0] and parts.predictor == 0.2
    lam, gam = grids(2, True)
    assert (len(lam) * len(gam)) ** 2 <= 20_000 and len(lam) >= 3 and len(gam) >= 2
    assert grids(1, False) == (tuple(np.round(np.linspace(0.05, 1.0, 20), 4)), (0.0,))
    with pytest.raises(ValueError, match="do not cover"):
        part_ms_of([1.0, 1.2], [0.5, 0.5])


def test_adaptive_points_hold_tau_and_the_bundle_decides_with_them(adaptive_bundle: dict) -> None:
    b = adaptive_bundle
    entry = b["adaptive"]
    stats, parts = _stats(entry)
    bundle = load_bundle(b["bundle"])
    rule = AdaptiveThresholds.from_dict(entry["regressors"])
    for bw in np.geomspace(0.3, 300.0, 12):  # held-out bandwidths, beyond both ends too
        lams, gams, point = bundle.operating_point(float(bw))
        assert point == operating_point(entry, float(bw))
        check = evaluate(stats, parts, entry["payload_bits"], float(bw), entry["tau_ms"], lams, gams, "ep")
        assert check.latency_ms == pytest.approx(point.latency_ms)
        assert check.feasible or not point.feasible  # a feasible point holds τ on the stored statistics
        if not point.repaired:
            assert np.allclose(lams + gams, sum(rule.predict(float(bw)), []))
    lams, gams, _ = bundle.operating_point(2.0)
    net: EarlyExitNet = b["net"]
    cascade = SkippingCascade(EarlyExitNet(net.segments, net.heads, lams, net.locations, net.segment_macs,
                                           net.head_macs), b["predictor"], gams).eval()
    with torch.no_grad():
        logits, idx, computed = cascade(b["x"])
    got_computed = torch.zeros_like(computed)
    got, got_idx = bundle.run_exits(b["x"], got_computed, bandwidth_mbps=2.0)
    s = b["s"]
    sure = ((s - torch.tensor(gams)).abs() > 1e-4).all(1)
    assert (got_idx[sure] == idx[sure]).all() and (got_computed[sure] == computed[sure]).all()
    assert torch.allclose(got[sure], logits[sure], atol=1e-5)


def test_a_bandwidth_for_a_bundle_without_adaptive_thresholds_is_refused(tmp_path) -> None:
    b = predictor_bundle(tmp_path / "plain", samples=8)
    bundle = load_bundle(b["bundle"])
    with pytest.raises(BundleError, match="no adaptive thresholds"):
        bundle.run_exits(b["x"], bandwidth_mbps=5.0)
    with pytest.raises(ValueError, match="positive number"):
        operating_point({"stats": {}, "part_ms": {}}, -1.0)
