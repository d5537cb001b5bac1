"""The Exit Predictor fitted to a chosen EENN (paper 004 §III, for the deploy stage's ``exits.predictor``).

``fit_exit_predictor`` takes the early-exit network ``augment`` chose (frozen: its heads, thresholds λ and
decision units), computes eq. (9)'s labels ``u(c_n - lambda_n)`` on the label split (the training split,
as the paper, or the calibration split), trains the predictor by eq. (6), and picks its γs by the paper's
criterion (``skip.choose_gamma``: the lowest eq. (4) MACs with under 2 pp more samples at the final exit)
on the calibration split. It also reports what the predictor buys there: the mean on-device MACs of the
cascade without it (eq. (3)), with it (eq. (4)) and of the oracle, and the share of the oracle's saving
captured, so a predictor that does not pay off says so.

With ``labels: calibration`` the γs are chosen on the samples the predictor was trained on, which
flatters it; ``labels: train`` (the default, the paper's) labels samples the EENN has fitted, which it
is confident on nearly always (``benchmarks/results/exit_predictor.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from jmsnas.devices import DeviceLike
from jmsnas.exits.adaptive import ExitStats
from jmsnas.exits.adaptive_fit import exit_stats
from jmsnas.exits.cascade import EarlyExitNet
from jmsnas.exits.predictor import ExitPredictor, PredictorTraining, exit_labels, train_predictor
from jmsnas.exits.skip import ExitParts, Routing, choose_gamma, route
from jmsnas.exits_config import PredictorConfig
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.space.macs import count_macs

__all__ = ["FittedPredictor", "fit_exit_predictor", "plan_with_predictor"]


@dataclass(frozen=True)
class FittedPredictor:
    """The trained predictor, its γs (one per early exit) and what it buys on the calibration split."""

    predictor: ExitPredictor
    gammas: list[float]
    info: dict[str, Any]
    routing: Routing  # Algorithm 1 on the calibration split with these gammas
    calibration: ExitStats  # the calibration split's confidences, correctness and predictor scores


def plan_with_predictor(plan: DeploymentPlan, routing: Routing, head_ms: Sequence[float],
                        predictor_ms: float) -> DeploymentPlan:
    """The EENN's plan with the predictor priced: every sample pays ``predictor_ms`` on the first device and
    saves the ``head_ms`` of each exit it skips; the termination rates and the mean latency are Algorithm 1's
    on calibration (``routing``); the worst case (every head computed) gains ``predictor_ms``. Each exit's
    ``latency_ms`` stays that of a sample that computed every head before it."""
    lat = [e.latency_ms for e in plan.exits]
    if any(v is None for v in lat) or len(lat) != routing.num_exits:
        raise ValueError(f"need a plan with the {routing.num_exits} priced exits of the routing, got {lat}")
    ends = np.asarray([*lat, plan.total_latency_ms], dtype=np.float64)
    saved = (routing.alive & ~routing.computed) @ np.asarray(head_ms, dtype=np.float64)
    per_sample = ends[routing.exit_index] - saved + predictor_ms
    rates = np.bincount(routing.exit_index, minlength=routing.num_exits + 1) / len(routing.exit_index)
    exits = [replace(e, termination_rate=float(rates[k])) for k, e in enumerate(plan.exits)]
    return plan.with_exits(exits, plan.total_latency_ms + predictor_ms, float(per_sample.mean()))


def fit_exit_predictor(net: EarlyExitNet, label_set: Dataset, calib_set: Dataset, input_shape: tuple[int, ...],
                       cfg: PredictorConfig, seed: int = 0, device: DeviceLike = None) -> FittedPredictor:
    """Train the Exit Predictor on ``net``'s eq. (9) labels over ``label_set``; γs chosen on ``calib_set``."""
    if net.num_exits == 0:
        raise ValueError("the EENN has no early exit for a predictor to skip")
    torch.manual_seed(seed)
    predictor = ExitPredictor(input_shape, net.num_exits, cfg.variant, width=cfg.width)
    lam = [float(t) for t in net.thresholds]
    x_label = torch.cat([x for x, _ in DataLoader(label_set, batch_size=512)])
    labels = exit_labels(torch.as_tensor(exit_stats(net, label_set, device=device).confidences), lam)
    training = PredictorTraining(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)
    train_predictor(predictor, x_label, labels, training, device)
    calib = exit_stats(net, calib_set, predictor, device=device)
    conf, scores = calib.confidences, calib.scores
    macs = count_macs(predictor, tuple(input_shape))
    parts = ExitParts(net.segment_macs[:-1], net.head_macs, macs)
    gammas, ep_macs = choose_gamma(conf, scores, lam, parts)
    ee = float(route(conf, lam).device_cost(parts).mean())
    oracle = float(route(conf, lam, mode="oracle").device_cost(parts).mean())
    routed = route(conf, lam, mode="ep", scores=scores, gammas=gammas)
    info = {"variant": cfg.variant, "width": cfg.width, "macs": int(macs), "labels": cfg.labels,
            "label_samples": len(x_label), "label_positive_share": labels.mean(0).tolist(),
            "calibration_samples": len(conf), "gammas": gammas, "ee_macs": ee, "ep_macs": float(ep_macs),
            "oracle_macs": oracle,
            "oracle_saving_captured": (ee - float(ep_macs)) / (ee - oracle) if ee > oracle else None,
            "skip_fraction": routed.skip_fraction().tolist(), "pays_off": float(ep_macs) < ee}
    return FittedPredictor(predictor.eval(), gammas, info, routed, calib)
