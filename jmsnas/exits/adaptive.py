"""Bandwidth-adaptive exit thresholds (paper 004 §IV, eqs. (10), (11)).

The per-sample latency of eq. (11) is the on-device work plus, for a sample that reaches the final
exit, its payload over the link::

    latency(x) = device_ms(x) + 1[x reaches the final exit] * payload_bits / bandwidth

``device_ms`` is the ``jmsnas.exits.skip`` routing cost with per-part device milliseconds (from
jmsnas's latency models, or the paper's MACs / r_comp), so the encoder of a learned compressor is part
of the last segment's cost when the caller includes it. The server's compute is neglected, as in the
paper.

Eq. (10), maximise accuracy subject to the mean latency <= tau, is solved by grid search on a
**validation** split (the paper uses the test set: spec B.9-5). Accuracy, mean device time and the
share reaching the final exit do not depend on the bandwidth, so ``ThresholdTable`` computes them once
for every (λ, γ) combination; the optimum at any bandwidth is then a masked argmax. Where nothing
fits tau the fastest combination is taken and flagged.

``AdaptiveThresholds`` holds one small regressor per bandwidth interval (two FC layers on the
standardised log-bandwidth, sigmoid outputs, fitted to the optima at a few training bandwidths, as the
paper's R1-R3). A predicted point may break tau between its training points (spec B.9-10):
``repair`` checks it on the validation statistics and moves λ and γ towards 0 (more samples leave
early) by a line search until it fits, and says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from jmsnas.devices import DeviceLike, on_device, to_device
from jmsnas.exits.skip import ExitParts, route

__all__ = ["ExitStats", "OperatingPoint", "ThresholdTable", "AdaptiveThresholds", "evaluate", "fit_regressor",
           "transfer_ms"]


def transfer_ms(payload_bits: float, bandwidth_mbps: float) -> float:
    """Milliseconds to send ``payload_bits`` at ``bandwidth_mbps`` megabit per second."""
    return payload_bits / (bandwidth_mbps * 1e3)


@dataclass(frozen=True)
class ExitStats:
    """Per-sample statistics of one split: exit confidences [B, K], predictor scores [B, K] (or None) and
    per-exit correctness [B, K + 1] (the final classifier last)."""

    confidences: np.ndarray
    correct: np.ndarray
    scores: np.ndarray | None = None

    @property
    def num_exits(self) -> int:
        return self.confidences.shape[1]


@dataclass(frozen=True)
class OperatingPoint:
    thresholds: list[float]
    gammas: list[float] | None
    accuracy: float
    latency_ms: float
    feasible: bool
    repaired: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds, "gammas": self.gammas, "accuracy": self.accuracy,
                "latency_ms": self.latency_ms, "feasible": self.feasible, "repaired": self.repaired}


def evaluate(stats: ExitStats, part_ms: ExitParts, payload_bits: float, bandwidth_mbps: float, tau_ms: float,
             thresholds: Sequence[float], gammas: Sequence[float] | None, mode: str) -> OperatingPoint:
    """Accuracy and mean eq. (11) latency of one (λ, γ) on ``stats``."""
    r = route(stats.confidences, thresholds, mode=mode, scores=stats.scores, gammas=gammas)
    latency = float(r.device_cost(part_ms).mean() + r.reaches_final.mean() * transfer_ms(payload_bits,
                                                                                         bandwidth_mbps))
    return OperatingPoint([float(v) for v in thresholds], None if gammas is None else [float(g) for g in gammas],
                          r.accuracy(stats.correct), latency, latency <= tau_ms)


@dataclass
class ThresholdTable:
    """Every (λ, γ) combination of the grids with its accuracy, mean device time and share sent to the server.

    Args:
        stats: the validation statistics.
        part_ms: per-part device milliseconds.
        mode: ``ee`` (λ only), ``ep`` (λ and γ) or ``oracle`` (λ only, the bound).
        lam_grid: λ values per exit.
        gamma_grid: γ values per exit (``ep`` only).
    """

    stats: ExitStats
    part_ms: ExitParts
    mode: str
    lam_grid: Sequence[float] = tuple(np.round(np.linspace(0.05, 1.0, 20), 4))
    gamma_grid: Sequence[float] = tuple(np.round(np.linspace(0.0, 0.9, 10), 4))
    lams: np.ndarray = field(init=False)
    gammas: np.ndarray | None = field(init=False)
    accuracy: np.ndarray = field(init=False)
    device_ms: np.ndarray = field(init=False)
    final_share: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        k = self.stats.num_exits
        lams = list(itertools.product(self.lam_grid, repeat=k))
        gams: list[tuple[float, ...] | None] = (list(itertools.product(self.gamma_grid, repeat=k))
                                                if self.mode == "ep" else [None])
        rows = [(lam, gam, *self._measure(lam, gam)) for lam in lams for gam in gams]
        self.lams = np.array([r[0] for r in rows], dtype=np.float64)
        self.gammas = None if self.mode != "ep" else np.array([r[1] for r in rows], dtype=np.float64)
        self.accuracy, self.device_ms, self.final_share = (np.array([r[i] for r in rows]) for i in (2, 3, 4))

    def _measure(self, lam: Sequence[float], gam: Sequence[float] | None) -> tuple[float, float, float]:
        r = route(self.stats.confidences, lam, mode=self.mode, scores=self.stats.scores, gammas=gam)
        return r.accuracy(self.stats.correct), float(r.device_cost(self.part_ms).mean()), float(
            r.reaches_final.mean())

    def best(self, payload_bits: float, bandwidth_mbps: float, tau_ms: float) -> OperatingPoint:
        """Eq. (10) at one bandwidth: the most accurate combination within tau (ties: the faster)."""
        latency = self.device_ms + self.final_share * transfer_ms(payload_bits, bandwidth_mbps)
        fits = latency <= tau_ms
        if fits.any():
            order = np.lexsort((latency, -self.accuracy))  # accuracy first, then latency
            i = int(next(j for j in order if fits[j]))
        else:
            i = int(np.argmin(latency))
        return OperatingPoint(self.lams[i].tolist(), None if self.gammas is None else self.gammas[i].tolist(),
                              float(self.accuracy[i]), float(latency[i]), bool(fits[i]))


class _Regressor(nn.Module):
    def __init__(self, outputs: int, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, outputs)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(u))))


def _scaled(bandwidths: Sequence[float], centre: float, scale: float) -> torch.Tensor:
    u = (np.log10(np.asarray(bandwidths, dtype=np.float64)) - centre) / scale
    return torch.as_tensor(u, dtype=torch.float32).view(-1, 1)


def fit_regressor(bandwidths: Sequence[float], targets: np.ndarray, *, steps: int = 2000, lr: float = 1e-2,
                  seed: int = 0, device: DeviceLike = None) -> dict[str, Any]:
    """Two FC layers from standardised log10 bandwidth to the thresholds ``targets`` [n, outputs] (MSE, Adam,
    full batch, on ``device``; None: the CPU); returned as plain JSON-able numbers."""
    logs = np.log10(np.asarray(bandwidths, dtype=np.float64))
    centre, scale = float(logs.mean()), float(logs.std() or 1.0)
    torch.manual_seed(seed)
    y = torch.as_tensor(np.asarray(targets, dtype=np.float64), dtype=torch.float32)
    model = _Regressor(y.shape[1])
    with on_device(device, model) as dev:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        u, y = to_device(_scaled(bandwidths, centre, scale), dev), to_device(y, dev)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(u), y).backward()
            opt.step()
        state = {k: v.tolist() for k, v in model.state_dict().items()}
    return {"centre": centre, "scale": scale, "outputs": int(y.shape[1]), "state": state}


def _predict(reg: dict[str, Any], bandwidth_mbps: float) -> list[float]:
    model = _Regressor(reg["outputs"])
    model.load_state_dict({k: torch.tensor(v) for k, v in reg["state"].items()})
    with torch.no_grad():
        return model(_scaled([bandwidth_mbps], reg["centre"], reg["scale"]))[0].tolist()


@dataclass
class AdaptiveThresholds:
    """One regressor per half-open bandwidth interval ``[lo, hi)`` (the last one closed), for ``mode``'s rule.

    Build with ``fit``; store with ``to_dict`` (plain JSON); apply with ``predict`` and ``repair``.
    """

    mode: str
    num_exits: int
    intervals: list[tuple[float, float]]
    regressors: list[dict[str, Any]]

    @classmethod
    def fit(cls, table: ThresholdTable, payload_bits: float, tau_ms: float,
            training: Sequence[Sequence[float]], *, seed: int = 0,
            device: DeviceLike = None) -> tuple[AdaptiveThresholds, list[dict]]:
        """Fit one regressor per group of ``training`` bandwidths (Mbit/s, ascending; an interval spans its
        group) to the eq. (10) optima of ``table`` (on ``device``; None: the CPU); also returns those optima."""
        intervals, regressors, optima = [], [], []
        for i, group in enumerate(training):
            points = [table.best(payload_bits, b, tau_ms) for b in group]
            optima += [{"bandwidth_mbps": b, **p.as_dict()} for b, p in zip(group, points, strict=True)]
            targets = np.array([p.thresholds + (p.gammas or []) for p in points])
            regressors.append(fit_regressor(group, targets, seed=seed + i, device=device))
            intervals.append((float(min(group)), float(max(group))))
        return cls(table.mode, table.stats.num_exits, intervals, regressors), optima

    def _regressor(self, bandwidth_mbps: float) -> dict[str, Any]:
        for (lo, hi), reg in zip(self.intervals, self.regressors, strict=True):
            if lo <= bandwidth_mbps < hi:
                return reg
        lows = [lo for lo, _ in self.intervals]
        return self.regressors[0] if bandwidth_mbps < min(lows) else self.regressors[-1]

    def predict(self, bandwidth_mbps: float) -> tuple[list[float], list[float] | None]:
        """The (λ, γ) this rule uses at ``bandwidth_mbps`` (γ None without the predictor)."""
        if not (bandwidth_mbps > 0 and math.isfinite(bandwidth_mbps)):
            raise ValueError(f"bandwidth must be a positive number of Mbit/s, got {bandwidth_mbps!r}")
        out = _predict(self._regressor(bandwidth_mbps), bandwidth_mbps)
        k = self.num_exits
        return out[:k], (out[k:2 * k] if self.mode == "ep" else None)

    def repair(self, stats: ExitStats, part_ms: ExitParts, payload_bits: float, bandwidth_mbps: float,
               tau_ms: float, steps: int = 50) -> OperatingPoint:
        """The predicted point, or, when it breaks tau on ``stats``, the least move of λ and γ towards 0 that
        fits (``repaired``); if none fits, the fastest tried (not ``feasible``)."""
        lam, gam = self.predict(bandwidth_mbps)
        tried = []
        for t in np.linspace(0.0, 1.0, steps + 1):
            point = evaluate(stats, part_ms, payload_bits, bandwidth_mbps, tau_ms, [v * (1 - t) for v in lam],
                             None if gam is None else [g * (1 - t) for g in gam], self.mode)
            if point.feasible:
                return OperatingPoint(point.thresholds, point.gammas, point.accuracy, point.latency_ms, True,
                                      repaired=bool(t > 0))
            tried.append(point)
        fastest = min(tried, key=lambda p: p.latency_ms)
        return OperatingPoint(fastest.thresholds, fastest.gammas, fastest.accuracy, fastest.latency_ms, False,
                              repaired=True)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "num_exits": self.num_exits, "intervals": [list(i) for i in self.intervals],
                "regressors": self.regressors}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveThresholds:
        return cls(data["mode"], int(data["num_exits"]), [tuple(i) for i in data["intervals"]], data["regressors"])
