"""The deploy stage's paper-004 extras on a chosen EENN: the Exit Predictor and the bandwidth-adaptive thresholds.

``fit_predictor`` (``exits.predictor``) trains the predictor on the EENN's eq. (9) labels, picks its γs on
the calibration split and prices the plan with it; ``fit_adaptive_thresholds`` (``exits.adaptive``) solves
eq. (10) on the calibration split over a range of bandwidths of the cut after the last exit and fits the
regressors the bundle carries. Each writes what it found to ``exits/`` (``predictor.json``,
``adaptive.json``) and logs it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from jmsnas.exits.adaptive_fit import adaptive_entry, exit_stats, fit_adaptive, part_ms_of, tau_at
from jmsnas.exits.costs import ExitLatency
from jmsnas.exits.predictor_fit import FittedPredictor, fit_exit_predictor, plan_with_predictor
from jmsnas.exits.result import ExitsResult
from jmsnas.io import write_json
from jmsnas.plan.artifact import DeploymentPlan

if TYPE_CHECKING:
    from jmsnas.stages.deploy import _Choice

__all__ = ["EXITS_DIR", "fit_adaptive_thresholds", "fit_predictor"]

log = logging.getLogger("jmsnas.deploy")
EXITS_DIR = "exits"  #: where the exits stage writes, inside a choice folder


def _calib(ch: _Choice):  # noqa: ANN202
    return ch.dm.val_set if ch.exp.config.exits.calibration == "val" else ch.dm.train_set


def _head_and_predictor_ms(ch: _Choice, exits: ExitsResult, plan: DeploymentPlan,
                           predictor_macs: int) -> tuple[list[float], float]:
    """Each exit head's ms on its device (as the exits stage prices heads) and the predictor's on the first
    device: its MACs at the roofline's rate, else at the device's units' average rate, as heads are priced."""
    pricing = ExitLatency(models=ch.models, spec=ch.spec)
    unit_ms = pricing.units(exits.graph, ch.exp.topology)
    head_fn = pricing.heads(exits.graph, ch.exp.topology, unit_ms, exits.heads)
    head_ms = [head_fn(e.device, loc) for e, loc in zip(plan.exits, exits.exits, strict=True)]
    first = ch.exp.topology.device(plan.devices[0])
    predictor_ms = (1e3 * predictor_macs / first.analytic.macs_per_s if first.analytic is not None
                    else sum(unit_ms[first.name]) * predictor_macs / max(exits.graph.total_macs, 1))
    return head_ms, float(predictor_ms)


def fit_predictor(ch: _Choice, exits: ExitsResult, plan: DeploymentPlan,
                  t_const_ms: float) -> tuple[FittedPredictor | None, DeploymentPlan]:
    """``exits.predictor`` fitted to the chosen EENN (``exits/predictor.json`` says what it buys) and the plan
    with it priced (``plan_with_predictor``); (None, the plan) without one. The exits were chosen for
    ``t_const_ms`` without the predictor: a worst case it pushes over that is logged as a warning."""
    cfg = ch.exp.config.exits
    if cfg.predictor is None:
        return None, plan
    if not exits.exits:
        log.info("exits       no exit chosen: no Exit Predictor to fit")
        return None, plan
    calib = _calib(ch)
    labels = ch.dm.train_set if cfg.predictor.labels == "train" else calib
    log.info(f"exits       Exit Predictor ({cfg.predictor.variant}) on {cfg.predictor.labels} labels, "
             f"{cfg.predictor.epochs} epochs ...")
    fitted = fit_exit_predictor(exits.net, labels, calib, tuple(ch.spec.input_shape), cfg.predictor, ch.seed,
                                ch.device)
    head_ms, predictor_ms = _head_and_predictor_ms(ch, exits, plan, fitted.info["macs"])
    priced = plan_with_predictor(plan, fitted.routing, head_ms, predictor_ms)
    fitted.info.update(predictor_ms=predictor_ms, head_ms=head_ms, mean_latency_ms_without=plan.mean_latency_ms,
                       mean_latency_ms_with=priced.mean_latency_ms, worst_latency_ms_with=priced.total_latency_ms,
                       t_const_ms=t_const_ms, holds_t_const=priced.total_latency_ms <= t_const_ms)
    if priced.total_latency_ms > t_const_ms:
        log.warning(f"exits       with the Exit Predictor the worst case is {priced.total_latency_ms:.3f} ms, over "
                    f"T_const {t_const_ms:g} ms (the exits were chosen without it)")
    write_json(ch.dir / EXITS_DIR / "predictor.json", fitted.info, newline=True)
    i = fitted.info
    log.info(f"exits       Exit Predictor: gammas {[round(g, 3) for g in fitted.gammas]}, on-device MACs "
             f"{i['ee_macs']:,.0f} -> {i['ep_macs']:,.0f} (oracle {i['oracle_macs']:,.0f}) on calibration"
             f", mean latency {plan.mean_latency_ms:.3f} -> {priced.mean_latency_ms:.3f} ms"
             + ("" if i["pays_off"] else "; it does not pay off here (every exit kept costs its MACs on top)"))
    return fitted, priced


def fit_adaptive_thresholds(ch: _Choice, exits: ExitsResult, plan: DeploymentPlan) -> dict | None:
    """``exits.adaptive``: the manifest's ``adaptive`` entry for the chosen EENN (None without it or without
    an exit); the optima at the training bandwidths go to ``exits/adaptive.json``."""
    cfg = ch.exp.config.exits
    if cfg.adaptive is None:
        return None
    if not exits.exits:
        log.info("exits       no exit chosen: no adaptive thresholds to fit")
        return None
    fitted = ch.predictor  # its calibration statistics and part times are reused, not computed again
    head_ms, predictor_ms = ((fitted.info["head_ms"], fitted.info["predictor_ms"]) if fitted is not None
                             else (_head_and_predictor_ms(ch, exits, plan, 0)[0], 0.0))
    lat = [float(e.latency_ms) for e in plan.exits]  # type: ignore[arg-type]  (plan_with_exits prices them)
    parts = part_ms_of(lat, head_ms, predictor_ms)
    cut = plan.devices.index(plan.exits[-1].device)  # the link after the last exit
    link = ch.exp.topology.link(plan.cuts[cut].src, plan.cuts[cut].dst)
    bits = 8.0 * plan.cuts[cut].payload_bytes
    stats = fitted.calibration if fitted is not None else exit_stats(exits.net, _calib(ch), device=ch.device)
    gammas = None if fitted is None else fitted.gammas
    tau = cfg.adaptive.tau_ms or tau_at(stats, parts, bits, link.bandwidth_mbps, exits.thresholds, gammas)
    bws = cfg.adaptive.bandwidths_mbps or np.geomspace(link.bandwidth_mbps / 20, link.bandwidth_mbps * 20, 12).tolist()
    log.info(f"exits       adaptive thresholds on {plan.cuts[cut].src} -> {plan.cuts[cut].dst} for "
             f"{min(bws):.3g}-{max(bws):.3g} Mbit/s, tau {tau:.3f} ms ...")
    rule, optima = fit_adaptive(stats, parts, bits, tau, bws, cfg.adaptive.intervals, ch.seed)
    entry = adaptive_entry(rule, stats, parts, bits, tau, cut)
    write_json(ch.dir / EXITS_DIR / "adaptive.json", {k: v for k, v in entry.items() if k != "stats"}
               | {"optima": optima, "planned_bandwidth_mbps": link.bandwidth_mbps}, newline=True)
    broken = sum(not o["feasible"] for o in optima)
    log.info(f"exits       adaptive thresholds: {len(rule.regressors)} regressors over {len(bws)} bandwidths"
             + (f"; tau cannot be held at {broken} of them" if broken else ""))
    return entry
