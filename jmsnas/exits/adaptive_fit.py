"""Bandwidth-adaptive thresholds for a deployed EENN (paper 004 §IV, for the deploy stage's ``exits.adaptive``).

The adaptive link is the cut after the last early exit's device: only samples that reach the final
exit cross it, so eq. (11)'s latency is the on-device work up to the last exit (every part before it,
links between earlier devices included, at the plan's prices) plus, for those samples, the cut's payload
over the current bandwidth. The server's compute and the link's round trip are left out, as in the paper.

``fit_adaptive`` solves eq. (10) on the calibration split (``adaptive.ThresholdTable``) at the training
bandwidths and fits one regressor per interval (``adaptive.AdaptiveThresholds``); ``adaptive_entry`` is
what the bundle's manifest stores: the regressors, τ, the payload and the calibration statistics, so
that the runtime repairs a predicted point that would break τ (``operating_point``) without jmsnas's
training code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from jmsnas.devices import DeviceLike, on_device, to_device
from jmsnas.exits.adaptive import AdaptiveThresholds, ExitStats, OperatingPoint, ThresholdTable, evaluate
from jmsnas.exits.cascade import EarlyExitNet
from jmsnas.exits.decision import exit_score
from jmsnas.exits.skip import ExitParts

__all__ = ["StoredAdaptive", "adaptive_entry", "exit_stats", "fit_adaptive", "grids", "operating_point", "part_ms_of",
           "tau_at"]

#: at most this many (λ, γ) combinations in the grid search (the grids shrink with more exits)
MAX_COMBINATIONS = 20_000


@torch.no_grad()
def exit_stats(net: EarlyExitNet, data: Dataset, predictor: torch.nn.Module | None = None, batch_size: int = 512,
               device: DeviceLike = None) -> ExitStats:
    """Confidences [B, K], correctness [B, K + 1] and predictor scores [B, K] (or None) of ``net`` on ``data``."""
    net.eval()
    if predictor is not None:
        predictor.eval()
    conf, right, scores = [], [], []
    with on_device(device, net, *([] if predictor is None else [predictor])) as dev:
        for xb, yb in DataLoader(data, batch_size=batch_size):
            xb = to_device(xb, dev)
            logits = [z.cpu() for z in net.all_exits(xb)]
            conf.append(torch.stack([exit_score(z, net.decision_units[k]) for k, z in enumerate(logits[:-1])], 1))
            right.append(torch.stack([z.argmax(1) == yb for z in logits], 1))
            if predictor is not None:
                scores.append(torch.sigmoid(predictor(xb)).cpu())
    return ExitStats(torch.cat(conf).numpy(), torch.cat(right).numpy(),
                     torch.cat(scores).double().numpy() if scores else None)


def part_ms_of(exit_latency_ms: Sequence[float], head_ms: Sequence[float], predictor_ms: float = 0.0) -> ExitParts:
    """Eq. (11)'s per-part device ms from the plan's exit latencies (a sample leaving at exit k, every head run):
    segment k costs ``L_k - L_{k-1} - head_k``."""
    ends = [0.0, *exit_latency_ms]
    segments = [ends[k + 1] - ends[k] - head_ms[k] for k in range(len(head_ms))]
    if min(segments) < -1e-9:
        raise ValueError(f"exit latencies {list(exit_latency_ms)} do not cover their heads {list(head_ms)}")
    return ExitParts([max(s, 0.0) for s in segments], [float(h) for h in head_ms], float(predictor_ms))


def grids(num_exits: int, with_gamma: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """λ and γ grids whose product stays within ``MAX_COMBINATIONS`` (λ: 20 values at most, γ: 10)."""
    n_lam, n_gam = 20, 10 if with_gamma else 1
    while (n_lam * n_gam) ** num_exits > MAX_COMBINATIONS and n_lam > 3:
        n_lam, n_gam = n_lam - 1, max(n_gam - 1, 2) if with_gamma else 1
    return (tuple(np.round(np.linspace(0.05, 1.0, n_lam), 4)), tuple(np.round(np.linspace(0.0, 0.9, n_gam), 4)))


def fit_adaptive(stats: ExitStats, part_ms: ExitParts, payload_bits: float, tau_ms: float,
                 bandwidths_mbps: Sequence[float], intervals: int, seed: int = 0
                 ) -> tuple[AdaptiveThresholds, list[dict]]:
    """Eq. (10) optima at ``bandwidths_mbps`` (ascending) and one regressor per group of ``intervals``."""
    mode = "ep" if stats.scores is not None else "ee"
    lam, gam = grids(stats.num_exits, mode == "ep")
    table = ThresholdTable(stats, part_ms, mode, lam_grid=lam, gamma_grid=gam)
    bws = sorted(float(b) for b in bandwidths_mbps)
    groups = [list(g) for g in np.array_split(np.asarray(bws), max(1, min(intervals, len(bws) // 2))) if len(g)]
    return AdaptiveThresholds.fit(table, payload_bits, tau_ms, groups, seed=seed)


def adaptive_entry(adaptive: AdaptiveThresholds, stats: ExitStats, part_ms: ExitParts, payload_bits: float,
                   tau_ms: float, cut: int) -> dict[str, Any]:
    """The manifest's ``adaptive`` data: plain JSON numbers (statistics rounded to 6 decimals)."""
    def rows(a: np.ndarray | None) -> list | None:
        return None if a is None else np.round(a.astype(np.float64), 6).tolist()

    return {"cut": int(cut), "payload_bits": float(payload_bits), "tau_ms": float(tau_ms),
            "regressors": adaptive.to_dict(),
            "part_ms": {"segments": list(part_ms.segments), "heads": list(part_ms.heads),
                        "predictor": part_ms.predictor},
            "stats": {"confidences": rows(stats.confidences), "correct": stats.correct.astype(int).tolist(),
                      "scores": rows(stats.scores)}}


@dataclass(frozen=True)
class StoredAdaptive:
    """A manifest's ``adaptive`` entry read back once: the regressors and what a predicted point is repaired on."""

    rule: AdaptiveThresholds
    stats: ExitStats
    parts: ExitParts
    payload_bits: float
    tau_ms: float

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> StoredAdaptive:
        s, p = entry["stats"], entry["part_ms"]
        stats = ExitStats(np.asarray(s["confidences"], dtype=np.float64), np.asarray(s["correct"], dtype=bool),
                          None if s["scores"] is None else np.asarray(s["scores"], dtype=np.float64))
        return cls(AdaptiveThresholds.from_dict(entry["regressors"]), stats,
                   ExitParts(p["segments"], p["heads"], p["predictor"]), entry["payload_bits"], entry["tau_ms"])

    def point(self, bandwidth_mbps: float) -> OperatingPoint:
        """The (λ, γ) the regressors give at ``bandwidth_mbps``, repaired on the stored statistics when it would
        break τ there (``repaired``; not ``feasible`` when nothing tried fits)."""
        return self.rule.repair(self.stats, self.parts, self.payload_bits, bandwidth_mbps, self.tau_ms)


def operating_point(entry: dict[str, Any], bandwidth_mbps: float) -> OperatingPoint:
    """``StoredAdaptive.point`` of a manifest's ``adaptive`` entry (the bandwidth checked first)."""
    if not (bandwidth_mbps > 0 and math.isfinite(bandwidth_mbps)):
        raise ValueError(f"the bandwidth must be a positive number of Mbit/s, got {bandwidth_mbps!r}")
    return StoredAdaptive.from_entry(entry).point(bandwidth_mbps)


def tau_at(stats: ExitStats, part_ms: ExitParts, payload_bits: float, bandwidth_mbps: float,
           thresholds: Sequence[float], gammas: Sequence[float] | None) -> float:
    """Eq. (11)'s mean latency of the deployed (λ, γ) at the planned bandwidth: the default τ."""
    mode = "ep" if gammas is not None else "ee"
    return evaluate(stats, part_ms, payload_bits, bandwidth_mbps, math.inf, thresholds, gammas, mode).latency_ms
