"""The supernet search on a branched space and a mesh, end to end, and what ``--check`` refuses around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jmsnas.config import load_experiment
from jmsnas.data import JmsnasDataModule
from jmsnas.runtime.bundle import run_bundle
from jmsnas.search import main
from jmsnas.space.branched import BranchedArchSpec, build_branched
from jmsnas.stages.deploy import deploy_choice, deployment_markdown
from jmsnas.strategies.run import expected_latency, run_proxyless

REPO = Path(__file__).resolve().parents[2]


def _mesh_experiment(tiny: dict) -> dict:
    names = ["ue", "sbs", "m1", "m2", "cloud"]
    rates = {"ue": 1e7, "sbs": 1e8, "m1": 2e8, "m2": 3e8, "cloud": 1e9}
    tiny["search_space"] = str(REPO / "search_spaces" / "tiny_1d_mesh.yaml")
    tiny["topology"] = {
        "kind": "mesh",
        "devices": [{"name": n, "analytic": {"macs_per_s": rates[n], "memory_bytes": 1 << 30}} for n in names],
        "links": [{"src": a, "dst": b, "bandwidth_mbps": 10.0, "rtt_ms": 1.0}
                  for a, b in [("ue", "sbs"), ("sbs", "m1"), ("sbs", "m2"), ("m1", "cloud"), ("m2", "cloud")]],
    }
    tiny["strategy"] = {"name": "proxyless", "t_const_ms": 5.0, "warmup_epochs": 1, "epochs": 2,
                        "derive_candidates": 2, "retrain": {"epochs": 1}}
    return tiny


def test_a_branched_search_hands_on_a_network_priced_by_eq2_that_deploys_as_planned(tiny_experiment, write_experiment,
                                                                                    tmp_path: Path) -> None:
    exp = load_experiment(write_experiment({**_mesh_experiment(tiny_experiment), "export": {}}))
    strategy = exp.config.strategy
    outcome = run_proxyless(exp, strategy, 0, tmp_path / "run", progress=False)
    spec = BranchedArchSpec.load_json(tmp_path / "run" / "arch.json")
    assert len(spec.branches) == 2 and spec.compact() == outcome.compact
    dm = JmsnasDataModule(exp.config.dataset, seed=exp.config.seed)
    info = dm.info()
    predictor = expected_latency(exp, info.num_classes, info.input_shape, strategy)
    slots = exp.search_space.layers(info.input_shape)
    paths = [slot.candidates.index(op) for slot, op in zip(slots, spec.choices, strict=True)]
    assert outcome.predicted_latency_ms == pytest.approx(float(predictor.for_choices(paths).total_ms), rel=1e-6)
    record = json.loads((tmp_path / "run" / "outcome.json").read_text())
    assert record["split"]["path"] == ["ue", "sbs", "m1", "m2", "cloud"]
    net = build_branched(spec)
    net.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))  # the retrained weights
    assert 0.0 <= outcome.test_acc <= 1.0
    # the deploy stage plans what the search predicted, and its bundle computes the network
    record = deploy_choice(exp, tmp_path / "run")
    assert record.predicted_latency_ms == pytest.approx(outcome.predicted_latency_ms, rel=1e-6)
    assert record.devices == ["ue", "sbs", "m1", "m2", "cloud"] and record.bundle == "bundle"
    assert record.boundaries == json.loads((tmp_path / "run" / "outcome.json").read_text())["split"]["boundaries"]
    assert record.verify["ok"] and record.verify["torchscript"]["max_abs_diff"] <= 1e-5
    assert record.verify["onnx"]["top1_agreement"] == 1.0
    section = deployment_markdown([{"t_const_ms": 5.0, "dir": "run", **record.to_dict()}])  # what report.md gets
    assert "ue -> sbs -> m1 -> m2 -> cloud" in section and "do not apply to parallel branches" in section
    assert record.test_acc_unsplit == pytest.approx(outcome.test_acc, abs=1e-6)
    assert abs(record.acc_change_pp) <= 0.2  # ONNX vs PyTorch rounding may flip a near tie, no more
    x = torch.randn(3, 1, 40)  # MNIST-1D: the dataset sets the length, not the space file
    with torch.no_grad():
        torch.testing.assert_close(run_bundle(tmp_path / "run" / "bundle", x, "onnx")[0], net.eval()(x), rtol=0,
                                   atol=1e-4)



@pytest.mark.parametrize(("change", "field"), [
    (lambda e: e.update(strategy={"name": "random", "t_const_ms": 5.0}), "strategy.name"),
    (lambda e: e["strategy"].update(split="pinned", max_layers_per_device=[1, 1, 1, 1, 1]), "strategy.split"),
    (lambda e: e.update(exits={}), "exits"),
    (lambda e: e.update(topology={**e["topology"], "kind": "chain", "links": [
        {"src": a, "dst": b, "bandwidth_mbps": 10.0, "rtt_ms": 1.0}
        for a, b in [("ue", "sbs"), ("sbs", "m1"), ("m1", "m2"), ("m2", "cloud")]]}), "search_space"),
])
def test_check_refuses_what_is_not_built_for_branched_spaces(change, field: str, tiny_experiment, write_experiment,
                                                             capsys) -> None:
    data = _mesh_experiment(tiny_experiment)
    change(data)
    assert main([str(write_experiment(data)), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and field in err and "Traceback" not in err, err
