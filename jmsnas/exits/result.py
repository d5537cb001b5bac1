"""The result of the exits stage: what was chosen, how it does, and against the original network.

``ExitsResult.to_dict()`` is plain JSON (``result.json``); ``to_markdown()`` is the per-exit table
(accuracy, termination rate, cumulative MACs, latency) and the EENN-vs-original summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jmsnas.exits.candidates import Placement
from jmsnas.exits.cascade import EarlyExitNet, MacCounter
from jmsnas.exits.decision import DecisionUnit
from jmsnas.exits.graph import BlockGraph
from jmsnas.exits.heads import ExitHead
from jmsnas.exits.thresholds import CascadeMetrics
from jmsnas.io import write_json


@dataclass
class Evaluation:
    """The EENN run for real (masked) on one split, against the original network.

    ``exits`` has one row per exit, the final classifier last: ``location``, ``device``,
    ``threshold``, ``termination`` (share of samples leaving there), ``accuracy`` (of those samples),
    ``head_accuracy`` (of that classifier on every sample), ``cumulative_macs``, ``latency_ms``.
    ``loss_se_pp`` is the standard error of the paired per-sample accuracy difference to the original
    network: how far the measured loss may be from the true one on this many samples.
    """

    split: str
    samples: int
    accuracy: float
    mean_macs: float
    predicted_mean_macs: float
    mean_latency_ms: float
    worst_latency_ms: float
    exits: list[dict[str, Any]]
    original: dict[str, float]
    loss_se_pp: float = 0.0

    @property
    def mac_reduction(self) -> float:
        """1 - mean MACs / original MACs."""
        return 1.0 - self.mean_macs / self.original["macs"]

    @property
    def accuracy_loss_pp(self) -> float:
        return 100.0 * (self.original["accuracy"] - self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mac_reduction": self.mac_reduction, "accuracy_loss_pp": self.accuracy_loss_pp}


@dataclass
class ExitsResult:
    """What ``augment`` returns. ``net``, ``graph`` and ``heads`` are live objects, not serialised."""

    exits: list[int]
    thresholds: list[float]
    placement: Placement
    original_placement: Placement
    calibration: CascadeMetrics | None
    search: dict[str, Any]
    test: Evaluation
    heads_info: dict[int, dict[str, Any]]
    candidates: dict[str, Any]
    timings_s: dict[str, float]
    config: dict[str, Any]
    net: EarlyExitNet = field(repr=False)
    graph: BlockGraph = field(repr=False)
    heads: dict[int, nn.Module] = field(repr=False)
    decision_units: dict[int, DecisionUnit] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"exits": self.exits, "thresholds": self.thresholds, "placement": self.placement.to_dict(),
                "original_placement": self.original_placement.to_dict(),
                "calibration": None if self.calibration is None else asdict(self.calibration),
                "search": self.search, "test": self.test.to_dict(),
                "heads": {str(k): v for k, v in self.heads_info.items()}, "candidates": self.candidates,
                "blocks": self.graph.describe(), "locations": self.graph.locations,
                "timings_s": self.timings_s, "config": self.config}

    def to_json(self, path: str | Path) -> None:
        write_json(Path(path), _finite(self.to_dict()), newline=True)

    def to_markdown(self) -> str:
        return evaluation_markdown(self.test)


def _finite(value: Any) -> Any:
    """NaN / inf as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@torch.no_grad()
def evaluate_eenn(net: EarlyExitNet, placement: Placement, loader, original: nn.Module,
                  original_latency_ms: float, split: str = "test") -> Evaluation:
    """Run ``net`` for real on ``loader`` (MACs counted by hooks) and every exit on every sample.

    Args:
        net: the cascade (eval mode).
        placement: its placement (for latencies and devices).
        loader: batches of ``(x, y)``.
        original: the original network (accuracy reference).
        original_latency_ms: the original network's completion latency on its best plan.
        split: a name for the report.
    """
    net.eval()
    original.eval()
    k_exits = net.num_exits
    exit_idx, labels, preds, heads_right, orig_right = [], [], [], [], []
    counter = MacCounter(net)
    for x, y in loader:
        with counter:
            logits, idx = net(x)
        exit_idx.append(idx)
        preds.append(logits.argmax(1))
        labels.append(y)
        heads_right.append(torch.stack([o.argmax(1) == y for o in net.all_exits(x)]))
        orig_right.append(original(x).argmax(1) == y)
    idx, y, pred = torch.cat(exit_idx), torch.cat(labels), torch.cat(preds)
    right, head_right = pred == y, torch.cat(heads_right, dim=1)
    diff = torch.cat(orig_right).double() - right.double()
    n = len(y)
    term = torch.bincount(idx, minlength=k_exits + 1).double() / n
    costs = net.exit_costs()
    lat = [*placement.exit_latency_ms, placement.worst_latency_ms]
    rows = []
    for k in range(k_exits + 1):
        mask = idx == k
        rows.append({"location": net.locations[k] if k < k_exits else None,
                     "device": placement.exit_devices[k] if k < k_exits else placement.path[-1],
                     "threshold": net.thresholds[k] if k < k_exits else None,
                     "termination": float(term[k]),
                     "accuracy": float(right[mask].double().mean()) if mask.any() else float("nan"),
                     "head_accuracy": float(head_right[k].double().mean()),
                     "cumulative_macs": int(costs[k]), "latency_ms": float(lat[k])})
    return Evaluation(split, n, float(right.double().mean()), counter.macs / n, net.predicted_macs(idx) / n,
                      placement.mean_latency_ms(term.tolist()), placement.worst_latency_ms, rows,
                      {"accuracy": float(torch.cat(orig_right).double().mean()), "macs": float(costs[-1] - sum(
                          net.head_macs)), "latency_ms": float(original_latency_ms)},
                      100.0 * float(diff.std(unbiased=False)) / math.sqrt(n))


def evaluation_markdown(ev: Evaluation) -> str:
    """Per-exit table and the EENN-vs-original summary of one evaluation."""
    lines = [f"Split: {ev.split} ({ev.samples} samples)", "",
             "| exit | unit | device | threshold | termination | accuracy (exited) | head accuracy (all) | "
             "cumulative MACs | latency (ms) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in enumerate(ev.exits):
        name = "final" if r["location"] is None else f"exit {k + 1}"
        thr = "-" if r["threshold"] is None else f"{r['threshold']:.4f}"
        acc = "-" if not math.isfinite(r["accuracy"]) else f"{r['accuracy']:.2%}"
        lines.append(f"| {name} | {r['location'] if r['location'] is not None else '-'} | {r['device']} | {thr} | "
                     f"{r['termination']:.1%} | {acc} | {r['head_accuracy']:.2%} | {r['cumulative_macs']:,} | "
                     f"{r['latency_ms']:.2f} |")
    o = ev.original
    lines += ["", "| network | accuracy | mean MACs | mean latency (ms) | worst-case latency (ms) |",
              "| --- | --- | --- | --- | --- |",
              f"| original | {o['accuracy']:.2%} | {o['macs']:,.0f} | {o['latency_ms']:.2f} | {o['latency_ms']:.2f} |",
              f"| EENN | {ev.accuracy:.2%} ({-ev.accuracy_loss_pp:+.2f} ± {ev.loss_se_pp:.2f} pp) | "
              f"{ev.mean_macs:,.0f} ({-100 * ev.mac_reduction:+.1f} %) | {ev.mean_latency_ms:.2f} | "
              f"{ev.worst_latency_ms:.2f} |"]
    return "\n".join(lines) + "\n"


def heads_info(heads: Mapping[int, ExitHead], macs: Mapping[int, int], params: Mapping[int, int], training: Any,
                cap: float, reused: Sequence[int] = ()) -> dict[int, dict[str, Any]]:
    """Per head location: its config, MACs, parameters, and how its training went (``result.json``'s ``heads``)."""
    out = {}
    for loc, head in heads.items():
        trained = training is not None and loc in training.history
        out[loc] = {"config": head.config.to_dict(), "macs": macs[loc], "params": params[loc], "mac_cap": cap,
                    "trained": trained, "reused": loc in reused,
                    "calibration_accuracy": training.accuracy.get(loc) if training is not None else None,
                    "dropped_after_first_epoch": training.dropped.get(loc) if training is not None else None,
                    "history": training.history.get(loc, []) if training is not None else []}
    if training is not None:
        for loc in out:
            out[loc]["features_cached"] = training.cached
    return out
