"""Turn a trained network into an early-exit network for a chain of devices: paper 001's augmentation flow.

``augment`` is the whole stage, for a searched ``ArchNet`` or any ``torch.fx``-traceable classifier
("I have a trained model and these devices; make it an early-exit network for them"):

1. block-level graph and candidate exit locations (``graph``);
2. one head per location from the model's classifier, under the MAC cap (``heads``);
3. EENN candidates: exits at device boundaries, at most one per boundary (the plan's boundaries,
   or every split when no plan is given), pruned by the worst-case latency constraint ``T_const``
   and device memory *before* any training (``candidates``);
4. every head still needed trained at once on the frozen backbone, useless ones dropped after one
   epoch (``train``);
5. thresholds of every surviving candidate searched on the calibration split (``thresholds``);
   the best candidate by the objective wins, the original network (no exit) included, so exits
   are only added where they pay;
6. optionally, backbone and exits fine-tuned together, then thresholds searched again;
7. a second, finer threshold search on the winner (paper 001 §3.2), a correction factor on
   thresholds found on training data, and the EENN run for real on the test split (``report``).

Accuracy losses are always measured against the original network on the same samples.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from jmsnas.compress.quantize import Compressor
from jmsnas.devices import DeviceLike
from jmsnas.errors import ConfigError
from jmsnas.exits.candidates import Placement, enumerate_placements, feasible
from jmsnas.exits.cascade import EarlyExitNet
from jmsnas.exits.costs import ExitLatency
from jmsnas.exits.decision import DecisionUnit, exit_score, exit_units
from jmsnas.exits.graph import BlockGraph, block_graph
from jmsnas.exits.heads import ExitHead, build_exit_head
from jmsnas.exits.result import ExitsResult, evaluate_eenn, heads_info
from jmsnas.exits.thresholds import CascadeStats, Objective, ThresholdSearch, evaluate, objective_value
from jmsnas.exits.thresholds import search_thresholds as _search
from jmsnas.exits.train import ExitOutputs, default_loss_weights, exit_outputs, joint_finetune, train_heads
from jmsnas.exits_config import ExitsConfig
from jmsnas.io import write_json
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.topology import Topology

log = logging.getLogger("jmsnas.exits")


def objective_of(cfg: ExitsConfig) -> Objective:
    return Objective(cfg.objective, cfg.efficiency_weight, cfg.accuracy_weight, cfg.accuracy_budget_pp, cfg.accuracy_z)


def cascade_stats(outs: ExitOutputs, exits: Sequence[int], exit_cost: Sequence[float], final_cost: float,
                  reference_cost: float, reference_correct: np.ndarray | None = None,
                  units: Mapping[int, DecisionUnit] | None = None,
                  scores: Mapping[int, np.ndarray] | None = None) -> CascadeStats:
    """The calibration statistics of the cascade with ``exits`` from every head's logits (the exit's score:
    ``scores`` where given (cross-fitted certainties), else its decision unit's certainty where ``units`` has
    one, else the top-1 probability)."""
    scores = scores or {}
    conf = np.stack([scores[loc] if loc in scores else exit_score(outs.heads[loc], (units or {}).get(loc)).numpy()
                     for loc in exits])
    right = np.stack([(outs.heads[loc].argmax(1) == outs.labels).numpy() for loc in exits])
    final = (outs.final.argmax(1) == outs.labels).numpy()
    return CascadeStats(conf, right, final, np.asarray(exit_cost, dtype=float), float(final_cost),
                        float(reference_cost), reference_correct)


def exit_costs(graph: BlockGraph, head_macs: Mapping[int, int], exits: Sequence[int]) -> tuple[list[float], float]:
    """MACs per sample of leaving at each exit, and of reaching the end (paper 004 eq. (3))."""
    costs, heads = [], 0
    for loc in exits:
        heads += head_macs[loc]
        costs.append(float(graph.macs_between(0, loc) + heads))
    return costs, float(graph.total_macs + heads)


def _check_inputs(graph: BlockGraph, unit_ms: Mapping[str, Sequence[float]], topology: Topology,
                  boundaries: Sequence[int] | None) -> None:
    for d in topology.devices:
        if d.name not in unit_ms or len(unit_ms[d.name]) != graph.num_units:
            got = len(unit_ms[d.name]) if d.name in unit_ms else "none"
            raise ConfigError(f"need {graph.num_units} unit latencies (one per unit of the model) for device "
                              f"{d.name!r}, got {got}", field=f"unit_latency_ms.{d.name}")
    if boundaries is not None:
        b = list(boundaries)
        if len(b) < 2 or b[0] != 0 or b[-1] != graph.num_units or any(x > y for x, y in zip(b, b[1:], strict=False)):
            raise ConfigError(f"boundaries must be non-decreasing unit indices from 0 to {graph.num_units}, got {b}",
                              field="boundaries")


class _Searcher:
    """Threshold searches of many candidates, shared between candidates with the same exits and costs."""

    def __init__(self, graph: BlockGraph, outs: ExitOutputs, head_macs: Mapping[int, int], cfg: ExitsConfig,
                 reference_latency_ms: float, reference_correct: np.ndarray | None,
                 units: tuple[dict[int, DecisionUnit], dict[int, np.ndarray]] = ({}, {})) -> None:
        self.graph, self.outs, self.head_macs, self.cfg = graph, outs, head_macs, cfg
        self.units, self.scores = units
        self.reference_latency_ms = reference_latency_ms
        self.reference_correct = reference_correct
        self.cache: dict[tuple, ThresholdSearch] = {}
        self.seconds = 0.0

    def stats(self, p: Placement) -> CascadeStats:
        if self.cfg.efficiency == "latency":
            costs, final, ref = list(p.exit_latency_ms), p.worst_latency_ms, self.reference_latency_ms
        else:
            (costs, final), ref = exit_costs(self.graph, self.head_macs, p.exits), float(self.graph.total_macs)
        return cascade_stats(self.outs, p.exits, costs, final, ref, self.reference_correct, self.units, self.scores)

    def search(self, p: Placement, thresholds_per_exit: int, compare: bool = True) -> ThresholdSearch:
        stats = self.stats(p)
        key = (p.exits, tuple(stats.exit_cost), stats.final_cost, thresholds_per_exit)
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = _search(stats, objective_of(self.cfg), thresholds_per_exit, compare=compare)
            self.seconds += time.perf_counter() - start
        return self.cache[key]

    def score(self, p: Placement) -> tuple[float, float, float]:
        """(objective, mean latency, worst-case latency) of a candidate with its best thresholds."""
        if not p.exits:
            gain = 0.0 if self.cfg.efficiency == "macs" else 1.0 - p.worst_latency_ms / self.reference_latency_ms
            return objective_value(gain, 0.0, objective_of(self.cfg))[0], p.worst_latency_ms, p.worst_latency_ms
        best = self.search(p, self.cfg.thresholds_per_exit).best
        return best.objective, p.mean_latency_ms(best.termination), p.worst_latency_ms


def _loader(dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def augment(model: nn.Module, datamodule: Any, cfg: ExitsConfig, topology: Topology, latency: ExitLatency, *,
            t_const_ms: float | None = None, split: DeploymentPlan | Sequence[int] | None = None,
            compressors: Sequence[str | Compressor] = (), trained_heads: Mapping[int, ExitHead] | None = None,
            run_dir: str | Path | None = None, seed: int = 0, cache_features: bool | None = None,
            progress: bool = False, device: DeviceLike = None) -> ExitsResult:
    """Make ``model`` an early-exit network for ``topology`` (the module docstring lists the steps).

    Args:
        model: the trained classifier (``ArchNet`` or fx-traceable); never modified.
        datamodule: a ``JmsnasDataModule`` (train / val / test splits).
        cfg: the ``exits`` section.
        topology: devices and links.
        latency: what units and heads cost on each device (``costs.ExitLatency``).
        t_const_ms: worst-case latency constraint; None: only memory prunes.
        split: a sequential plan of this model whose boundaries (and cut payloads) are kept, exits going
            to its inner boundaries; or unit indices (on the topology's first path, links
            uncompressed); None: every split is enumerated (paper 001 maps each subgraph to the next device).
        compressors: without a plan, one per cut in path order: the enumerated splits price each link
            with its compressor, as the planner does (a plan brings its own payloads).
        trained_heads: heads already trained on this frozen backbone, per location (an earlier ``augment``
            or ``train.train_heads``): reused as paper 001 reuses trained exits; others are trained.
        run_dir: if given, ``result.json``, ``heads.json`` and ``heads/u<unit>.pt`` are written there.
        seed: seeds head initialisation and batch order.
        cache_features: force feature caching on / off (None: when it fits ``cfg.feature_cache_bytes``).
        progress: print what happens.
        device: where heads, decision units and fine-tuning train (None: the model's); all end on the model's.

    Raises:
        ConfigError: inconsistent plan / boundaries / latencies, or a model exits cannot be added to.
    """
    t0 = time.perf_counter()
    plan = split if isinstance(split, DeploymentPlan) else None
    if plan is not None and any(s.part != "main" for s in plan.segments):
        raise ConfigError("exits need a sequential plan (a chain or one path through a mesh)", field="plan")
    graph = block_graph(model, datamodule.info().input_shape)
    unit_ms, fixed = latency.units(graph, topology), plan.boundaries() if plan is not None else split
    _check_inputs(graph, unit_ms, topology, fixed)
    torch.manual_seed(seed)
    cands = _Candidates.build(graph, cfg, topology, latency, unit_ms, dict(trained_heads or {}), plan, fixed,
                              compressors, t_const_ms)
    timings = {"graph_and_candidates": time.perf_counter() - t0}
    if progress:
        log.info(f"exits: {len(graph.locations)} locations, {cands.summary()}")
    training, kept = _train_needed(graph, cands, datamodule, cfg, seed, cache_features, progress, device)
    timings["head_training"] = training.seconds if training is not None else 0.0
    chosen = _choose(graph, cands, kept, datamodule, cfg, seed, timings, device)
    test = evaluate_eenn(chosen.net, chosen.placement, _loader(datamodule.test_set, datamodule.cfg.batch_size),
                         graph.model, cands.original.worst_latency_ms)
    timings["total"] = time.perf_counter() - t0
    result = ExitsResult(
        exits=list(chosen.placement.exits), thresholds=chosen.thresholds, placement=chosen.placement,
        original_placement=cands.original, calibration=chosen.calibration, search=chosen.info, test=test,
        heads_info=heads_info(cands.heads, cands.head_macs, cands.head_params, training, cands.cap, list(cands.given)),
        candidates=cands.counts(len(chosen.ok)), timings_s=timings, config=cfg.model_dump(mode="json"),
        net=chosen.net, graph=chosen.graph,
        heads={loc: h for loc, h in zip(chosen.placement.exits, chosen.heads, strict=True)},
        decision_units={loc: u for loc, u in zip(chosen.placement.exits, chosen.net.decision_units, strict=True) if u})
    if run_dir is not None:
        save_result(result, Path(run_dir), finetuned=bool(chosen.finetune and chosen.finetune["kept"]))
    return result


@dataclass
class _Candidates:
    """Step 1-3: the heads per location and the EENN candidates priced and pruned before any training."""

    heads: dict[int, ExitHead]
    given: dict[int, ExitHead]
    head_macs: dict[int, int]
    head_params: dict[int, int]
    cap: float
    placements: list[Placement]
    ok: list[Placement]
    original: Placement
    needed: list[int]
    fixed: Sequence[int] | None
    t_const_ms: float | None

    @classmethod
    def build(cls, graph: BlockGraph, cfg: ExitsConfig, topology: Topology, latency: ExitLatency,
              unit_ms: Mapping[str, Sequence[float]], given: dict[int, ExitHead], plan: DeploymentPlan | None,
              fixed: Sequence[int] | None, compressors: Sequence[str | Compressor],
              t_const_ms: float | None) -> _Candidates:
        cap = cfg.max_head_mac_fraction * graph.total_macs
        heads: dict[int, ExitHead] = {}
        for loc in graph.locations:
            head = given[loc] if loc in given else build_exit_head(graph.feature_shapes[loc], graph.blueprint, cap)
            if head is not None:
                heads[loc] = head
        head_macs = {loc: h.macs for loc, h in heads.items()}
        head_params = {loc: sum(p.numel() for p in h.parameters()) for loc, h in heads.items()}
        head_ms = latency.heads(graph, topology, unit_ms, heads)
        path = plan.devices if plan is not None else None
        link_ms = (lambda m, raw: plan.cuts[m].link_ms) if plan is not None else None
        placements = enumerate_placements(graph, topology, unit_ms, head_ms, head_params, list(heads), fixed, path,
                                          link_ms, result_to_sink=cfg.result_at == "sink", compressors=compressors)
        ok = feasible(placements, t_const_ms)
        originals = [p for p in placements if not p.exits and p.fits_memory] or [p for p in placements if not p.exits]
        original = min(originals, key=lambda p: p.worst_latency_ms)
        needed = sorted({loc for p in ok for loc in p.exits})
        return cls(heads, given, head_macs, head_params, cap, placements, ok, original, needed, fixed, t_const_ms)

    def summary(self) -> str:
        return (f"{len(self.placements)} candidates, {len(self.ok)} within T_const/memory, training heads at units "
                f"{self.needed}")

    def counts(self, after_dropping: int) -> dict[str, Any]:
        n_feasible = len(feasible(self.placements, self.t_const_ms))
        return {"total": len(self.placements), "feasible": n_feasible, "after_dropping": after_dropping,
                "t_const_ms": self.t_const_ms, "pruned_before_training": len(self.placements) - n_feasible,
                "mode": "fixed" if self.fixed is not None else "enumerated"}


def _train_needed(graph: BlockGraph, cands: _Candidates, dm: Any, cfg: ExitsConfig, seed: int,
                  cache_features: bool | None, progress: bool, device: DeviceLike) -> tuple[Any, dict[int, ExitHead]]:
    """Step 4: every head a surviving candidate needs, trained at once (reused heads kept as they are)."""
    to_train = [loc for loc in cands.needed if loc not in cands.given]
    training = train_heads(graph, {loc: cands.heads[loc] for loc in to_train}, dm.train_set, _calibration_set(dm, cfg),
                           epochs=cfg.head_epochs, lr=cfg.head_lr, batch_size=dm.cfg.batch_size,
                           cache_bytes=cfg.feature_cache_bytes, min_accuracy_gain=cfg.min_head_accuracy_gain,
                           seed=seed, cache=cache_features, progress=progress, device=device) if to_train else None
    kept = {**(training.heads if training is not None else {}),
            **{loc: cands.given[loc] for loc in cands.needed if loc in cands.given}}
    return training, kept


@dataclass
class _Choice:
    """Steps 5-7: the winning candidate, its heads, thresholds and EENN."""

    placement: Placement
    ok: list[Placement]
    graph: BlockGraph
    heads: list[nn.Module]
    thresholds: list[float]
    search: ThresholdSearch | None
    finetune: dict | None
    net: EarlyExitNet
    info: dict[str, Any]
    calibration: Any = None


def _choose(graph: BlockGraph, cands: _Candidates, kept: dict[int, ExitHead], dm: Any, cfg: ExitsConfig, seed: int,
            timings: dict[str, float], device: DeviceLike) -> _Choice:
    """Thresholds of every surviving candidate searched; the best wins (the original network included)."""
    ok = [p for p in cands.ok if all(loc in kept for loc in p.exits)]
    if not any(not p.exits for p in ok):
        ok.append(cands.original)  # the original network is always an option (even if it breaks T_const)
    outs = exit_outputs(graph, kept, _calibration_set(dm, cfg), dm.cfg.batch_size, device)
    ref_correct = (outs.final.argmax(1) == outs.labels).numpy()
    searcher = _Searcher(graph, outs, cands.head_macs, cfg, cands.original.worst_latency_ms, ref_correct,
                         exit_units(outs.heads, outs.labels, cfg, seed, device))
    scored = sorted(((searcher.score(p), i) for i, p in enumerate(ok)), key=lambda s: s[0])
    chosen = ok[scored[0][1]]
    timings["threshold_search"] = searcher.seconds
    coarse = searcher.search(chosen, cfg.thresholds_per_exit) if chosen.exits else None
    final_graph, final_heads = graph, [kept[loc] for loc in chosen.exits]
    search, finetune, final_searcher = None, None, searcher
    if chosen.exits:
        search = searcher.search(chosen, cfg.final_thresholds_per_exit, compare=len(chosen.exits) <= 2)
        if cfg.joint_finetune:
            final_graph, final_heads, search, finetune, final_searcher = _finetune(graph, chosen, final_heads, search,
                                                                                   dm, cfg, searcher, seed, device)
            timings["joint_finetune"] = finetune["seconds"]
    factor = cfg.correction_factor if cfg.calibration == "train" else 1.0
    thresholds = [factor * t for t in search.best.thresholds] if search is not None else []
    # the calibration figures (plan.json's termination rates and mean latency) at the thresholds actually used
    calibration = None if search is None else search.best if factor == 1.0 else evaluate(
        final_searcher.stats(chosen), thresholds, objective_of(cfg))
    net = EarlyExitNet.build(final_graph, chosen.exits, final_heads, thresholds,
                             [final_searcher.units.get(loc) for loc in chosen.exits])
    info = _search_info(searcher, chosen, coarse, search, scored, ok, factor, finetune)
    return _Choice(chosen, ok, final_graph, final_heads, thresholds, search, finetune, net, info, calibration)


def _calibration_set(dm: Any, cfg: ExitsConfig):
    return dm.val_set if cfg.calibration == "val" else dm.train_set


def _finetune(graph: BlockGraph, chosen: Placement, heads: list[nn.Module], search: ThresholdSearch, dm: Any,
              cfg: ExitsConfig, frozen: _Searcher, seed: int, device: DeviceLike
              ) -> tuple[BlockGraph, list[nn.Module], ThresholdSearch, dict, _Searcher]:
    """Joint fine-tuning, thresholds (and decision units) found again; the fine-tuned EENN is kept if it scores
    better. Returns the graph, heads, search, an info dict and the searcher whose statistics the search used."""
    weights = cfg.loss_weights or default_loss_weights(len(chosen.exits))
    if len(weights) != len(chosen.exits) + 1:
        raise ConfigError(f"the chosen EENN has {len(chosen.exits) + 1} exits (final included) but loss_weights "
                          f"has {len(weights)}", field="exits.loss_weights")
    tuned, tuned_heads, seconds = joint_finetune(graph, chosen.exits, heads, dm.train_set, weights=weights,
                                                 epochs=cfg.joint_epochs, lr=cfg.joint_lr,
                                                 batch_size=dm.cfg.batch_size, seed=seed, device=device)
    calib = _calibration_set(dm, cfg)
    outs = exit_outputs(tuned, dict(zip(chosen.exits, tuned_heads, strict=True)), calib, dm.cfg.batch_size, device)
    searcher = _Searcher(tuned, outs, frozen.head_macs, cfg, frozen.reference_latency_ms, frozen.reference_correct,
                         exit_units(outs.heads, outs.labels, cfg, seed, device))
    again = searcher.search(chosen, cfg.final_thresholds_per_exit, compare=len(chosen.exits) <= 2)
    keep = again.best.objective < search.best.objective
    info = {"seconds": seconds, "weights": list(weights), "kept": keep, "objective_frozen": search.best.objective,
            "objective_finetuned": again.best.objective}
    return (tuned, tuned_heads, again, info, searcher) if keep else (graph, heads, search, info, frozen)


def _search_info(searcher: _Searcher, chosen: Placement, coarse: ThresholdSearch | None,
                 final: ThresholdSearch | None, scored: list, ok: list[Placement], factor: float,
                 finetune: dict | None) -> dict[str, Any]:
    gaps = [s.gap for s in searcher.cache.values() if s.gap is not None]
    bf_s = [s.seconds.get("bellman_ford", 0.0) for s in searcher.cache.values()]
    ex_s = [s.seconds.get("exhaustive", 0.0) for s in searcher.cache.values() if "exhaustive" in s.seconds]
    top = [{"placement": ok[i].to_dict(), "objective": v[0], "mean_latency_ms": v[1]} for v, i in scored[:5]]
    out: dict[str, Any] = {
        "searches": len(searcher.cache), "seconds": searcher.seconds, "bellman_ford_seconds": sum(bf_s),
        "exhaustive_seconds": sum(ex_s), "max_gap_to_exhaustive": max(gaps) if gaps else None,
        "correction_factor": factor, "top_candidates": top, "joint_finetune": finetune}
    for name, s in (("coarse", coarse), ("final", final)):
        if s is not None:
            out[name] = {"method": s.method, "thresholds_per_exit": [len(g) for g in s.grids], "gap": s.gap,
                         "gain_gap_pp": s.gain_gap_pp, "seconds": s.seconds, "objective": s.best.objective,
                         "gain": s.best.gain, "loss_pp": s.best.loss_pp}
    return out


def save_result(result: ExitsResult, run_dir: Path, finetuned: bool = False) -> None:
    """``result.json``, ``heads.json`` (configs, thresholds) and ``heads/u<unit>.pt`` (plain state dicts)."""
    (run_dir / "heads").mkdir(parents=True, exist_ok=True)
    result.to_json(run_dir / "result.json")
    heads = []
    for (loc, head), t in zip(result.heads.items(), result.thresholds, strict=True):
        torch.save({k: v.detach().clone() for k, v in head.state_dict().items()}, run_dir / "heads" / f"u{loc}.pt")
        du = result.decision_units.get(loc)
        heads.append({"unit": loc, "threshold": t, "file": f"heads/u{loc}.pt", "config": head.config.to_dict()}
                     | ({"decision_unit": du.to_dict()} if du is not None else {}))
    write_json(run_dir / "heads.json", {"exits": heads}, newline=True)
    if finetuned:
        torch.save({k: v.detach().clone() for k, v in result.graph.model.state_dict().items()}, run_dir / "backbone.pt")


def load_heads(run_dir: str | Path) -> tuple[dict[int, ExitHead], dict[int, float]]:
    """Heads and thresholds written by ``save_result`` (``weights_only`` loading, no pickle of ours)."""
    root = Path(run_dir)
    try:
        data = json.loads((root / "heads.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read heads.json ({exc})", file=root / "heads.json") from exc
    heads, thresholds = {}, {}
    for entry in data["exits"]:
        from jmsnas.exits.heads import HeadConfig

        head = ExitHead(HeadConfig.from_dict(entry["config"]))
        head.load_state_dict(torch.load(root / entry["file"], weights_only=True))
        heads[int(entry["unit"])] = head.eval()
        thresholds[int(entry["unit"])] = float(entry["threshold"])
    return heads, thresholds
