"""One search run end to end, and the supernet -> arch.json -> module round trip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from jmsnas.config import load_experiment
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.space.spec import load_search_space
from jmsnas.space.supernet import Supernet
from jmsnas.strategies.run import run_proxyless

REPO = Path(__file__).resolve().parents[2]


def test_supernet_to_arch_json_to_module_keeps_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Supernet(load_search_space(REPO / "search_spaces" / "tiny_2d.yaml"), 5)
    for alpha in net.arch_parameters():
        alpha.data.normal_()
    net.train()
    for _ in range(2):  # move BatchNorm statistics off their defaults
        net(torch.randn(4, *net.input_shape), net.sample_paths())
    net.eval()
    paths = [layer.argmax() for layer in net.layers]
    net.to_arch_spec().save_json(tmp_path / "arch.json")
    rebuilt = build_model(ArchSpec.load_json(tmp_path / "arch.json"))
    rebuilt.load_state_dict(net.export_subnet().state_dict())
    x = torch.randn(3, *net.input_shape)
    torch.testing.assert_close(rebuilt.eval()(x), net(x, paths), rtol=0, atol=0)


@pytest.mark.parametrize("init", ["inherit", "scratch"])
def test_run_proxyless_writes_artifacts(init: str, tiny_experiment, write_experiment, tmp_path: Path) -> None:
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["strategy"].update(epochs=2, warmup_epochs=1, retrain={"epochs": 1, "init": init})
    exp = load_experiment(write_experiment(tiny_experiment))
    outcome = run_proxyless(exp, exp.config.strategy, seed=0, run_dir=tmp_path / "run", progress=False)
    for name in ("arch.json", "model.pt", "outcome.json", "search/metrics.csv", "retrain/metrics.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    spec = ArchSpec.load_json(tmp_path / "run" / "arch.json")
    assert spec.compact() == outcome.compact
    net = build_model(spec)
    net.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    assert 0.0 <= outcome.test_acc <= 1.0 and outcome.predicted_latency_ms > 0
    assert outcome.feasible == (outcome.predicted_latency_ms <= 5.0)
    assert json.loads((tmp_path / "run" / "outcome.json").read_text())["compact"] == outcome.compact
    assert outcome.split["path"] == ["a", "b", "c"] and len(outcome.split["boundaries"]) == 4


def test_same_seed_same_architecture_and_derived_accuracy_logged(tiny_experiment, write_experiment,
                                                                  tmp_path: Path) -> None:
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["strategy"].update(epochs=3, warmup_epochs=1, arch_lr=0.05, bn_calibration_batches=3,
                                       retrain={"epochs": 1})
    exp = load_experiment(write_experiment(tiny_experiment))
    a, b = (run_proxyless(exp, exp.config.strategy, seed=5, run_dir=tmp_path / n, progress=False) for n in "ab")
    assert a.arch == b.arch and a.search_val_acc == b.search_val_acc
    logs = [[r for r in csv.DictReader((tmp_path / n / "search" / "metrics.csv").open()) if r["val_acc_derived"]]
            for n in "ab"]
    assert [r["epoch"] for r in logs[0]] == ["0", "1", "2"]  # the derived network's accuracy, every epoch
    for key in ("val_acc_derived", "val_acc_shared_bn", "expected_latency_ms"):  # alpha moved the same way
        assert [r[key] for r in logs[0]] == [r[key] for r in logs[1]], key
    assert logs[0][0]["val_acc"] == logs[0][0]["val_acc_derived"]
