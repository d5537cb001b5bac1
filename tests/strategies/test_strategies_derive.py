"""What the supernet search hands on: the handed-on network is trained (``train_derived``), and the
candidates `derive` scores fit T_const, differ, and the best-scoring feasible one is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_strategies_proxyless import SPACE, _loader, _trainer

from jmsnas.latency.model import AnalyticLatencyModel
from jmsnas.space.supernet import Supernet
from jmsnas.strategies.derive import derive, feasible_samples
from jmsnas.strategies.expected_latency import ExpectedLatency, LatencyPenalty, derive_within
from jmsnas.strategies.proxyless import SupernetSearch
from jmsnas.topology import AnalyticSpec, Device, build_topology


def _predictor() -> ExpectedLatency:
    device = Device("mcu", analytic=AnalyticSpec(macs_per_s=1e6, memory_bytes=10**9, overhead_ms=0.01))
    topology = build_topology("chain", [device], [])
    return ExpectedLatency(SPACE, topology, {"mcu": AnalyticLatencyModel("mcu", device.analytic)}, 10)


def _separate(train_derived: bool, t_const_ms: float = 1e9) -> SupernetSearch:
    torch.manual_seed(0)
    net = Supernet(SPACE, 10, weight_sharing="separate")  # one module per candidate: who was trained is visible
    return SupernetSearch(net, _predictor(), LatencyPenalty(1e-3, t_const_ms), seed=0, arch_batches=_loader(),
                          warmup_epochs=0, epochs=1, train_derived=train_derived)


def _weights(system: SupernetSearch, layer: int, i: int) -> list[torch.Tensor]:
    return [p.detach().clone() for p in system.supernet.layers[layer].candidates[i].parameters()]


@pytest.mark.parametrize("train_derived", [True, False])
def test_train_derived_trains_the_handed_on_network_beside_the_sampled_one(tmp_path: Path, train_derived: bool,
                                                                           monkeypatch) -> None:
    system = _separate(train_derived)
    sampled, handed = [0, 0, 0], [3, 1, 2]  # candidate 0 everywhere is sampled; 3, 1, 2 only handed on
    monkeypatch.setattr(system.supernet, "sample_paths",
                        lambda gen=None, two=False: [(0, 1)] * 3 if two else list(sampled))
    monkeypatch.setattr(system, "handed_on", lambda: list(handed))
    monkeypatch.setattr(system, "_arch_step", lambda a_opt: None)  # weight steps only
    before = {n: _weights(system, n, i) for n, i in enumerate(handed)}
    untouched = _weights(system, 0, 5)
    _trainer(tmp_path, 1).fit(system, train_dataloaders=_loader(), val_dataloaders=_loader())
    assert system.derived_paths == (handed if train_derived else None)
    for n, i in enumerate(handed):
        changed = [not torch.equal(a, b) for a, b in zip(before[n], _weights(system, n, i), strict=True)]
        assert bool(changed) and all(changed) == train_derived and any(changed) == train_derived
    assert all(torch.equal(a, b) for a, b in zip(untouched, _weights(system, 0, 5), strict=True))


def test_the_handed_on_network_fits_t_const_and_is_validated(tmp_path: Path) -> None:
    predictor = _predictor()
    system = _separate(True)
    with torch.no_grad():  # the most probable network is the slowest one
        for layer, table in zip(system.supernet.layers, predictor.tables, strict=True):
            layer.alpha.copy_(table[:, 0] / table[:, 0].max() * 5.0)
    slowest = [la.argmax() for la in system.supernet.layers]
    fastest = [int(table[:, 0].argmin()) for table in predictor.tables]
    budget = (float(predictor.for_choices(slowest).total_ms) + float(predictor.for_choices(fastest).total_ms)) / 2
    system.penalty = LatencyPenalty(1e-3, budget)
    _trainer(tmp_path, 1).fit(system, train_dataloaders=_loader(), val_dataloaders=_loader())
    assert system.derived_paths != slowest  # derived at the epoch's start: the repair of the slowest network
    assert float(predictor.for_choices(system.derived_paths).total_ms) <= budget
    metrics = system.trainer.callback_metrics
    assert float(metrics["derived_latency_ms"]) <= budget
    handed = float(predictor.for_choices(system.handed_on()).total_ms)
    assert float(metrics["derived_latency_ms"]) == pytest.approx(handed)


def test_feasible_samples_fit_and_differ() -> None:
    predictor = _predictor()
    probs = [torch.full((len(slot.candidates),), 1.0 / len(slot.candidates)) for slot in SPACE.layers()]
    every = sorted(float(predictor.for_choices([a, b, c]).total_ms) for a in range(len(probs[0]))
                   for b in range(len(probs[1])) for c in range(len(probs[2])))
    budget = every[len(every) // 4]  # a quarter of the networks fit
    found = feasible_samples(probs, predictor, budget, 10, torch.Generator().manual_seed(0))
    assert len(found) == 10 and len({tuple(p) for p in found}) == 10
    assert all(float(predictor.for_choices(p).total_ms) <= budget for p in found)
    assert feasible_samples(probs, predictor, every[0] / 2, 5, torch.Generator().manual_seed(0)) == []


def test_derive_hands_on_the_best_scoring_feasible_candidate(tmp_path: Path) -> None:
    system = _separate(False)
    _trainer(tmp_path, 1).fit(system, train_dataloaders=_loader(), val_dataloaders=_loader())
    predictor = system.latency
    budget = float(predictor.for_choices(system.handed_on()).total_ms) * 1.5
    result = derive(system, predictor, budget, 6, seed=0, val_batches=_loader(), test_batches=_loader())
    pool = result.candidates
    assert pool[0].source == "repaired" and pool[0].paths == derive_within(system.supernet.probs(), predictor, budget)
    assert len({tuple(c.paths) for c in pool}) == len(pool) > 1
    assert all(c.latency_ms <= budget and c.val_acc is not None for c in pool)
    best = max(c.val_acc for c in pool)
    assert result.candidates[result.chosen].val_acc == best
    assert result.chosen == min(i for i, c in enumerate(pool) if c.val_acc == best
                                and c.log_prob == max(d.log_prob for d in pool if d.val_acc == best))
    assert 0.0 <= result.inherited_test_acc <= 1.0
    plain = derive(system, predictor, budget, 0, seed=0, val_batches=_loader())
    assert [c.source for c in plain.candidates] == ["repaired"] and plain.candidates[0].val_acc is None
