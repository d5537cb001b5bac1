"""Threshold search: exact cascade evaluation against a slow reference; Bellman-Ford against exhaustive."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jmsnas.exits.thresholds import (
    CascadeStats,
    Objective,
    _edges,
    bellman_ford,
    evaluate,
    exhaustive,
    exhaustive_tables,
    first_order_estimate,
    objective_value,
    search_thresholds,
    threshold_grid,
)

WEIGHTED = Objective("weighted", 0.9, 0.1)
BUDGET = Objective("accuracy_budget", accuracy_budget_pp=1.0)
MARGIN = Objective("accuracy_budget", accuracy_budget_pp=3.0, accuracy_z=1.0)


def reference_optimum(stats: CascadeStats, grids: list, objective: Objective) -> float:
    """The optimum's objective by brute force: every configuration, every sample, one at a time."""
    best = np.inf
    for idx in itertools.product(*(range(len(g)) for g in grids)):
        thresholds = [g[i] for g, i in zip(grids, idx, strict=True)]
        diffs, cost = [], 0.0
        for i in range(stats.num_samples):
            right, c = stats.final_correct[i], stats.final_cost
            for k in range(stats.num_exits):
                if stats.confidence[k, i] >= thresholds[k]:
                    right, c = stats.correct[k, i], stats.exit_cost[k]
                    break
            diffs.append(stats.reference_correct[i] - right)
            cost += c
        n = stats.num_samples
        loss = float(np.mean(diffs))
        # Agresti-Min: half a sample in each discordant cell (b: only the original right, c: only the cascade)
        b, c = diffs.count(1), diffs.count(-1)
        adj_loss, adj_dis = (b - c) / (n + 2), (b + c + 1) / (n + 2)
        bound = adj_loss + objective.accuracy_z * np.sqrt((adj_dis - adj_loss**2) / (n + 2)) if objective.accuracy_z \
            else loss
        value, _ = objective_value(1.0 - cost / n / stats.reference_cost, loss, objective, bound)
        best = min(best, value)
    return best


def _stats(rng: np.random.Generator, k_exits: int, n: int, correlated: bool = False) -> CascadeStats:
    """Random cascade outputs: later exits more accurate; ``correlated``: one easiness score drives every exit."""
    ease = rng.uniform(size=n)
    conf = np.empty((k_exits, n))
    correct = np.empty((k_exits, n), dtype=bool)
    for k in range(k_exits):
        noise = rng.uniform(size=n)
        conf[k] = 0.1 + 0.9 * (0.7 * ease + 0.3 * noise if correlated else noise)
        correct[k] = rng.uniform(size=n) < 0.3 + 0.6 * conf[k] * (k + 1) / k_exits
    final = rng.uniform(size=n) < 0.9
    cost = np.cumsum(rng.uniform(1.0, 3.0, k_exits))
    return CascadeStats(conf, correct, final, cost, float(cost[-1] + rng.uniform(1, 3)), float(cost[-1] + 1.0))


def _per_sample(stats: CascadeStats, thresholds) -> tuple[float, float, list[float]]:
    """The cascade sample by sample: accuracy, mean cost, termination rates."""
    right, cost, counts = 0, 0.0, [0] * (stats.num_exits + 1)
    for i in range(stats.num_samples):
        for k in range(stats.num_exits):
            if stats.confidence[k, i] >= thresholds[k]:
                right, cost, counts[k] = right + stats.correct[k, i], cost + stats.exit_cost[k], counts[k] + 1
                break
        else:
            right, cost, counts[-1] = right + stats.final_correct[i], cost + stats.final_cost, counts[-1] + 1
    n = stats.num_samples
    return right / n, cost / n, [c / n for c in counts]


@pytest.mark.parametrize("k_exits", [1, 2, 3])
def test_evaluate_and_tables_equal_per_sample_reference(k_exits: int) -> None:
    rng = np.random.default_rng(k_exits)
    stats = _stats(rng, k_exits, 80)
    grids = [threshold_grid(c, 5) for c in stats.confidence]
    correct, cost, _ = exhaustive_tables(stats, grids)
    for idx in itertools.product(*(range(len(g)) for g in grids)):
        thresholds = [g[i] for g, i in zip(grids, idx, strict=True)]
        acc, mean_cost, term = _per_sample(stats, thresholds)
        m = evaluate(stats, thresholds, WEIGHTED)
        assert m.accuracy == pytest.approx(acc) and m.mean_cost == pytest.approx(mean_cost)
        assert m.termination == pytest.approx(term)
        assert correct[idx] / 80 == pytest.approx(acc) and cost[idx] / 80 == pytest.approx(mean_cost)


@pytest.mark.parametrize("objective", [WEIGHTED, BUDGET, MARGIN], ids=["weighted", "budget", "margin"])
@pytest.mark.parametrize("k_exits", [1, 2, 3])
def test_exhaustive_equals_slow_reference(k_exits: int, objective: Objective) -> None:
    for seed in range(3):
        stats = _stats(np.random.default_rng(10 * seed + k_exits), k_exits, 60)
        grids = [threshold_grid(c, 5) for c in stats.confidence]
        fast = exhaustive(stats, grids, objective)
        assert fast.objective == pytest.approx(reference_optimum(stats, grids, objective), abs=1e-12)


@pytest.mark.parametrize("objective", [WEIGHTED, BUDGET, MARGIN], ids=["weighted", "budget", "margin"])
@pytest.mark.parametrize("k_exits", [1, 2])
def test_bellman_ford_is_exact_with_at_most_two_exits(k_exits: int, objective: Objective) -> None:
    """With at most two early exits the first-order edge costs are the exact cascade: no gap, on any data."""
    for seed in range(6):
        stats = _stats(np.random.default_rng(100 + seed), k_exits, 150, correlated=seed % 2 == 0)
        grids = [threshold_grid(c, 13) for c in stats.confidence]
        bf, ex = bellman_ford(stats, grids, objective), exhaustive(stats, grids, objective)
        assert bf.objective == pytest.approx(ex.objective, abs=1e-12)


def test_first_order_estimate_is_exact_where_no_sample_is_accepted_rejected_accepted() -> None:
    """The Bellman-Ford path sum (checked edge by edge) equals the exact cascade wherever its assumption holds."""
    stats = _stats(np.random.default_rng(7), 3, 120, correlated=True)
    grids = [threshold_grid(c, 6) for c in stats.confidence]
    edges = _edges(stats, grids)
    holds = violated = 0
    for idx in itertools.product(*(range(len(g)) for g in grids)):
        t = [g[i] for g, i in zip(grids, idx, strict=True)]
        cost, acc = first_order_estimate(stats, t)
        prev = [0, *idx[:-1]]
        path_cost = stats.final_cost + sum(edges[k][0][prev[k], idx[k]] for k in range(3))
        path_acc = stats.final_correct.mean() + sum(edges[k][1][prev[k], idx[k]] for k in range(3))
        assert cost == pytest.approx(path_cost) and acc == pytest.approx(path_acc)
        accept = stats.confidence >= np.array(t)[:, None]
        bad = (accept[0] & ~accept[1] & accept[2]).any()
        exact = evaluate(stats, t, WEIGHTED)
        if not bad:
            holds += 1
            assert cost == pytest.approx(exact.mean_cost) and acc == pytest.approx(exact.accuracy)
        else:
            violated += 1
    assert holds > 0 and violated > 0


def test_bellman_ford_solves_the_first_order_problem_exactly() -> None:
    """Bellman-Ford is a shortest-path solver: its choice minimises the path sum over every configuration."""
    for seed in range(4):
        stats = _stats(np.random.default_rng(200 + seed), 3, 100)
        grids = [threshold_grid(c, 6) for c in stats.confidence]
        bf = bellman_ford(stats, grids, WEIGHTED)

        def path_value(idx: tuple[int, ...], stats: CascadeStats = stats, grids: list = grids) -> float:
            cost, acc = first_order_estimate(stats, [g[i] for g, i in zip(grids, idx, strict=True)])
            return 0.9 * (cost / stats.reference_cost - 1) + 0.1 * (stats.reference_accuracy - acc)

        best = min(path_value(idx) for idx in itertools.product(*(range(len(g)) for g in grids)))
        assert path_value(bf.indices) == pytest.approx(best, abs=1e-12)


def test_gap_is_reported_where_the_assumption_fails() -> None:
    """Three uncorrelated exits, accuracy weighed as much as cost: Bellman-Ford can miss; the gap is reported."""
    gaps = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        conf = rng.uniform(0.1, 1.0, (3, 200))
        correct = rng.uniform(size=(3, 200)) < conf * np.array([0.6, 0.8, 1.0])[:, None]
        stats = CascadeStats(conf, correct, rng.uniform(size=200) < 0.95, np.array([0.3, 0.6, 0.8]), 1.05, 1.0)
        for objective in (Objective("weighted", 0.5, 0.5), BUDGET):
            s = search_thresholds(stats, objective, 13)
            assert s.method == "exhaustive" and s.bellman_ford is not None and s.exhaustive is not None
            assert s.gap == pytest.approx(s.bellman_ford.objective - s.exhaustive.objective)
            assert s.gap >= -1e-12
            again = evaluate(stats, s.bellman_ford.thresholds, objective, s.bellman_ford.indices)
            assert (again.objective, again.accuracy, again.mean_cost) == (
                s.bellman_ford.objective, s.bellman_ford.accuracy, s.bellman_ford.mean_cost)  # judged exactly
            gaps.append(s.gap)
    assert max(gaps) > 0  # the assumption does fail on such data, and it shows


def test_accuracy_budget_is_respected() -> None:
    for seed in range(4):
        stats = _stats(np.random.default_rng(seed), 2, 300, correlated=True)
        for budget in (0.0, 0.5, 2.0):
            s = search_thresholds(stats, Objective("accuracy_budget", accuracy_budget_pp=budget), 13)
            correct, _, _ = exhaustive_tables(stats, s.grids)
            any_feasible = (100 * (stats.reference_accuracy - correct / 300) <= budget + 1e-9).any()
            assert s.best.feasible == any_feasible  # infeasible only if no configuration meets the budget
            if any_feasible:
                assert s.best.loss_pp <= budget + 1e-9


def test_threshold_grid_quantiles() -> None:
    conf = np.array([0.2, 0.4, 0.4, 0.6, 0.9, 1.0])
    grid = threshold_grid(conf, 13)
    assert grid[0] == 0.0 and np.all(np.diff(grid) > 0)
    assert grid[1:] == pytest.approx([0.3, 0.5, 0.75, 0.95])  # halfway between observed values
    assert len(threshold_grid(np.random.default_rng(0).uniform(size=1000), 13)) == 13


def test_search_falls_back_to_bellman_ford_beyond_three_exits() -> None:
    stats = _stats(np.random.default_rng(9), 4, 100)
    s = search_thresholds(stats, WEIGHTED, 5)
    assert s.method == "bellman_ford" and s.exhaustive is None and s.gap is None
    forced = search_thresholds(stats, WEIGHTED, 5, method="exhaustive")
    assert forced.best.objective <= s.best.objective + 1e-12


def test_margin_makes_the_budget_stricter() -> None:
    stats = _stats(np.random.default_rng(11), 2, 400, correlated=True)
    plain = search_thresholds(stats, Objective("accuracy_budget", accuracy_budget_pp=2.0), 13).best
    strict = search_thresholds(stats, Objective("accuracy_budget", accuracy_budget_pp=2.0, accuracy_z=1.0), 13).best
    assert strict.loss_bound_pp <= 2.0 + 1e-9 and strict.loss_bound_pp >= strict.loss_pp
    assert strict.gain <= plain.gain + 1e-12
