"""The whole exits stage: augment a trained model, write its plan with exits, export and run the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from exits_specs import chain3, digits_dm, mnist1d_dm, tiny_1d_spec, trained_tiny_1d, trained_tiny_resnet

from jmsnas.config import ExitsConfig
from jmsnas.errors import ConfigError
from jmsnas.exits import augment, export_eenn, load_heads, plan_with_exits
from jmsnas.exits.costs import ExitLatency
from jmsnas.exits.graph import block_graph
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.planners import plan_sequential
from jmsnas.runtime.bundle import load_bundle, run_bundle, verify_bundle
from jmsnas.space.macs import arch_descriptors

FAST = ExitsConfig(head_epochs=3, head_lr=0.01, final_thresholds_per_exit=25)


def _fixed_plan() -> tuple[DeploymentPlan, dict[str, list[float]]]:
    """A plan of the tiny 1-D ArchNet cut at units 2 and 4 (both exit locations) on the three-device chain."""
    lat = {"a": [1.0, 1.0, 50.0, 50.0, 50.0, 50.0], "b": [50.0, 50.0, 1.0, 1.0, 50.0, 50.0],
           "c": [50.0, 50.0, 50.0, 50.0, 1.0, 1.0]}
    out_bytes = [4.0 * d.output_numel for d in arch_descriptors(tiny_1d_spec())]
    plan = plan_sequential(lat, out_bytes, 160.0, chain3())
    assert plan.boundaries() == [0, 2, 4, 6]
    return plan, lat


@pytest.fixture(scope="module")
def fixed_result(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("exits_run")
    plan, lat = _fixed_plan()
    result = augment(trained_tiny_1d(), mnist1d_dm(), FAST, chain3(), ExitLatency(unit_ms=lat), t_const_ms=500.0,
                     split=plan, run_dir=run_dir)
    return result, plan, run_dir


def test_exits_sit_at_the_plans_boundaries(fixed_result) -> None:
    result, plan, run_dir = fixed_result
    assert result.exits and set(result.exits) <= {2, 4}  # at most one exit per device boundary
    assert list(result.placement.boundaries) == plan.boundaries()
    assert result.candidates["mode"] == "fixed" and result.candidates["total"] == 4  # {}, {2}, {4}, {2, 4}
    t = result.test
    assert t.mean_macs == pytest.approx(t.predicted_mean_macs)  # executed = predicted (eq. 3)
    assert sum(r["termination"] for r in t.exits) == pytest.approx(1.0)
    assert t.worst_latency_ms == pytest.approx(result.placement.worst_latency_ms)
    assert t.original["macs"] == block_graph(trained_tiny_1d(), (1, 40)).total_macs
    data = json.loads((run_dir / "result.json").read_text())
    assert data["exits"] == result.exits and data["test"]["mac_reduction"] == pytest.approx(t.mac_reduction)
    assert data["search"]["coarse"]["gap"] == pytest.approx(0.0, abs=1e-12)  # <= 2 exits: Bellman-Ford exact
    assert "| final |" in result.to_markdown()


def test_saved_heads_load_without_pickle_and_reproduce(fixed_result) -> None:
    result, _, run_dir = fixed_result
    heads, thresholds = load_heads(run_dir)
    assert list(heads) == result.exits and [thresholds[k] for k in heads] == result.thresholds
    g = block_graph(trained_tiny_1d(), (1, 40))
    x = torch.stack([mnist1d_dm().test_set[i][0] for i in range(8)])
    logits, *feats = g.feature_extractor(result.exits)(x)
    for loc, f in zip(result.exits, feats, strict=True):
        assert torch.equal(heads[loc](f), result.heads[loc].eval()(f))


def test_plan_with_exits_round_trips(fixed_result, tmp_path: Path) -> None:
    result, plan, _ = fixed_result
    with_exits = plan_with_exits(result, base_plan=plan)
    assert [e.unit for e in with_exits.exits] == result.exits
    assert with_exits.total_latency_ms == pytest.approx(result.placement.worst_latency_ms)
    assert with_exits.mean_latency_ms <= with_exits.total_latency_ms
    with_exits.to_json(tmp_path / "plan.json")
    assert DeploymentPlan.from_json(tmp_path / "plan.json") == with_exits
    old = {k: v for k, v in plan.to_dict().items() if k not in ("exits", "mean_latency_ms")}
    assert DeploymentPlan.from_dict(old) == plan  # a plan.json written before exits still loads


def test_exported_bundle_reproduces_the_eenn(fixed_result, tmp_path: Path) -> None:
    result, plan, _ = fixed_result
    with_exits = plan_with_exits(result, base_plan=plan)
    manifest_path = export_eenn(result, with_exits, torch.randn(2, 1, 40), tmp_path / "bundle")
    manifest = json.loads(manifest_path.read_text())
    assert [e["threshold"] for e in manifest["exits"]] == pytest.approx(result.thresholds)
    for e in manifest["exits"]:
        part = manifest["parts"][e["part"]]
        assert part["outputs"][0]["name"] == e["logits"] and part["outputs"][0]["shape"] == [None, 10]
    x = torch.stack([mnist1d_dm().test_set[i][0] for i in range(64)])
    with torch.no_grad():
        expected, expected_idx = result.net(x)
    for backend, tol in (("torchscript", 1e-5), ("onnx", 1e-4)):
        logits, idx = load_bundle(tmp_path / "bundle", backend).run_exits(x)
        assert torch.equal(idx, expected_idx)
        assert torch.allclose(logits, expected, atol=tol)
    logits, idx = run_bundle(tmp_path / "bundle", x)
    assert torch.equal(idx, expected_idx)
    # every part on every sample: the final logits are the original network's
    assert verify_bundle(tmp_path / "bundle", trained_tiny_1d(), [x]).max_abs_diff <= 1e-5


def test_enumerated_splits_on_a_traced_model_with_pruning(tmp_path: Path) -> None:
    model = trained_tiny_resnet()
    g = block_graph(model, (1, 8, 8))
    lat = {d: [0.0] * g.num_units for d in ("a", "b", "c")}
    lat["a"][0] = 5.0  # the stem on the slow device costs 5 ms
    cfg = FAST  # paper 001's weighted objective (0.9 on efficiency) takes exits readily
    loose = augment(model, digits_dm(), cfg, chain3(), ExitLatency(unit_ms=lat))
    assert loose.exits and loose.placement.exit_devices[0] in ("a", "b")
    assert loose.candidates["mode"] == "enumerated" and loose.candidates["pruned_before_training"] == 0
    assert loose.test.accuracy_loss_pp == pytest.approx(100 * (loose.test.original["accuracy"] - loose.test.accuracy))
    none = augment(model, digits_dm(), cfg, chain3(), ExitLatency(unit_ms=lat), t_const_ms=1e-3)
    assert none.exits == [] and none.candidates["feasible"] == 0
    assert not any(h["trained"] for h in none.heads_info.values())  # pruned before any training
    with_exits = plan_with_exits(loose)
    assert with_exits.boundaries() == list(loose.placement.boundaries)
    export_eenn(loose, with_exits, torch.randn(2, 1, 8, 8), tmp_path / "bundle")
    x = torch.stack([digits_dm().test_set[i][0] for i in range(32)])
    with torch.no_grad():
        expected, expected_idx = loose.net(x)
    logits, idx = load_bundle(tmp_path / "bundle").run_exits(x)
    assert torch.equal(idx, expected_idx) and torch.allclose(logits, expected, atol=1e-5)


def test_training_split_calibration_applies_the_correction_factor() -> None:
    plan, lat = _fixed_plan()
    cfg = FAST.model_copy(update={"calibration": "train", "correction_factor": 0.5, "joint_finetune": True})
    result = augment(trained_tiny_1d(), mnist1d_dm(), cfg, chain3(), ExitLatency(unit_ms=lat), split=plan)
    assert result.exits and result.search["correction_factor"] == 0.5
    assert result.thresholds == pytest.approx([0.5 * t for t in result.calibration.thresholds])
    assert result.search["joint_finetune"]["weights"] == pytest.approx(
        [0.5] * 2 if len(result.exits) == 1 else [0.2, 0.3, 0.5])


def test_bad_inputs_name_the_field() -> None:
    _, lat = _fixed_plan()
    model, dm = trained_tiny_1d(), mnist1d_dm()
    with pytest.raises(ConfigError, match="boundaries"):
        augment(model, dm, FAST, chain3(), ExitLatency(unit_ms=lat), split=[0, 2, 9])
    with pytest.raises(ConfigError, match="unit_latency_ms.b"):
        augment(model, dm, FAST, chain3(), ExitLatency(unit_ms={**lat, "b": [1.0]}))
