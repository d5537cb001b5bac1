"""Which network a trained supernet hands on, within T_const: candidates scored with its own weights.

The penalty of eq. (4) acts on E[T], the latency *expected* under p = softmax(α), not on the
most probable network's latency. When p is not peaked the two differ: on the quickstart at
T_const 14 ms (seed 0, 20 epochs) E[T] ended at 14 ms while the most probable network predicts
15.9 ms. `derive_within` then repairs it greedily, swapping the ops that lose the least
log-probability per millisecond saved; there the repair swapped three layers to candidates of
probability 0.02, 0.14 and 0.06 (identity layers). The supernet had almost never trained that
combination: after BatchNorm recalibration the repaired network scored 84.5 % validation accuracy
while the (infeasible) most probable network scored 97.0 % and three random paths of the same
supernet 97.0–97.3 %. Retrained, the repaired network reaches 97.5 %: the weights, not the
architecture, were what the search handed on badly.

`derive` uses the supernet as what one-shot methods use it for (SPOS, Once-for-All): an estimate
of every path's accuracy. The candidates are the greedy repair and up to ``n`` distinct networks
sampled from p whose predicted latency fits T_const (rejection sampling on the latency model: no
training); each is exported with the supernet's weights, its BatchNorm statistics re-estimated
(`SupernetSearch.derived_network`), and scored on the validation split — the split the
architecture steps already use. The most accurate feasible one is handed on (ties: the more
probable). ``n = 0`` is the plain repair. The score of the chosen network is a maximum over
candidates on that split, so it is optimistic; ``inherited_test_acc`` (reported, never used to
choose) is the unbiased figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from jmsnas.strategies.expected_latency import ExpectedLatency, derive_within
from jmsnas.strategies.proxyless import SupernetSearch
from jmsnas.strategies.retrain import accuracy


@dataclass
class Candidate:
    """One network considered: its ops, where it came from, its prediction, probability and score."""

    paths: list[int]
    source: str  # "repaired" (derive_within: the most probable network when it fits) or "sampled"
    latency_ms: float
    log_prob: float
    val_acc: float | None = None


@dataclass
class Derivation:
    """The candidates scored and the one chosen (``derivation.json`` of a supernet run)."""

    t_const_ms: float
    candidates: list[Candidate]
    chosen: int  # index into candidates
    inherited_test_acc: float | None = None

    @property
    def paths(self) -> list[int]:
        return self.candidates[self.chosen].paths

    def to_dict(self) -> dict:
        return asdict(self)


def _log_prob(probs: list[torch.Tensor], paths: list[int]) -> float:
    return float(sum(math.log(max(float(p[i]), 1e-300)) for p, i in zip(probs, paths, strict=True)))


def feasible_samples(probs: list[torch.Tensor], predictor: ExpectedLatency, t_const_ms: float, n: int,
                     generator: torch.Generator, max_draws: int | None = None) -> list[list[int]]:
    """Up to ``n`` distinct networks drawn from ``probs`` (one op per layer) predicted within ``t_const_ms``.

    At most ``max_draws`` draws (default ``50 * n``): under a tight constraint fewer may come back.
    """
    found: dict[tuple[int, ...], None] = {}
    for _ in range(max_draws if max_draws is not None else 50 * n):
        if len(found) >= n:
            break
        paths = tuple(int(torch.multinomial(p, 1, generator=generator)) for p in probs)
        if paths not in found and float(predictor.for_choices(list(paths)).total_ms) <= t_const_ms:
            found[paths] = None
    return [list(p) for p in found]


def derive(system: SupernetSearch, predictor: ExpectedLatency, t_const_ms: float, n: int, seed: int,
           val_batches: Iterable, test_batches: Iterable | None = None) -> Derivation:
    """Choose the network to hand on from ``system``'s trained supernet (see the module docstring).

    Args:
        system: the search module after ``fit`` (its supernet, BN recalibration source).
        predictor: the E[T] predictor over the experiment's topology.
        t_const_ms: the latency constraint.
        n: networks sampled within the constraint besides the greedy repair (0: the repair alone).
        seed: seed of the sampling.
        val_batches: the validation split the candidates are scored on (re-iterable).
        test_batches: when given, the chosen network's inherited test accuracy is reported.
    """
    probs = [p.detach().double().cpu() for p in system.supernet.probs()]
    repaired = derive_within(probs, predictor, t_const_ms)
    pool = [Candidate(repaired, "repaired", float(predictor.for_choices(repaired).total_ms),
                      _log_prob(probs, repaired))]
    generator = torch.Generator().manual_seed(seed)
    for paths in feasible_samples(probs, predictor, t_const_ms, n, generator) if n else []:
        if paths != repaired:
            pool.append(Candidate(paths, "sampled", float(predictor.for_choices(paths).total_ms),
                                  _log_prob(probs, paths)))
    if n:
        for c in pool:
            c.val_acc = accuracy(system.derived_network(c.paths), val_batches)

    def rank(i: int) -> tuple:
        c = pool[i]
        return (c.latency_ms <= t_const_ms, c.val_acc if c.val_acc is not None else 0.0, c.log_prob)

    chosen = max(range(len(pool)), key=rank)
    result = Derivation(t_const_ms, pool, chosen)
    if test_batches is not None:
        result.inherited_test_acc = accuracy(system.derived_network(result.paths), test_batches)
    return result
