"""The random-search baseline: rejection sampling on the latency model, T_const never broken, seeds, budget, resume."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
import torch

from jmsnas.config import load_experiment
from jmsnas.errors import ConfigError
from jmsnas.search import main
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.strategies.arch_latency import ArchLatencyModel, DoesNotFit
from jmsnas.strategies.random_search import (
    STATE_FILE,
    NothingFits,
    best_candidate,
    draw_arch,
    run_random,
    sample_within,
)


def _random(tiny_experiment: dict, **strategy) -> dict:
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["strategy"] = {"name": "random", "t_const_ms": 1000.0, "num_candidates": 3, "sample_epochs": 1,
                                   "retrain": {"epochs": 1}, **strategy}
    return tiny_experiment


def _median_latency(exp) -> float:
    """A T_const that about half the space breaks: the median latency of 40 draws."""
    latency, rng = ArchLatencyModel.for_experiment(exp), random.Random("median")
    return statistics.median(latency(draw_arch(exp.search_space, 10, (1, 40), rng)).latency_ms for _ in range(40))


def test_trained_candidates_never_break_t_const(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(_random(tiny_experiment)))
    t_const = _median_latency(exp)
    strategy = exp.config.strategy.model_copy(update={"t_const_ms": t_const})
    reports: list[dict] = []
    outcome = run_random(exp, strategy, seed=0, run_dir=tmp_path / "run", progress=False, report=reports.append)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    assert state["rejected"]["latency"] > 0  # the constraint bit: some draws were thrown away untrained
    latency = ArchLatencyModel.for_experiment(exp)
    assert len(state["trained"]) == 3
    for record in state["trained"]:  # re-priced independently of what the sampler recorded
        spec = ArchSpec.from_dict(state["drawn"][record["index"]]["arch"])
        assert spec.compact() == record["compact"]
        assert latency(spec).latency_ms == pytest.approx(record["latency_ms"]) and record["latency_ms"] <= t_const
    best = state["trained"][state["best"]]
    assert best["val_acc"] == max(r["val_acc"] for r in state["trained"])
    assert outcome.compact == best["compact"] == ArchSpec.load_json(tmp_path / "run" / "arch.json").compact()
    assert outcome.feasible and outcome.predicted_latency_ms <= t_const and outcome.search_val_acc == best["val_acc"]
    for name in ("arch.json", "model.pt", "outcome.json", "retrain/metrics.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    build_model(ArchSpec.load_json(tmp_path / "run" / "arch.json")).load_state_dict(
        torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    assert [r["epoch"] for r in reports] == [1, 2, 3] and all(r["retrained"] == 0 for r in reports)


def test_same_seed_same_architecture(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(_random(tiny_experiment, num_candidates=2)))
    runs = [run_random(exp, exp.config.strategy, seed=s, run_dir=tmp_path / str(i), progress=False)
            for i, s in enumerate((3, 3, 4))]
    states = [json.loads((tmp_path / str(i) / STATE_FILE).read_text()) for i in range(3)]
    assert runs[0].compact == runs[1].compact
    assert [(r["compact"], r["val_acc"], r["val_loss"]) for r in states[0]["trained"]] == \
        [(r["compact"], r["val_acc"], r["val_loss"]) for r in states[1]["trained"]]
    assert [d["compact"] for d in states[0]["drawn"]] != [d["compact"] for d in states[2]["drawn"]]


def test_no_network_fits_names_t_const_and_the_fastest(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(_random(tiny_experiment, t_const_ms=1e-3, max_rejections=30)))
    with pytest.raises(ConfigError, match=r"none of 30 networks drawn fits T_const 0.001 ms: the fastest drawn "
                                          r"network takes [0-9.]+ ms") as info:
        run_random(exp, exp.config.strategy, seed=0, run_dir=tmp_path / "run", progress=False)
    assert info.value.field == "strategy.t_const_ms" and info.value.file == str(exp.path)


def test_time_budget_stops_sampling_and_a_rerun_continues(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(_random(tiny_experiment, time_budget_s=1e-3)))
    run_random(exp, exp.config.strategy, seed=0, run_dir=tmp_path / "run", progress=False)
    first = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    assert len(first["trained"]) == 1 and len(first["drawn"]) == 3 and "time budget" in first["stopped"]
    unbudgeted = exp.config.strategy.model_copy(update={"time_budget_s": None,
                                                        "retrain": exp.config.strategy.retrain.model_copy(
                                                            update={"init": "inherit"})})
    run_random(exp, unbudgeted, seed=0, run_dir=tmp_path / "run", progress=False)  # continues from random.json
    second = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    assert second["trained"][0] == first["trained"][0] and len(second["trained"]) == 3


class _FakeLatency:
    """1 ms with the identity on layer 0, 10 ms with a shortcut MBConv there; anything else fits no memory."""

    def __call__(self, spec: ArchSpec):
        first = spec.blocks[0]
        if first.op != "identity" and not first.shortcut:
            raise DoesNotFit("no memory")
        return type("Latency", (), {"latency_ms": 1.0 if first.op == "identity" else 10.0})()


def _never_fits(spec: ArchSpec):
    raise DoesNotFit("no memory")


def test_sampler_rejects_slow_unplaceable_and_repeated_draws(tiny_experiment, write_experiment) -> None:
    space = load_experiment(write_experiment(_random(tiny_experiment))).search_space
    sample = sample_within(space, 10, (1, 16), _FakeLatency(), 5.0, 5, 300, random.Random(0))
    assert len(sample.drawn) == 5 and len({s.compact() for s, _ in sample.drawn}) == 5
    assert all(s.blocks[0].op == "identity" and ms == 1.0 for s, ms in sample.drawn)
    assert sample.rejected["memory"] > 0 and sample.rejected["latency"] > 0 and sample.fastest_ms == 1.0
    # tiny_1d has 6 x 13 networks with the identity first: asking for more ends on repeats
    few = sample_within(space, 10, (1, 16), _FakeLatency(), 5.0, 100, 300, random.Random(0))
    assert len(few.drawn) == len({s.compact() for s, _ in few.drawn}) <= 78 and few.rejected["duplicate"] > 0
    with pytest.raises(NothingFits, match="no draw fitted the devices' memory"):
        sample_within(space, 10, (1, 16), _never_fits, 5.0, 1, 10, random.Random(0))


def test_best_candidate_breaks_ties_by_loss_then_order() -> None:
    trained = [{"val_acc": 0.5, "val_loss": 1.0}, {"val_acc": 0.7, "val_loss": 0.9}, {"val_acc": 0.7, "val_loss": 0.8},
               {"val_acc": 0.7, "val_loss": 0.8}]
    assert best_candidate(trained) == 2


def test_search_runs_the_random_strategy(tiny_experiment, write_experiment, tmp_path: Path, capsys) -> None:
    data = _random(tiny_experiment, num_candidates=2)
    data["output_dir"] = str(tmp_path / "runs")
    assert main([str(write_experiment(data))]) == 0
    assert "strategy    random (2 networks within T_const x 1 epochs)" in capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    (trial,) = json.loads((run_dir / "summary.json").read_text())["trials"]
    assert trial["status"] == "finished" and trial["feasible"] and trial["t_const_ms"] == 1000.0
    art = Path(trial["artifact_dir"])
    assert len(json.loads((art / STATE_FILE).read_text())["trained"]) == 2
    assert ArchSpec.load_json(art / "arch.json").compact() == trial["compact"]
    assert (run_dir / "arch.json").read_text() == (art / "arch.json").read_text()
