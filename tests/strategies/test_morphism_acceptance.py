"""Hill-climbing acceptance: a child must beat the parent trained as long as it was (NASH), not its old score."""

from __future__ import annotations

from pathlib import Path

import torch

from jmsnas.config import load_experiment
from jmsnas.data import JmsnasDataModule
from jmsnas.strategies.arch_latency import ArchLatencyModel
from jmsnas.strategies.children import ChildData, ChildJob, ChildResult
from jmsnas.strategies.morphism import accepted_child, deepen_ops, hill_climb, start_spec


def test_fair_rule_rejects_a_child_that_only_trained_longer() -> None:
    # The parent scored 1.0 when it was accepted; trained child_epochs more beside its children it scores 0.6.
    # Both children beat the old score only because they trained longer: the paper's rule takes one, the fair one not.
    children = [0.8, 0.7]
    assert accepted_child(children, parent_score=1.0) == 1
    assert accepted_child(children, parent_score=1.0, trained_parent_score=0.6) is None
    assert accepted_child(children, 1.0, trained_parent_score=0.75) == 1  # a real improvement still wins
    assert accepted_child([0.6], 1.0, trained_parent_score=0.6) is None  # strictly lower
    assert accepted_child([0.5, 0.5], 1.0) == 0 and accepted_child([], 1.0, 0.1) is None


def _fake_runner(calls: list[list[ChildJob]], parent_arch: list[dict]):
    """Children score 0.7 + k/100; the parent (the job with the parent's architecture) 0.6, its weights marked."""

    def run(fn, shared, jobs):
        calls.append(list(jobs))
        results = []
        for job in jobs:
            state = {k: v.clone() for k, v in job.state.items()}
            is_parent = job.arch == parent_arch[0]
            if is_parent:
                state["head.classifier.bias"].fill_(42.0)
            results.append(ChildResult(job.index, 0.6 if is_parent else 0.7 + job.index / 100, 0.5, state, 0.0, 0))
        return results

    return run


def _climb(tiny_experiment, write_experiment, tmp_path: Path, acceptance: str):
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["strategy"] = {"name": "morphism", "t_const_ms": 1000.0, "iterations": 1, "children": 2,
                                   "child_epochs": 1, "use_kd": False, "acceptance": acceptance}
    exp = load_experiment(write_experiment(tiny_experiment))
    strategy = exp.config.strategy
    dm = JmsnasDataModule(exp.config.dataset, seed=0)
    dm.setup()
    data = ChildData(dm.train_set, dm.val_set, 32, 1, 0.05, 0.0, 1.0, 0.0, use_kd=False)
    start = start_spec(exp.search_space, 10, (1, 40), 0.5, "mb_k3_e3")
    calls: list[list[ChildJob]] = []
    runner = _fake_runner(calls, [start.to_dict()])
    spec, net, state = hill_climb(start, data, strategy, 0, ArchLatencyModel.for_experiment(exp),
                                  deepen_ops(exp.search_space), tmp_path / acceptance, runner=runner)
    return start, spec, net, state, calls


def test_fair_climb_trains_the_parent_beside_its_children(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    start, spec, net, state, calls = _climb(tiny_experiment, write_experiment, tmp_path, "fair")
    old = state["history"][0]["score"]
    assert old > 0.7  # one epoch on 300 samples: the old score is worse than every child's
    (jobs,) = calls
    assert len(jobs) == 3 and jobs[-1].arch == start.to_dict()  # two children and the parent
    assert len({j.seed for j in jobs}) == 3
    step = state["history"][1]
    assert step["accepted"] is None and step["parent"]["score"] == 0.6 and step["parent_score_before"] == old
    assert spec.compact() == start.compact() and state["score"] == 0.6
    assert torch.all(net.state_dict()["head.classifier.bias"] == 42.0)  # it goes on with its extra training


def test_paper_climb_compares_with_the_old_score(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    start, spec, _, state, calls = _climb(tiny_experiment, write_experiment, tmp_path, "paper")
    (jobs,) = calls
    assert len(jobs) == 2 and all(j.arch != start.to_dict() for j in jobs)
    step = state["history"][1]
    assert step["accepted"] == 0 and step["parent"] is None and state["score"] == 0.7
    assert spec.compact() == step["children"][0]["compact"] != start.compact()
