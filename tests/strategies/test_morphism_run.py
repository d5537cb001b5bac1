"""The morphism search end to end on the tiny space: climb, T_const filter, resume, plain variant, teachers."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import torch

from jmsnas.config import load_experiment
from jmsnas.data import JmsnasDataModule
from jmsnas.errors import ConfigError
from jmsnas.search import main
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.strategies.arch_latency import ArchLatencyModel
from jmsnas.strategies.morphism import DRAWS_PER_CHILD, run_morphism, start_spec
from jmsnas.strategies.teacher import build_teacher, load_or_train_teacher


def _morphism(tiny_experiment: dict, **strategy) -> dict:
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["strategy"] = {"name": "morphism", "t_const_ms": 1000.0, "iterations": 2, "children": 2,
                                   "child_epochs": 1, "teacher": {"epochs": 1}, "retrain": {"epochs": 1}, **strategy}
    return tiny_experiment


def test_two_iteration_climb_end_to_end(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(_morphism(tiny_experiment)))
    reports: list[dict] = []
    run = tmp_path / "run"
    outcome = run_morphism(exp, exp.config.strategy, seed=0, run_dir=run, progress=False, report=reports.append)
    for name in ("arch.json", "model.pt", "outcome.json", "climb.json", "climb/state.json", "teacher/teacher.pt",
                 "retrain/metrics.csv"):
        assert (run / name).is_file(), name
    spec = ArchSpec.load_json(run / "arch.json")
    net = build_model(spec)
    net.load_state_dict(torch.load(run / "model.pt", weights_only=True))  # handed on like the supernet's
    assert outcome.compact == spec.compact() == json.loads((run / "outcome.json").read_text())["compact"]
    assert outcome.predicted_latency_ms == pytest.approx(ArchLatencyModel.for_experiment(exp)(spec).latency_ms)
    assert outcome.feasible and 0.0 <= outcome.test_acc <= 1.0 and outcome.split["path"] == ["a", "b", "c"]
    climb = json.loads((run / "climb.json").read_text())
    assert [h["iteration"] for h in climb["history"]] == [0, 1, 2] and climb["teacher"]["model"] == "wide"
    for h in climb["history"][1:]:
        assert len(h["children"]) == 2 and all(c["latency_ms"] <= 1000.0 for c in h["children"])
        assert all(len(c["morphs"]) == 2 for c in h["children"])
    assert [r["iteration"] for r in reports] == [0, 1, 2] and all(r["retrained"] == 0 for r in reports)
    start = start_spec(exp.search_space, 10, (1, 40), 0.5, "mb_k3_e3")
    assert climb["history"][0]["start"] == start.compact()


def test_resume_continues_the_climb(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    data = _morphism(tiny_experiment, use_kd=False)
    exp = load_experiment(write_experiment(data))
    whole = run_morphism(exp, exp.config.strategy, seed=1, run_dir=tmp_path / "whole", progress=False)
    one = exp.config.strategy.model_copy(update={"iterations": 1})
    run_morphism(exp, one, seed=1, run_dir=tmp_path / "cut", progress=False)  # "interrupted" after iteration 1
    first = json.loads((tmp_path / "cut" / "climb" / "state.json").read_text())
    reports: list[dict] = []
    resumed = run_morphism(exp, exp.config.strategy, seed=1, run_dir=tmp_path / "cut", progress=False,
                           report=reports.append)
    state = json.loads((tmp_path / "cut" / "climb" / "state.json").read_text())
    assert [r["iteration"] for r in reports] == [2]  # only the missing iteration ran
    assert state["history"][:2] == first["history"][:2] and len(state["history"]) == 3
    assert resumed.compact == whole.compact  # same seed, same climb, interrupted or not
    assert state["score"] == pytest.approx(json.loads((tmp_path / "whole" / "climb" / "state.json")
                                                      .read_text())["score"], rel=1e-5)
    assert not (tmp_path / "cut" / "teacher").exists()  # the plain variant needs no teacher
    assert list((tmp_path / "cut" / "climb").glob("parent-*.pt")) == [tmp_path / "cut" / "climb" / "parent-2.pt"]


def test_children_that_break_t_const_are_not_trained(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(_morphism(tiny_experiment, use_kd=False, iterations=1)))
    start = start_spec(exp.search_space, 10, (1, 40), 0.5, "mb_k3_e3")
    t_const = ArchLatencyModel.for_experiment(exp)(start).latency_ms  # every morphism adds work: nothing fits
    strategy = exp.config.strategy.model_copy(update={"t_const_ms": t_const})
    outcome = run_morphism(exp, strategy, seed=0, run_dir=tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "climb.json").read_text())["history"]
    assert history[1]["children"] == [] and history[1]["dropped"]["latency"] == 2 * DRAWS_PER_CHILD
    assert outcome.compact == start.compact() and outcome.feasible


def test_teacher_is_trained_once_then_cached(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(_morphism(tiny_experiment)))
    dm = JmsnasDataModule(exp.config.dataset, seed=0)
    _, record = load_or_train_teacher(exp, exp.config.strategy, dm, tmp_path / "teacher")
    stamp = (tmp_path / "teacher" / "teacher.pt").stat().st_mtime_ns
    teacher, again = load_or_train_teacher(exp, exp.config.strategy, dm, tmp_path / "teacher")
    assert again == record and (tmp_path / "teacher" / "teacher.pt").stat().st_mtime_ns == stamp
    assert record["params"] == sum(p.numel() for p in teacher.parameters()) and 0 <= record["val_acc"] <= 1


class _NotWeights:
    pass


def test_user_teacher_checkpoint(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    data = _morphism(tiny_experiment)
    data["strategy"]["teacher"]["checkpoint"] = "teacher.pt"
    exp = load_experiment(write_experiment(data))
    strategy = exp.config.strategy
    given = build_teacher(strategy.teacher, exp.search_space, 10, (1, 40))
    torch.save(given.state_dict(), tmp_path / "teacher.pt")
    dm = JmsnasDataModule(exp.config.dataset, seed=0)
    teacher, record = load_or_train_teacher(exp, strategy, dm, tmp_path / "cache")
    assert record["checkpoint"] == str(tmp_path / "teacher.pt") and not (tmp_path / "cache").exists()
    x = torch.randn(2, 1, 40)
    torch.testing.assert_close(teacher(x), given.eval()(x))
    for bad in (_NotWeights(), {"when": datetime.datetime(2020, 1, 1)}, {"stem.conv.weight": torch.zeros(1)}):
        torch.save(bad, tmp_path / "teacher.pt")  # code to unpickle, or weights of another network
        with pytest.raises(ConfigError, match=r"strategy\.teacher\.checkpoint"):
            load_or_train_teacher(exp, strategy, dm, tmp_path / "cache")


def test_library_teachers(tiny_experiment, write_experiment, capsys) -> None:
    tiny_experiment["strategy"] = {"name": "morphism", "t_const_ms": 5.0, "teacher": {"model": "resnet18"}}
    assert main([str(write_experiment(tiny_experiment)), "--check"]) == 2  # 1-D signals: no timm/torchvision
    assert "strategy.teacher.model" in capsys.readouterr().err
    exp = load_experiment(write_experiment(tiny_experiment))
    for name in ("resnet18", "mobilenet_v3_small"):  # timm, then torchvision (with a channel adapter)
        cfg = exp.config.strategy.teacher.model_copy(update={"model": name})
        assert build_teacher(cfg, exp.search_space, 7, (1, 32, 32)).eval()(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    tiny_experiment["search_space"] = tiny_experiment["search_space"].replace("tiny_1d", "tiny_2d")
    tiny_experiment["strategy"]["teacher"]["model"] = "no_such_net"
    assert main([str(write_experiment(tiny_experiment)), "--check"]) == 2
    assert "no timm or torchvision model" in capsys.readouterr().err
