"""Exits through the deploy stage: a trained choice gets exits at its plan's boundaries, in plan.json and bundle/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from exits_specs import mnist1d_dm, tiny_1d_spec, trained_tiny_1d

from jmsnas.config import load_experiment
from jmsnas.errors import ConfigError
from jmsnas.latency.model import latency_models
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.costs import arch_costs, plan_arch
from jmsnas.runtime.bundle import load_bundle
from jmsnas.stages.deploy import check_partition, deploy_choice


@pytest.fixture
def exits_experiment(tiny_experiment: dict) -> dict:
    # a and b are fast but small: a holds units 0-1 (5,152 bytes), b unit 2 and at most the identity
    # unit 3 (6,768 bytes for both), so c, slow, runs the rest; the plan's first inner boundary, 2, is an
    # exit location (3 is not: the identity unit after it computes nothing).
    tiny_experiment["dataset"] = {"name": "mnist1d", "num_samples": 700, "batch_size": 64, "val_fraction": 0.2}
    tiny_experiment["topology"]["devices"] = [
        {"name": "a", "analytic": {"macs_per_s": 1.0e9, "memory_bytes": 9000}},
        {"name": "b", "analytic": {"macs_per_s": 1.0e9, "memory_bytes": 7000}},
        {"name": "c", "analytic": {"macs_per_s": 1.0e7, "memory_bytes": 1 << 30}},
    ]
    tiny_experiment["topology"]["links"] = [{"src": "a", "dst": "b", "bandwidth_mbps": 1.0e4, "rtt_ms": 0.0},
                                            {"src": "b", "dst": "c", "bandwidth_mbps": 1.0e4, "rtt_ms": 0.0}]
    tiny_experiment["strategy"]["t_const_ms"] = 50.0
    # an accuracy budget: this weak model's early head is right far less often than the final one, so
    # the threshold keeps only confident samples there (the weighted 0.9 / 0.1 objective sends all out early)
    tiny_experiment["exits"] = {"head_epochs": 3, "head_lr": 0.01, "final_thresholds_per_exit": 25,
                                "objective": "accuracy_budget", "accuracy_budget_pp": 10.0, "accuracy_z": 0.0}
    return tiny_experiment


def _choice(tmp_path: Path) -> Path:
    choice = tmp_path / "best" / "t50ms"
    choice.mkdir(parents=True)
    tiny_1d_spec().save_json(choice / "arch.json")
    torch.save(trained_tiny_1d().state_dict(), choice / "model.pt")
    return choice


def test_deployed_exits_are_in_the_plan_and_the_bundle_decides_like_the_cascade(exits_experiment, write_experiment,
                                                                                 tmp_path: Path) -> None:
    exits_experiment.update(partition={"compressors": [{"kind": "none"}, {"kind": "quantize", "bits": 8}]},
                            export={})
    exp = load_experiment(write_experiment(exits_experiment))
    choice = _choice(tmp_path)
    result = deploy_choice(exp, choice, datamodule=mnist1d_dm()).to_dict()
    plan = DeploymentPlan.from_json(choice / "plan.json")
    assert plan.boundaries()[:2] == [0, 2] and plan.boundaries()[2] in (3, 4)
    e = result["exits"]
    assert 2 in e["units"] and set(e["units"]) <= set(plan.boundaries()[1:-1])  # only at device boundaries
    assert [x.unit for x in plan.exits] == e["units"] and [x.device for x in plan.exits] == e["devices"]
    assert plan.total_latency_ms == pytest.approx(e["worst_latency_ms"])
    assert plan.mean_latency_ms < plan.total_latency_ms  # some samples leave before the slow device
    assert sum(e["termination"]) == pytest.approx(1.0)
    assert (choice / "exits" / "result.json").is_file() and (choice / "exits" / "heads.json").is_file()
    manifest = json.loads((choice / "bundle" / "manifest.json").read_text())
    assert [p.get("exit") is not None for p in manifest["parts"]] == [d in e["devices"] for d in plan.devices]
    for backend in ("torchscript", "onnx"):  # the runtime's decisions reproduce the in-process cascade
        assert result["verify"]["exits"][backend]["same_exit"] >= 0.99
        assert result["verify"]["exits"][backend]["top1_agreement"] >= 0.99
    assert 0.0 < e["termination"][0] < 1.0  # the threshold splits the samples
    assert result["verify"]["torchscript"]["top1_agreement"] >= 0.95  # full path: one 8-bit cut
    x = next(iter(mnist1d_dm().test_dataloader()))[0]
    logits, index = load_bundle(choice / "bundle").run_exits(x)
    assert logits.shape == (len(x), 10) and set(index.tolist()) <= set(range(len(e["units"]) + 1))


def test_learned_compressors_with_exits_are_refused_at_check(exits_experiment, write_experiment) -> None:
    exits_experiment["partition"] = {"compressors": [{"kind": "none"}, {"kind": "autoencoder"}]}
    with pytest.raises(ConfigError, match="cannot be combined with early exits") as info:
        check_partition(load_experiment(write_experiment(exits_experiment)))
    assert info.value.field == "partition.compressors[1].kind"


def test_exits_move_the_split_when_the_best_plan_without_them_has_no_boundary(exits_experiment, write_experiment,
                                                                               tmp_path: Path) -> None:
    # c is the fastest device and the result is wanted there, so without exits everything runs on c; an
    # answer that exits on a or b skips the 30 ms link, so the split with an exit is faster on average.
    exits_experiment["topology"]["devices"] = [
        {"name": "a", "analytic": {"macs_per_s": 1.0e7, "memory_bytes": 1 << 20}},
        {"name": "b", "analytic": {"macs_per_s": 1.0e7, "memory_bytes": 1 << 20}},
        {"name": "c", "analytic": {"macs_per_s": 1.0e10, "memory_bytes": 1 << 30}},
    ]
    exits_experiment["topology"]["links"][1].update(bandwidth_mbps=1.0, rtt_ms=30.0)
    exits_experiment["exits"].update(efficiency="latency", result_at="exit")
    exp = load_experiment(write_experiment(exits_experiment))
    result = deploy_choice(exp, _choice(tmp_path), datamodule=mnist1d_dm()).to_dict()
    without = plan_arch(arch_costs(tiny_1d_spec(), latency_models(exp.topology, ".")), exp.topology)
    assert without.boundaries() == [0, 0, 0, 6]  # no inner boundary: no exit possible on this split
    e = result["exits"]
    assert e["units"] and result["boundaries"] != [0, 0, 0, 6]
    assert set(e["units"]) <= set(result["boundaries"][1:-1])
    assert e["mean_latency_ms"] < without.total_latency_ms < e["worst_latency_ms"] + 1e-9


def test_deployed_exit_predictor_is_fitted_exported_and_applied(exits_experiment, write_experiment,
                                                               tmp_path: Path) -> None:
    """``exits.predictor``: the predictor is trained on the chosen EENN's labels, its gammas chosen on the
    calibration split (the paper's criterion, so at most 2 pp more samples reach the final exit there), and
    the bundle's runtime skips heads as the in-process ``SkippingCascade`` does."""
    exits_experiment.update(export={})
    exits_experiment["exits"]["predictor"] = {"variant": "fcs", "epochs": 3, "labels": "calibration"}
    exp = load_experiment(write_experiment(exits_experiment))
    choice = _choice(tmp_path)
    result = deploy_choice(exp, choice, datamodule=mnist1d_dm()).to_dict()
    info = json.loads((choice / "exits" / "predictor.json").read_text())
    manifest = json.loads((choice / "bundle" / "manifest.json").read_text())
    k = len(result["exits"]["units"])
    assert k >= 1 and manifest["predictor"]["gammas"] == info["gammas"] and len(info["gammas"]) == k
    assert manifest["predictor"]["macs"] == info["macs"] > 0 and info["variant"] == "fcs"
    assert all(p["exit"]["skip_files"] for p in manifest["parts"] if p.get("exit"))
    # eq. (4) with the chosen gammas is never above eq. (4) at gamma = 0, which is eq. (3) plus the predictor
    assert info["ep_macs"] <= info["ee_macs"] + info["macs"] + 1e-6
    assert info["pays_off"] == (info["ep_macs"] < info["ee_macs"])
    plan = DeploymentPlan.from_json(choice / "plan.json")  # priced with the predictor
    assert plan.mean_latency_ms == pytest.approx(info["mean_latency_ms_with"]) and info["predictor_ms"] > 0
    assert plan.total_latency_ms == pytest.approx(result["exits"]["worst_latency_ms"] + info["predictor_ms"])
    assert info["worst_latency_ms_with"] == pytest.approx(plan.total_latency_ms) and info["t_const_ms"] == 50.0
    assert info["holds_t_const"] == (plan.total_latency_ms <= 50.0)
    for backend in ("torchscript", "onnx"):
        assert result["verify"]["exits"][backend]["same_exit"] >= 0.99
    x = next(iter(mnist1d_dm().test_dataloader()))[0]
    logits, index = load_bundle(choice / "bundle").run_exits(x)
    assert logits.shape == (len(x), 10) and set(index.tolist()) <= set(range(k + 1))


def test_predictor_options_are_checked(exits_experiment, write_experiment) -> None:
    exits_experiment["exits"]["predictor"] = {"variant": "resnet"}
    with pytest.raises(ConfigError) as info:
        load_experiment(write_experiment(exits_experiment))
    assert "exits.predictor.variant" in str(info.value) and "lenet" in str(info.value)


def test_deployed_adaptive_thresholds_hold_tau_where_the_regressors_say(exits_experiment, write_experiment,
                                                                        tmp_path: Path) -> None:
    """``exits.adaptive`` (with a predictor): the bundle carries the regressors on the cut after the last exit;
    at each training bandwidth the runtime's repaired point holds τ on the stored statistics whenever the
    optimum there does, and the default τ is the deployed point's latency at the topology's bandwidth."""
    from jmsnas.exits.adaptive import ExitStats, evaluate
    from jmsnas.exits.skip import ExitParts

    exits_experiment.update(export={"verify": False, "measure": False})
    exits_experiment["exits"]["predictor"] = {"variant": "fcs", "epochs": 2, "labels": "calibration"}
    exits_experiment["exits"]["adaptive"] = {"intervals": 2}
    exp = load_experiment(write_experiment(exits_experiment))
    choice = _choice(tmp_path)
    deploy_choice(exp, choice, datamodule=mnist1d_dm())
    info = json.loads((choice / "exits" / "adaptive.json").read_text())
    manifest = json.loads((choice / "bundle" / "manifest.json").read_text())
    entry = manifest["adaptive"]
    plan = DeploymentPlan.from_json(choice / "plan.json")
    assert entry["cut"] == plan.devices.index(plan.exits[-1].device) and info["planned_bandwidth_mbps"] == 1.0e4
    assert len(info["optima"]) == 12 and len(entry["regressors"]["regressors"]) == 2
    assert entry["payload_bits"] == 8 * plan.cuts[entry["cut"]].payload_bytes
    s, p = entry["stats"], entry["part_ms"]
    stats = ExitStats(np.asarray(s["confidences"]), np.asarray(s["correct"], dtype=bool), np.asarray(s["scores"]))
    parts = ExitParts(p["segments"], p["heads"], p["predictor"])
    deployed = evaluate(stats, parts, entry["payload_bits"], 1.0e4, entry["tau_ms"], [e.threshold for e in plan.exits],
                        manifest["predictor"]["gammas"], "ep")
    assert deployed.latency_ms == pytest.approx(entry["tau_ms"], rel=1e-9)
    bundle = load_bundle(choice / "bundle")
    for opt in info["optima"]:
        _, _, point = bundle.operating_point(opt["bandwidth_mbps"])
        assert point.feasible or not opt["feasible"]
        if point.feasible:
            assert point.latency_ms <= entry["tau_ms"] + 1e-9
