"""Bandwidth-adaptive thresholds (paper 004 §IV): the table's optimum against brute force, regressors, repair."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from jmsnas.exits.adaptive import AdaptiveThresholds, ExitStats, ThresholdTable, evaluate, transfer_ms
from jmsnas.exits.skip import ExitParts


def _stats(seed: int = 0, n: int = 400) -> ExitStats:
    rng = np.random.default_rng(seed)
    c = rng.random((n, 2))
    correct = np.stack([rng.random(n) < 0.3 + 0.6 * c[:, 0], rng.random(n) < 0.4 + 0.5 * c[:, 1],
                        rng.random(n) < 0.95], axis=1)
    s = np.clip(c + rng.normal(0, 0.2, c.shape), 0, 1)
    return ExitStats(c, correct, s)


PARTS = ExitParts(segments=[1.0, 3.0], heads=[0.5, 0.4], predictor=0.05)


def test_transfer_time_is_bits_over_bandwidth() -> None:
    assert transfer_ms(16_384, 1.0) == pytest.approx(16.384)  # paper 004's 16,384-bit feature at 1 Mbit/s


@pytest.mark.parametrize("mode", ["ee", "ep", "oracle"])
def test_table_best_equals_brute_force(mode: str) -> None:
    stats, lam_grid, gam_grid = _stats(), (0.3, 0.6, 0.9), (0.0, 0.4, 0.8)
    table = ThresholdTable(stats, PARTS, mode, lam_grid, gam_grid)
    for bw, tau in [(0.5, 6.0), (5.0, 4.0), (50.0, 3.0)]:
        got = table.best(20_000, bw, tau)
        points = [evaluate(stats, PARTS, 20_000, bw, tau, lam, gam if mode == "ep" else None, mode)
                  for lam in itertools.product(lam_grid, repeat=2)
                  for gam in (itertools.product(gam_grid, repeat=2) if mode == "ep" else [None])]
        fits = [p for p in points if p.feasible]
        assert got.feasible == bool(fits)
        want = max(fits, key=lambda p: (p.accuracy, -p.latency_ms)) if fits else min(points,
                                                                                       key=lambda p: p.latency_ms)
        assert got.accuracy == pytest.approx(want.accuracy) and got.latency_ms == pytest.approx(want.latency_ms)


def test_regressors_fit_their_training_optima_and_survive_json() -> None:
    stats = _stats(1)
    table = ThresholdTable(stats, PARTS, "ep", (0.2, 0.4, 0.6, 0.8, 1.0), (0.0, 0.3, 0.6))
    groups = [[0.1, 0.3, 0.5, 0.7, 1.0], [1.0, 3.0, 5.0, 7.0, 10.0]]
    adaptive, optima = AdaptiveThresholds.fit(table, 10_000, 4.0, groups)
    for o in optima:
        lam, gam = adaptive.predict(o["bandwidth_mbps"])
        assert np.allclose(lam + gam, o["thresholds"] + o["gammas"], atol=0.08)
    again = AdaptiveThresholds.from_dict(json.loads(json.dumps(adaptive.to_dict())))
    assert again.predict(2.2) == adaptive.predict(2.2)
    assert adaptive.predict(0.01) == adaptive.predict(0.01)  # below the first interval: its regressor
    with pytest.raises(ValueError, match="positive"):
        adaptive.predict(-1.0)


def test_repair_brings_a_point_within_tau_and_says_so() -> None:
    stats = _stats(2)
    table = ThresholdTable(stats, PARTS, "ee", (0.5, 0.99), ())
    adaptive, _ = AdaptiveThresholds.fit(table, 10_000, 50.0, [[50.0, 60.0, 70.0]])  # loose tau: high lambdas
    point = adaptive.repair(stats, PARTS, 10_000, 0.2, 3.0)  # far below its bandwidths, tight tau
    assert point.repaired and point.feasible and point.latency_ms <= 3.0
    unchanged = adaptive.repair(stats, PARTS, 10_000, 60.0, 50.0)
    assert not unchanged.repaired and unchanged.thresholds == pytest.approx(adaptive.predict(60.0)[0])
