"""Exit-wise confidence thresholds of a cascade: exact exhaustive evaluation and Bellman-Ford (paper 001 §3.2).

A sample leaves at the first early exit k whose confidence (top-1 softmax probability, paper 004
eq. (2)) is at least ``t_k``; otherwise at the final classifier. The mean cost follows paper 004
eq. (3): a sample leaving at exit k pays the backbone up to k and every head up to k.

**Threshold grid.** Paper 001 uses 13 thresholds per exit but does not give their values. A fixed
grid wastes most of its nodes where no confidence lies (they crowd near 1), so the ``T`` thresholds
of an exit sit at evenly spaced quantiles of that exit's own calibration confidences, each halfway
between two neighbouring observed values (so that float rounding at run time cannot flip a
decision), the lowest at 0 (every sample leaves).

**Exhaustive.** ``exhaustive`` evaluates every one of the ``T^K`` combinations exactly on the
calibration samples, vectorised: the still-running mask over the combinations of exits before k is
one ``N x T^(k-1)`` matrix, so each exit's termination and correct counts are one matrix product.
It is what the flow uses for up to three exits, and the reference Bellman-Ford is checked against.

**Bellman-Ford.** Paper 001 turns the search into a shortest path over nodes (exit k, threshold j),
with a source and a final node, solved by Bellman-Ford because edge costs may be negative. An
edge cost must not depend on the rest of the path, which the exact cost does (a sample reaches
exit k only if *every* earlier exit let it pass). Paper 001 assumes independent exits; we use the
weaker first-order form, which is exact more often: the edge ``(k-1, j) -> (k, j')`` carries the
change in cost and correct samples caused by the samples that *exit k-1 at threshold j lets pass*
and exit k takes at ``j'`` (the source edge: exit 1 alone). The path sum then equals the exact
cascade whenever no sample is accepted by an exit, rejected by the next and accepted again by the
one after; with **at most two early exits this always holds**, so Bellman-Ford is exact there. With
three or more it can count a sample twice; the gap to the exhaustive optimum is reported.

For the weighted objective the path weight is a scalar. For the accuracy budget (maximise the
mean-cost reduction subject to an accuracy loss) each node keeps the Pareto set of (cost, correct
[, disagreements]) labels (multi-criteria Bellman-Ford); the Pareto paths reaching the final node
are then evaluated exactly and the best one within the budget is taken.

**Objectives.** ``weighted`` (paper 001): minimise ``-w_e * gain + w_a * loss`` with ``gain = 1 -
mean_cost / reference_cost`` and ``loss = reference_accuracy - accuracy`` (fractions; paper 001
uses 0.9 / 0.1). ``accuracy_budget``: the largest gain with ``loss + z * se <= budget_pp / 100``,
where ``se`` is the standard error of the paired per-sample accuracy difference between the
cascade and the original network on the calibration samples, Agresti-Min adjusted (``loss_bound``;
``z = accuracy_z``; 0: the plain budget). Why a margin: the chosen thresholds are the best of many on
a few hundred samples, so the loss they show there is biased low (a winner's curse); on MNIST-1D with
1,600 calibration samples a plain 1 pp budget came out at 1.1-1.65 pp on the test split, and
``benchmarks/exit_budget.py`` (400 calibration samples, 10 seeds) held 1 pp on the test split in 4 / 8 /
10 / 10 seeds at z = 0 / 1 / 2 / 3 (hence the default 2).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import numpy as np

from jmsnas.exits.cascade_stats import CascadeMetrics, CascadeStats, Objective, ThresholdSearch, confidence

__all__ = ["CascadeMetrics", "CascadeStats", "Objective", "ThresholdSearch", "bellman_ford", "confidence", "evaluate",
           "exhaustive", "exhaustive_tables", "first_order_estimate", "objective_value", "search_thresholds",
           "threshold_grid"]

MAX_EXHAUSTIVE_CONFIGS = 2_000_000
Label = tuple[float, float, float, tuple[int, ...]]  # (cost, correct, disagreements, path)


def threshold_grid(conf: np.ndarray, count: int) -> np.ndarray:
    """``count`` increasing thresholds at quantiles of ``conf``, halfway between observed values; the first is 0."""
    values = np.unique(np.asarray(conf, dtype=np.float64))
    levels = np.linspace(0.0, 1.0, count)
    idx = np.unique(np.round(levels * (len(values) - 1)).astype(int))
    grid = [0.0 if i == 0 else 0.5 * (values[i - 1] + values[i]) for i in idx]
    return np.array(sorted(set(grid)), dtype=np.float64)


def loss_bound(loss: np.ndarray | float, disagree: np.ndarray | float, n: int, z: float) -> np.ndarray | float:
    """Upper bound ``loss + z * se`` of the paired accuracy difference (``disagree``: share where exactly one is right).

    Agresti and Min's (2005) adjusted interval: half a sample is added to each discordant cell (``n + 2``
    samples, one more disagreement, the same difference), so a cascade that disagrees with the original
    network on none of a few hundred calibration samples still gets a margin (the plain Wald ``se`` is 0
    there, and such a choice is the one most likely to be a lucky draw).
    """
    if z == 0:
        return loss
    n_adj = n + 2.0
    loss_adj = np.asarray(loss) * n / n_adj
    disagree_adj = (np.asarray(disagree) * n + 1.0) / n_adj
    return loss_adj + z * np.sqrt(np.maximum(disagree_adj - np.square(loss_adj), 0.0) / n_adj)


def objective_value(gain: float, loss: float, objective: Objective, bound: float | None = None) -> tuple[float, bool]:
    """``(value to minimise, feasible)`` for cost ``gain`` and accuracy ``loss`` (fractions); ``bound``: loss + z se."""
    if objective.kind == "weighted":
        return -objective.efficiency_weight * gain + objective.accuracy_weight * loss, True
    feasible = (loss if bound is None else bound) <= objective.accuracy_budget_pp / 100.0 + 1e-12
    return (-gain if feasible else 1.0 + loss), feasible


def evaluate(stats: CascadeStats, thresholds: Sequence[float], objective: Objective,
             indices: Sequence[int] = ()) -> CascadeMetrics:
    """Exact metrics of one configuration (vectorised over samples)."""
    k_exits, n = stats.num_exits, stats.num_samples
    exit_at = np.full(n, k_exits)
    for k in reversed(range(k_exits)):
        exit_at = np.where(stats.confidence[k] >= thresholds[k], k, exit_at)
    rows = np.arange(n)
    correct = np.vstack([stats.correct, stats.final_correct[None, :]])[exit_at, rows]
    costs = np.append(stats.exit_cost, stats.final_cost)
    term = np.bincount(exit_at, minlength=k_exits + 1) / n
    exit_acc = tuple(float(correct[exit_at == k].mean()) if term[k] > 0 else float("nan") for k in range(k_exits + 1))
    gain = 1.0 - float(costs[exit_at].mean()) / stats.reference_cost
    loss = stats.reference_accuracy - float(correct.mean())
    bound = float(loss_bound(loss, float(np.abs(correct - stats.reference_correct).mean()), n, objective.accuracy_z))
    value, feasible = objective_value(gain, loss, objective, bound)
    return CascadeMetrics(tuple(float(t) for t in thresholds), tuple(int(i) for i in indices), float(correct.mean()),
                          float(costs[exit_at].mean()), tuple(float(v) for v in term), exit_acc, gain, 100.0 * loss,
                          100.0 * bound, value, feasible)


def exhaustive_tables(stats: CascadeStats, grids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ``(correct count, total cost, disagreement count)`` of every configuration, each ``[T_1, ..., T_K]``."""
    n, k_exits = stats.num_samples, stats.num_exits
    shape = tuple(len(g) for g in grids)
    dis_exit, dis_final = stats.disagreements()
    values = [(stats.correct, stats.final_correct), (dis_exit, dis_final)]
    totals = [np.zeros(shape) for _ in values]
    cost_total = np.zeros(shape)
    reach = np.ones((n, 1))  # [N, configurations of the exits so far]
    for k in range(k_exits):
        accept = (stats.confidence[k][:, None] >= grids[k][None, :]).astype(np.float64)
        pad = (slice(None),) * (k + 1) + (None,) * (k_exits - k - 1)
        cost_total = cost_total + stats.exit_cost[k] * (reach.T @ accept).reshape(shape[: k + 1])[pad]
        for total, (v_exit, _) in zip(totals, values, strict=True):
            total += (reach.T @ (accept * v_exit[k][:, None])).reshape(shape[: k + 1])[pad]
        if k < k_exits - 1:
            reach = (reach[:, :, None] * (1.0 - accept)[:, None, :]).reshape(n, -1)
            continue
        stay = 1.0 - accept
        cost_total = cost_total + stats.final_cost * (reach.T @ stay).reshape(shape)
        for total, (_, v_final) in zip(totals, values, strict=True):
            total += (reach.T @ (stay * v_final[:, None])).reshape(shape)
    return totals[0], cost_total, totals[1]


def exhaustive(stats: CascadeStats, grids: Sequence[np.ndarray], objective: Objective) -> CascadeMetrics:
    """The exact optimum over every combination of the grids' thresholds."""
    size = int(np.prod([len(g) for g in grids]))
    if size > MAX_EXHAUSTIVE_CONFIGS:
        raise ValueError(f"{size} configurations exceed the exhaustive limit {MAX_EXHAUSTIVE_CONFIGS}")
    correct, cost, disagree = exhaustive_tables(stats, grids)
    n = stats.num_samples
    gain = 1.0 - cost / n / stats.reference_cost
    loss = stats.reference_accuracy - correct / n
    if objective.kind == "weighted":
        value = -objective.efficiency_weight * gain + objective.accuracy_weight * loss
    else:
        bound = loss_bound(loss, disagree / n, n, objective.accuracy_z)
        value = np.where(bound <= objective.accuracy_budget_pp / 100.0 + 1e-12, -gain, 1.0 + loss)
    # Ties: the first in index order (lower thresholds first).
    chosen = tuple(int(i) for i in np.unravel_index(int(np.argmin(value)), value.shape))
    return evaluate(stats, [float(g[i]) for g, i in zip(grids, chosen, strict=True)], objective, chosen)


def first_order_estimate(stats: CascadeStats, thresholds: Sequence[float]) -> tuple[float, float]:
    """``(mean cost, accuracy)`` as a Bellman-Ford path sums them: a sample reaches exit k when exit k - 1
    lets it pass, whatever the exits before did (exact when no sample is accepted, rejected, accepted again)."""
    n = stats.num_samples
    cost, correct = stats.final_cost, float(stats.final_correct.sum())
    prev_pass = np.ones(n)
    for k in range(stats.num_exits):
        took = prev_pass * (stats.confidence[k] >= thresholds[k])
        cost += float(took.sum()) * (stats.exit_cost[k] - stats.final_cost) / n
        correct += float((took * (stats.correct[k] - stats.final_correct)).sum())
        prev_pass = (stats.confidence[k] < thresholds[k]).astype(np.float64)
    return cost, correct / n


def _edges(stats: CascadeStats, grids: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per exit k, ``(d_cost, d_correct, d_disagree)`` of its incoming edges, ``[T_{k-1}, T_k]`` (source: 1 row)."""
    n = stats.num_samples
    dis_exit, dis_final = stats.disagreements()
    out = []
    prev_pass = np.ones((n, 1))
    for k in range(stats.num_exits):
        accept = (stats.confidence[k][:, None] >= grids[k][None, :]).astype(np.float64)
        moved = prev_pass.T @ accept / n
        gained = prev_pass.T @ (accept * (stats.correct[k] - stats.final_correct)[:, None]) / n
        dis = prev_pass.T @ (accept * (dis_exit[k] - dis_final)[:, None]) / n
        out.append((moved * (stats.exit_cost[k] - stats.final_cost), gained, dis))
        prev_pass = 1.0 - accept
    return out


def _edge_list(stats: CascadeStats, grids: Sequence[np.ndarray]) -> tuple[list[tuple], int]:
    """Edges ``(src, dst, d_cost, d_correct, d_disagree)``; node 0 is the source, the last node the sink."""
    offsets = np.cumsum([1] + [len(g) for g in grids])
    sink = int(offsets[-1])
    edges = []
    for k, (d_cost, d_corr, d_dis) in enumerate(_edges(stats, grids)):
        srcs = [0] if k == 0 else range(offsets[k - 1], offsets[k])
        for a, src in enumerate(srcs):
            for b in range(len(grids[k])):
                edges.append((int(src), int(offsets[k] + b), float(d_cost[a, b]), float(d_corr[a, b]),
                              float(d_dis[a, b])))
    edges += [(int(offsets[-2] + b), sink, 0.0, 0.0, 0.0) for b in range(len(grids[-1]))]
    return edges, sink + 1


def _node_index(node: int, grids: Sequence[np.ndarray]) -> int:
    offsets = np.cumsum([1] + [len(g) for g in grids])
    k = int(np.searchsorted(offsets, node, side="right")) - 1
    return node - int(offsets[k])


def bellman_ford_scalar(stats: CascadeStats, grids: Sequence[np.ndarray], objective: Objective) -> CascadeMetrics:
    """Shortest source-to-sink path under the weighted objective (Bellman-Ford, negative edges allowed)."""
    edges, n_nodes = _edge_list(stats, grids)
    w_e, w_a = objective.efficiency_weight, objective.accuracy_weight
    src = np.array([e[0] for e in edges])
    dst = np.array([e[1] for e in edges])
    weight = np.array([w_e * e[2] / stats.reference_cost - w_a * e[3] for e in edges])
    dist = np.full(n_nodes, np.inf)
    dist[0] = 0.0
    pred = np.full(n_nodes, -1)
    for _ in range(n_nodes - 1):
        cand = dist[src] + weight
        order = np.lexsort((cand, dst))
        first = order[np.r_[True, dst[order][1:] != dst[order][:-1]]]
        better = cand[first] < dist[dst[first]] - 1e-15
        if not better.any():
            break
        dist[dst[first[better]]] = cand[first[better]]
        pred[dst[first[better]]] = src[first[better]]
    path, node = [], pred[n_nodes - 1]
    while node > 0:
        path.append(_node_index(int(node), grids))
        node = pred[node]
    idx = tuple(reversed(path))
    return evaluate(stats, [float(g[i]) for g, i in zip(grids, idx, strict=True)], objective, idx)


def bellman_ford_pareto(stats: CascadeStats, grids: Sequence[np.ndarray], objective: Objective) -> CascadeMetrics:
    """Multi-criteria Bellman-Ford: Pareto labels per node; the sink's paths judged exactly.

    Each round relaxes every edge; a node's candidate labels (its own and every extension along an
    incoming edge) are pruned to the non-dominated ones once per round.
    """
    edges, n_nodes = _edge_list(stats, grids)
    three = objective.accuracy_z > 0  # the margin needs the disagreements too
    incoming: dict[int, list[tuple]] = {}
    for e in edges:
        incoming.setdefault(e[1], []).append(e)
    labels: list[list[Label]] = [[] for _ in range(n_nodes)]
    labels[0] = [(0.0, 0.0, 0.0, ())]
    for _ in range(n_nodes - 1):
        changed = False
        for d, into in incoming.items():
            step = () if d == n_nodes - 1 else (_node_index(d, grids),)
            cand = list(labels[d])
            for s, _, d_cost, d_corr, d_dis in into:
                cand += [(c + d_cost, a + d_corr, (x + d_dis) if three else 0.0, p + step) for c, a, x, p in labels[s]]
            merged = _pareto(cand)
            if merged != labels[d]:
                labels[d], changed = merged, True
        if not changed:
            break
    results = [evaluate(stats, [float(g[i]) for g, i in zip(grids, p, strict=True)], objective, p)
               for *_, p in labels[-1]]
    return min(results, key=lambda m: (m.objective, -m.accuracy))


def _pareto(labels: list[Label]) -> list[Label]:
    """Labels not dominated in (lower cost, more correct, fewer disagreements), in cost order; ties: first path."""
    if not labels:
        return []
    ordered = sorted(labels, key=lambda x: (x[0], -x[1], x[2], x[3]))
    v = np.array([(lab[1], lab[2]) for lab in ordered])
    # j dominates i (j before i, so cost_j <= cost_i): correct_j >= correct_i and disagree_j <= disagree_i
    dom = (v[None, :, 0] >= v[:, None, 0] - 1e-12) & (v[None, :, 1] <= v[:, None, 1] + 1e-12)
    dom &= np.tri(len(ordered), k=-1, dtype=bool)
    return [lab for lab, d in zip(ordered, dom.any(axis=1), strict=True) if not d]


def bellman_ford(stats: CascadeStats, grids: Sequence[np.ndarray], objective: Objective) -> CascadeMetrics:
    """Paper 001's shortest-path search (scalar for ``weighted``, Pareto labels for ``accuracy_budget``)."""
    if objective.kind == "weighted":
        return bellman_ford_scalar(stats, grids, objective)
    return bellman_ford_pareto(stats, grids, objective)


def search_thresholds(stats: CascadeStats, objective: Objective, thresholds_per_exit: int = 13,
                      method: Literal["auto", "exhaustive", "bellman_ford"] = "auto",
                      max_exhaustive_exits: int = 3, compare: bool = True) -> ThresholdSearch:
    """Search the thresholds of one cascade.

    Args:
        stats: the calibration outputs.
        objective: what to optimise.
        thresholds_per_exit: grid size per exit (paper 001: 13).
        method: ``auto``: the exhaustive optimum for at most ``max_exhaustive_exits`` exits, else
            Bellman-Ford; or force one of them.
        max_exhaustive_exits: see ``method``.
        compare: also run the method not chosen where it can run (Bellman-Ford always can; the
            exhaustive search up to ``max_exhaustive_exits`` exits), to report the gap.
    """
    grids = [threshold_grid(c, thresholds_per_exit) for c in stats.confidence]
    size = int(np.prod([len(g) for g in grids]))
    exh_fits = stats.num_exits <= max_exhaustive_exits and size <= MAX_EXHAUSTIVE_CONFIGS
    use_exh = method == "exhaustive" or (method == "auto" and exh_fits)
    seconds: dict[str, float] = {}
    bf = exh = None
    if not use_exh or compare:
        start = time.perf_counter()
        bf = bellman_ford(stats, grids, objective)
        seconds["bellman_ford"] = time.perf_counter() - start
    if use_exh or (compare and exh_fits):
        start = time.perf_counter()
        exh = exhaustive(stats, grids, objective)
        seconds["exhaustive"] = time.perf_counter() - start
    best = exh if use_exh else bf
    assert best is not None
    return ThresholdSearch(best, "exhaustive" if use_exh else "bellman_ford", bf, exh, grids, seconds)
