"""Latency models: the regressor recovers a known function, analytic and payload values by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from jmsnas.latency.model import AnalyticLatencyModel, ProfiledLatencyModel, latency_model_for, row_descriptor
from jmsnas.latency.ops import descriptor_key, grid_descriptors, space_descriptors
from jmsnas.latency.profiler import _row
from jmsnas.plan.wire import payload_bytes
from jmsnas.space.macs import describe_op
from jmsnas.space.spec import load_search_space
from jmsnas.topology import AnalyticSpec, Device, Link

REPO = Path(__file__).resolve().parents[2]


def _known_latency_ms(d) -> float:
    """A made-up device: per-op overhead, compute and memory terms, and a penalty for large kernels."""
    return 0.02 + d.macs / 2e8 + (d.input_numel + d.output_numel) / 5e7 + 0.002 * d.kernel_size


def test_regressor_recovers_a_known_function() -> None:
    space = load_search_space(REPO / "search_spaces" / "mbconv13_1d.yaml")
    descs = grid_descriptors(space_descriptors(space))
    rng = np.random.default_rng(0)
    held_out = rng.random(len(descs)) < 0.2
    rows = [_row(d, 1, False, _known_latency_ms(d), 0.0, 10) for d, h in zip(descs, held_out, strict=True) if not h]
    model = ProfiledLatencyModel("synthetic", rows)
    test = [d for d, h in zip(descs, held_out, strict=True) if h]
    truth = np.array([_known_latency_ms(d) for d in test])
    rel = np.abs(model.predict(test) - truth) / truth
    assert len(test) > 100
    assert np.median(rel) < 0.03 and np.mean(rel < 0.10) > 0.95, (np.median(rel), np.mean(rel < 0.10))
    # a measured row is returned as measured, not as the regressor's estimate
    seen = next(d for d, h in zip(descs, held_out, strict=True) if not h)
    assert model.predict([seen])[0] == pytest.approx(float(f"{_known_latency_ms(seen):.6g}"))


def test_csv_row_round_trips_to_its_descriptor() -> None:
    d = describe_op("mb_k5_e6_sc", 8, 8, 1, (7, 9), 2)
    row = {k: str(v) for k, v in _row(d, 4, True, 1.5, 0.1, 10).items()}
    assert row_descriptor(row) == d
    assert row["key"] == descriptor_key(d, 4)


def test_analytic_latency_by_hand() -> None:
    spec = AnalyticSpec(macs_per_s=10e6, memory_bytes=10**6, memory_bandwidth_bytes_per_s=1e6, overhead_ms=0.05)
    model = AnalyticLatencyModel("m0", spec)
    d = describe_op("mb_k3_e3", 4, 8, 2, (16,), 1)
    # MBConv 4->12 (1x1, L 16): 4*12*16 = 768 ; depthwise k3 (L 8): 12*3*8 = 288 ; 1x1 12->8 (L 8): 12*8*8 = 768
    assert d.macs == 768 + 288 + 768
    compute_ms = 1824 / 10e6 * 1e3  # 0.1824 ms
    memory_ms = ((4 * 16 + 8 * 8) + d.params) * 4 / 1e6 * 1e3  # (128 elements + weights) * 4 bytes at 1 MB/s
    assert memory_ms > compute_ms  # a depthwise-heavy op on a slow memory is memory-bound
    assert model.predict([d])[0] == pytest.approx(0.05 + memory_ms)
    no_bw = AnalyticLatencyModel("m0", AnalyticSpec(macs_per_s=10e6, memory_bytes=10**6))
    assert no_bw.predict([d], batch_size=2)[0] == pytest.approx(2 * compute_ms)


def test_latency_model_for_picks_the_description(tmp_path: Path) -> None:
    spec = AnalyticSpec(macs_per_s=1e9, memory_bytes=1)
    assert latency_model_for(Device("a", analytic=spec), tmp_path).kind == "analytic"
    with pytest.raises(Exception, match="latency profile not found"):
        latency_model_for(Device("b", profile="nope"), tmp_path)


def test_payload_and_transfer_by_hand() -> None:
    assert payload_bytes((1, 16, 10)) == 640  # 160 float32 values
    assert payload_bytes(160, bits=8) == 160
    assert payload_bytes(3, bits=4) == 2  # 12 bits round up to 2 bytes
    # 640 bytes = 5120 bit at 1 Mbit/s = 5.12 ms, plus half of 30 ms
    assert Link("a", "b", 1.0, 30.0).latency_ms(payload_bytes((1, 16, 10))) == pytest.approx(15 + 5.12)
    with pytest.raises(ValueError):
        payload_bytes(10, bits=0)
    assert math.isclose(Link("a", "b", 8.0).latency_ms(payload_bytes(0)), 0.0)


def test_network_calibration_recovers_scale_and_overhead() -> None:
    """Whole networks that take 1.2 x the sum of their ops plus 15 µs per op give back exactly that."""
    from jmsnas.space.arch import ArchSpec
    from jmsnas.space.macs import arch_descriptors

    space = load_search_space(REPO / "search_spaces" / "tiny_1d.yaml")
    descs = grid_descriptors(space_descriptors(space))
    rows = [_row(d, 1, False, _known_latency_ms(d), 0.0, 10) for d in descs]
    rng = np.random.default_rng(1)
    nets = []
    for _ in range(12):
        spec = ArchSpec.from_choices(space, [s.candidates[rng.integers(len(s.candidates))] for s in space.layers()], 10)
        ops = arch_descriptors(spec)
        parts = sum(_known_latency_ms(o) for o in ops)
        nets.append((parts, len(ops), 1.2 * parts + 0.015 * len(ops), ops))
    model = ProfiledLatencyModel("calibrated", rows, networks=[(ops, whole) for _, _, whole, ops in nets])
    assert model.scale == pytest.approx(1.2, rel=0.02) and model.overhead_ms == pytest.approx(0.015, abs=2e-3)
    _, _, measured, ops = nets[0]
    assert model.predict(ops, calibrated=True).sum() == pytest.approx(measured, rel=0.02)
    assert np.array_equal(model.predict(ops), model.predict(ops, calibrated=True))  # applied by default
    assert model.predict(ops, calibrated=False).sum() == pytest.approx(measured / 1.2 - 0.015 * len(ops) / 1.2,
                                                                      rel=0.02)
    assert ProfiledLatencyModel("plain", rows).scale == 1.0  # no networks: no calibration


def test_calibration_is_fitted_per_dimensionality() -> None:
    """1-D networks that take 0.9 x their ops and 2-D ones 1.25 x (+ 10 µs per op) each get back their own
    calibration; the pooled fit is reported beside them and is right for neither."""
    from jmsnas.space.arch import ArchSpec
    from jmsnas.space.macs import arch_descriptors

    rows, nets = [], []
    rng = np.random.default_rng(2)
    for space_file, scale, overhead in (("tiny_1d.yaml", 0.9, 0.0), ("tiny_2d.yaml", 1.25, 0.01)):
        space = load_search_space(REPO / "search_spaces" / space_file)
        rows += [_row(d, 1, False, _known_latency_ms(d), 0.0, 10) for d in grid_descriptors(space_descriptors(space))]
        for _ in range(10):
            choices = [s.candidates[rng.integers(len(s.candidates))] for s in space.layers()]
            ops = arch_descriptors(ArchSpec.from_choices(space, choices, 10))
            nets.append((ops, scale * sum(_known_latency_ms(o) for o in ops) + overhead * len(ops)))
    model = ProfiledLatencyModel("by-dims", rows, networks=nets)
    assert model.calibration[1] == pytest.approx((0.9, 0.0), abs=0.02)
    assert model.calibration[2][0] == pytest.approx(1.25, rel=0.02)
    assert model.calibration[2][1] == pytest.approx(0.01, abs=2e-3)
    for ops, whole in nets:  # each network's own dimensionality's calibration is what predict applies
        assert model.predict(ops).sum() == pytest.approx(whole, rel=0.02)
    pooled_err = [model.scale * model.predict(ops, calibrated=False).sum() + model.overhead_ms * len(ops) - whole
                  for ops, whole in nets]
    assert max(abs(e) / whole for e, (_, whole) in zip(pooled_err, nets, strict=True)) > 0.05


def test_calibration_is_not_fitted_to_the_machines_drift() -> None:
    """Networks timed while the machine ran 1.4 x slower than when the op rows were measured (the whole and its
    same-time ops both slowed) still give back the true additivity, 1.1 x; without the same-time ops the fit
    learns the drift too (1.1 x 1.4)."""
    from jmsnas.space.arch import ArchSpec
    from jmsnas.space.macs import arch_descriptors

    space = load_search_space(REPO / "search_spaces" / "tiny_1d.yaml")
    rows = [_row(d, 1, False, _known_latency_ms(d), 0.0, 10) for d in grid_descriptors(space_descriptors(space))]
    rng = np.random.default_rng(3)
    nets = []
    for i in range(12):
        spec = ArchSpec.from_choices(space, [s.candidates[rng.integers(len(s.candidates))] for s in space.layers()], 10)
        ops = arch_descriptors(spec)
        slow = 1.4 if i % 2 else 1.0  # half the networks measured in a slow spell
        same_time = slow * sum(_known_latency_ms(o) for o in ops)
        nets.append((ops, 1.1 * same_time, same_time))
    drift_free = ProfiledLatencyModel("drift-free", rows, networks=nets)
    assert drift_free.calibration[1] == pytest.approx((1.1, 0.0), abs=0.01)
    drifting = ProfiledLatencyModel("drifting", rows, networks=[(ops, whole) for ops, whole, _ in nets])
    def worst_error(model: ProfiledLatencyModel) -> float:  # against the networks at the op rows' speed
        return max(abs(model.predict(ops).sum() / (1.1 * same / (1.4 if i % 2 else 1.0)) - 1)
                   for i, (ops, _, same) in enumerate(nets))

    assert worst_error(drift_free) < 0.01
    assert worst_error(drifting) > 0.1
