"""``exits.decision: decision_unit`` through the whole exits stage: augment, heads.json, plan, export, bundle
runtime (the exported units give the in-process decisions); and the calibration figures at scaled thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from exits_specs import chain3, mnist1d_dm, tiny_1d_spec, trained_tiny_1d

from jmsnas.config import ExitsConfig
from jmsnas.exits import augment, export_eenn, plan_with_exits
from jmsnas.exits.costs import ExitLatency
from jmsnas.exits.decision import DecisionUnit, exit_score, load_decision_units
from jmsnas.exits.meta import softmax64
from jmsnas.exits.thresholds import evaluate
from jmsnas.export.manifest import Manifest
from jmsnas.plan.planners import plan_sequential
from jmsnas.runtime.bundle import load_bundle
from jmsnas.space.macs import arch_descriptors

DU = ExitsConfig(head_epochs=3, head_lr=0.01, final_thresholds_per_exit=25, decision="decision_unit",
                 du={"epochs": 60})


def _plan():
    lat = {"a": [1.0, 1.0, 50.0, 50.0, 50.0, 50.0], "b": [50.0, 50.0, 1.0, 1.0, 50.0, 50.0],
           "c": [50.0, 50.0, 50.0, 50.0, 1.0, 1.0]}
    out_bytes = [4.0 * d.output_numel for d in arch_descriptors(tiny_1d_spec())]
    return plan_sequential(lat, out_bytes, 160.0, chain3()), lat


@pytest.fixture(scope="module")
def du_result(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("du_run")
    plan, lat = _plan()
    result = augment(trained_tiny_1d(), mnist1d_dm(), DU, chain3(), ExitLatency(unit_ms=lat), t_const_ms=500.0,
                     split=plan, run_dir=run_dir)
    return result, plan, run_dir


def _x(n: int = 96) -> torch.Tensor:
    return torch.stack([mnist1d_dm().test_set[i][0] for i in range(n)])


def test_the_cascade_decides_by_the_units_certainty(du_result) -> None:
    result, _, run_dir = du_result
    assert result.exits and set(result.decision_units) == set(result.exits)
    net = result.net
    x = _x()
    with torch.no_grad():
        _, idx = net(x)
        outs = net.all_exits(x)
    # slow reference: the first exit whose unit's certainty (on its softmax) reaches its threshold
    for i in range(len(x)):
        expected = net.num_exits
        for k in range(net.num_exits):
            unit = net.decision_units[k]
            if unit.certainty(softmax64(outs[k][i:i + 1]))[0] >= net.thresholds[k]:
                expected = k
                break
        assert int(idx[i]) == expected
    saved = load_decision_units(run_dir)
    for loc, unit in result.decision_units.items():
        assert isinstance(saved[loc], DecisionUnit)
        z = outs[result.exits.index(loc)]
        np.testing.assert_array_equal(saved[loc].certainty(softmax64(z)), unit.certainty(softmax64(z)))
    data = json.loads((run_dir / "result.json").read_text())
    assert data["config"]["decision"] == "decision_unit"


def test_exported_units_give_the_in_process_decisions(du_result, tmp_path: Path) -> None:
    result, plan, _ = du_result
    manifest_path = export_eenn(result, plan_with_exits(result, base_plan=plan), torch.randn(2, 1, 40),
                                tmp_path / "bundle")
    spec = Manifest.load(manifest_path)
    exits = [p.exit for p in spec.parts if p.exit is not None]
    assert exits and all(e.confidence == "decision_unit" and e.decision_unit["features"][0] == "max_prob"
                         for e in exits)
    assert all("decision_unit" not in e for e in json.loads(manifest_path.read_text())["exits"])
    x = _x(128)
    with torch.no_grad():
        expected, expected_idx = result.net(x)
    for backend in ("torchscript", "onnx"):
        _, idx = load_bundle(tmp_path / "bundle", backend).run_exits(x)
        assert torch.equal(idx, expected_idx)


def test_default_rule_is_the_top1_probability() -> None:
    z = torch.randn(16, 10, dtype=torch.float32)
    assert torch.equal(exit_score(z, None), torch.softmax(z.double(), dim=-1).amax(dim=-1))


def test_calibration_figures_come_from_the_scaled_thresholds() -> None:
    plan, lat = _plan()
    cfg = ExitsConfig(head_epochs=3, head_lr=0.01, final_thresholds_per_exit=25, calibration="train",
                      correction_factor=0.5)
    result = augment(trained_tiny_1d(), mnist1d_dm(), cfg, chain3(), ExitLatency(unit_ms=lat), t_const_ms=500.0,
                     split=plan)
    assert result.exits, "the fixed plan's data no longer chooses an exit: the check below would not run"
    cal = result.calibration
    assert list(cal.thresholds) == pytest.approx(result.thresholds)
    # the same figures from the cascade run for real on the calibration (training) split
    from jmsnas.exits.augment import cascade_stats, exit_costs, objective_of
    from jmsnas.exits.graph import block_graph
    from jmsnas.exits.train import exit_outputs

    g = block_graph(trained_tiny_1d(), (1, 40))
    outs = exit_outputs(g, result.heads, mnist1d_dm().train_set, 64)
    costs, final = exit_costs(g, {loc: h.macs for loc, h in result.heads.items()}, result.exits)
    stats = cascade_stats(outs, result.exits, costs, final, float(g.total_macs))
    direct = evaluate(stats, result.thresholds, objective_of(cfg))
    assert cal.termination == pytest.approx(direct.termination)
    assert cal.accuracy == pytest.approx(direct.accuracy)
    assert plan_with_exits(result, base_plan=plan).exits[0].termination_rate == pytest.approx(cal.termination[0])
