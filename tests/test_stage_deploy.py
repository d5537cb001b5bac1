"""The stages after the search on one chosen network: plan, compressors, bundle, verification, baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jmsnas.config import load_experiment
from jmsnas.errors import ConfigError
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.runtime.bundle import run_bundle
from jmsnas.search import main
from jmsnas.space import morph
from jmsnas.stages.deploy import check_partition, deploy_choice, load_choice


def test_lossless_deployment_reproduces_the_model_and_reports_baselines(tiny_experiment, write_experiment,
                                                                         tmp_path: Path, make_choice) -> None:
    tiny_experiment.update(partition={"compressors": []}, export={"verify": True})
    exp = load_experiment(write_experiment(tiny_experiment))
    choice = make_choice(exp)
    result = deploy_choice(exp, choice).to_dict()
    plan = DeploymentPlan.from_json(choice / "plan.json")
    assert plan.devices == ["a", "b", "c"] and result["boundaries"] == plan.boundaries()
    assert result["predicted_latency_ms"] == pytest.approx(plan.total_latency_ms)
    assert result["verify"]["lossless"] and result["verify"]["ok"]
    assert result["verify"]["torchscript"]["max_abs_diff"] <= 1e-5
    assert result["test_acc_split"] == result["test_acc_unsplit"]
    assert [b["name"] for b in result["baselines"]] == ["device-only", "cloud-only", "neurosurgeon", "hivemind"]
    _, model = load_choice(choice)
    x = torch.randn(4, 1, 40)
    with torch.no_grad():
        assert torch.allclose(run_bundle(choice / "bundle", x)[0], model(x), atol=1e-5)
    assert json.loads((choice / "deploy.json").read_text())["plan"] == "plan.json"


def test_cut_across_a_skip_connection_sends_both_tensors(tiny_experiment, write_experiment, tmp_path: Path,
                                                         make_choice) -> None:
    # A morphism-grown net: block 2 adds the stem's output. Device a has fast compute but memory for the
    # stem and block 0 only (720 + 1392 bytes), and b is slower over a fast link, so the cut a -> b falls
    # between blocks 0 and 1, inside the skip.
    devices = tiny_experiment["topology"]["devices"]
    devices[0]["analytic"].update(macs_per_s=1.0e10, memory_bytes=2200)
    devices[1]["analytic"]["macs_per_s"] = 1.0e9
    tiny_experiment["topology"]["links"][0]["bandwidth_mbps"] = 1.0e5
    devices[2]["analytic"]["macs_per_s"] = 1.0e4
    tiny_experiment.update(partition={"compressors": [{"kind": "quantize", "bits": 8}]}, export={})
    exp = load_experiment(write_experiment(tiny_experiment))
    choice = make_choice(exp)
    spec, model = load_choice(choice)
    spec, model = morph.add_skip(spec, model, 2, 0)
    with torch.no_grad():  # make the skip matter: its zero-initialised BatchNorm gets weight 1
        model.blocks[2].skip.bn.weight.fill_(1.0)
    spec.save_json(choice / "arch.json")
    torch.save(model.state_dict(), choice / "model.pt")
    result = deploy_choice(exp, choice).to_dict()
    plan = DeploymentPlan.from_json(choice / "plan.json")
    assert plan.boundaries() == [0, 2, 5, 5]
    assert [t.name for t in plan.cuts[0].tensors] == ["stem", "blocks_0"]
    assert plan.cuts[0].payload_bytes == 2 * 4 * 40  # stem and block 0 outputs, (4, 40) each, one byte a value
    assert result["verify"]["onnx"]["top1_agreement"] >= 0.9
    x = torch.randn(8, 1, 40)
    with torch.no_grad():
        assert (run_bundle(choice / "bundle", x)[0].argmax(-1) == model(x).argmax(-1)).float().mean() >= 0.75


def test_quantize_and_autoencoder_cuts_send_what_the_plan_says(tiny_experiment, write_experiment,
                                                               tmp_path: Path, make_choice) -> None:
    # b is too slow to compute and c very fast: a and b relay the input, both cuts carry it compressed
    tiny_experiment["topology"]["devices"][1]["analytic"]["macs_per_s"] = 1.0e4
    tiny_experiment["topology"]["devices"][2]["analytic"]["macs_per_s"] = 1.0e10
    tiny_experiment.update(partition={"compressors": [{"kind": "quantize", "bits": 4},
                                                      {"kind": "autoencoder", "channel_fraction": 0.5}],
                                      "train_epochs": 1, "finetune_epochs": 1},
                           export={})
    exp = load_experiment(write_experiment(tiny_experiment))
    choice = make_choice(exp)
    result = deploy_choice(exp, choice).to_dict()
    plan = DeploymentPlan.from_json(choice / "plan.json")
    assert [c.compressor for c in plan.cuts] == ["quantize", "autoencoder"] and plan.boundaries() == [0, 0, 0, 5]
    manifest = json.loads((choice / "bundle" / "manifest.json").read_text())
    for k, part in enumerate(manifest["parts"][:-1]):  # the bytes on the wire are what the plan charges
        assert all(o["dtype"] == "uint8" for o in part["outputs"])
        per_sample = sum(torch.Size(o["example_shape"][1:]).numel() for o in part["outputs"])
        assert plan.cuts[k].payload_bytes == per_sample  # one byte per element on the wire
    assert plan.cuts[0].payload_bytes == 40 * 4 / 8  # 40 input values packed at 4 bits
    assert plan.cuts[1].payload_bytes == 20  # the autoencoder's code: 1 channel, half the length, 8 bits
    assert plan.total_latency_ms == pytest.approx(sum(s.compute_ms for s in plan.segments)
                                                  + sum(c.link_ms for c in plan.cuts))
    assert 0.0 <= result["verify"]["onnx"]["top1_agreement"] <= 1.0 and result["verify"]["lossless"] is False


def test_compressors_the_topology_cannot_use_are_refused_at_check(tiny_experiment, write_experiment, capsys) -> None:
    tiny_experiment["partition"] = {"compressors": [{"kind": "none"}] * 3}
    path = write_experiment(tiny_experiment)
    with pytest.raises(ConfigError, match="at most 2 cut"):
        check_partition(load_experiment(path))
    tiny_experiment["partition"] = {"compressors": [{"kind": "none"}, {"kind": "distilled_bottleneck"}]}
    path = write_experiment(tiny_experiment)
    assert main([str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "partition.compressors[1].kind" in err and "first cut" in err


def test_search_command_partitions_compresses_and_exports_the_choice(tiny_experiment, write_experiment,
                                                                     tmp_path: Path, capsys) -> None:
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["output_dir"] = str(tmp_path / "runs")
    tiny_experiment["strategy"].update(epochs=1, warmup_epochs=0, retrain={"epochs": 1}, t_const_ms=1000.0)
    tiny_experiment.update(partition={"compressors": [{"kind": "quantize"}, {"kind": "quantize"}]}, export={})
    assert main([str(write_experiment(tiny_experiment))]) == 0
    out = capsys.readouterr().out
    choice = tmp_path / "runs" / "tiny" / "best" / "t1000ms"
    for name in ("plan.json", "deploy.json", "bundle/manifest.json"):
        assert (choice / name).is_file(), name
    assert f"bundle {choice / 'bundle'}" in out
    report = (tmp_path / "runs" / "tiny" / "report.md").read_text()
    assert "## Deployment" in report and "| neurosurgeon | mobilenetv2 |" in report
    deployed = json.loads((choice / "deploy.json").read_text())
    plan = DeploymentPlan.from_json(choice / "plan.json")
    assert deployed["predicted_latency_ms"] == pytest.approx(plan.total_latency_ms)
    assert {c.compressor for c in plan.cuts} <= {"quantize"}


def test_deploy_command_runs_one_choice_and_refuses_to_overwrite(tiny_experiment, write_experiment, tmp_path: Path,
                                                                 capsys, make_choice) -> None:
    from jmsnas.deploy import main as deploy_main

    tiny_experiment["partition"] = {}
    path = write_experiment(tiny_experiment)
    choice = make_choice(load_experiment(path))
    assert deploy_main([str(path), str(choice)]) == 0
    assert "baseline  hivemind" in capsys.readouterr().out and (choice / "plan.json").is_file()
    assert deploy_main([str(path), str(choice)]) == 2
    assert "--force" in capsys.readouterr().err
    assert deploy_main([str(path), str(tmp_path)]) == 2
    assert "arch.json" in capsys.readouterr().err


def test_deploy_json_puts_measured_beside_predicted_for_a_measured_device(tiny_experiment, write_experiment,
                                                                          tmp_path: Path, monkeypatch,
                                                                          make_choice) -> None:
    """Device b has a profile measured here: its exported part is timed; a is analytic: labelled."""
    import jmsnas.runtime.measure as measure
    from jmsnas.latency.guard import ContentionGuard
    from jmsnas.latency.profiler import profile_search_spaces
    from jmsnas.space.spec import load_search_space
    from jmsnas.stages.deploy import deployment_markdown

    profiles = tmp_path / "profiles"
    profile_search_spaces([load_search_space(tiny_experiment["search_space"])], "here", profiles, grid=False,
                          blocks=2, block_size=1, warmup=0, calibration_nets=0, progress=False)
    topology = tiny_experiment["topology"]
    topology["devices"] = [{"name": "a", "analytic": {"macs_per_s": 1.0e4, "memory_bytes": 1048576}},
                           {"name": "b", "profile": "here"}]  # a is too slow to run anything: b runs the network
    topology["links"] = topology["links"][:1]
    tiny_experiment.update(partition={"compressors": []}, export={"verify": False}, profiles_dir=str(profiles))
    # the suite shares its cores with other work: the guard must not turn this test into a timing test
    monkeypatch.setattr(measure, "ContentionGuard", lambda: ContentionGuard(tolerance=100.0, warm_up_s=0))
    exp = load_experiment(write_experiment(tiny_experiment))
    choice = make_choice(exp)
    result = deploy_choice(exp, choice).to_dict()
    plan = DeploymentPlan.from_json(choice / "plan.json")
    m = result["latency_measured"]
    assert [p["device"] for p in m["parts"]] == plan.devices == ["a", "b"]
    assert [p["predicted_ms"] for p in m["parts"]] == [s.compute_ms for s in plan.segments]
    assert plan.segments[1].compute_ms > 0, plan.boundaries()
    a, c = m["parts"]
    assert a["status"] == "analytic: not measured" and "onnx_ms" not in a
    assert c["status"] == "measured" and c["onnx_ms"] > 0 and c["torchscript_ms"] > 0
    assert c["onnx_rel_err"] == pytest.approx(c["onnx_ms"] / c["predicted_ms"] - 1)
    assert c["flagged"] == (abs(c["onnx_rel_err"]) > 0.15 or abs(c["torchscript_rel_err"]) > 0.15)
    t = m["total"]  # measured total = predicted total with c's predicted compute replaced by its measured one
    assert t["predicted_ms"] == pytest.approx(plan.total_latency_ms)
    assert t["onnx_ms"] == pytest.approx(plan.total_latency_ms - c["predicted_ms"] + c["onnx_ms"])
    assert json.loads((choice / "deploy.json").read_text())["latency_measured"]["parts"][1]["status"] == "measured"
    text = deployment_markdown([{**result, "dir": "best/t5ms", "t_const_ms": 5.0}])
    assert "analytic: not measured" in text and f"{c['onnx_ms']:.4g}" in text

    meta = json.loads((profiles / "here.json").read_text())  # a profile of another machine is not timed here
    other = measure.measure_parts(choice / "bundle", plan, torch.randn(1, 1, 40),
                                  {"a": None, "b": {**meta, "processor": "another CPU"}})
    assert other["parts"][1]["status"] == "profile from another machine: not measured here"
