"""The deployment's plots and their place in report.md: drawn when the records hold their data, else absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment
from jmsnas.report import plot_pareto
from jmsnas.stages.deploy_plots import (
    BREAKDOWN_PNG,
    MEASURED_PNG,
    PAYLOAD_PNG,
    TERMINATION_PNG,
    baseline_stacks,
    measured_points,
    stacks,
    write_deploy_plots,
)
from jmsnas.stages.deploy_report import PLOT_CAPTIONS, deployment_markdown

PNG = b"\x89PNG\r\n\x1a\n"


def _plan() -> DeploymentPlan:
    segs = (DeviceSegment("a", "main", 0, 2, 1.5), DeviceSegment("b", "main", 2, 2, 0.0),
            DeviceSegment("c", "main", 2, 5, 0.25))
    cuts = (CutPlan("a", "b", 40.0, 2.0), CutPlan("b", "c", 40.0, 3.0))
    return DeploymentPlan("chain", segs, cuts, 6.75)


def _record(*, exits: bool, measured: bool, sweep: bool) -> dict:
    d = {"t_const_ms": 8.0, "dir": "best/t8ms", "arch": "net", "plan": "plan.json", "predicted_latency_ms": 6.75,
         "devices": ["a", "b", "c"], "boundaries": [0, 2, 2, 5], "cuts": [], "input_bytes": 160.0,
         "test_acc_unsplit": 0.9, "test_acc_split": 0.89, "acc_change_pp": -1.0, "notes": [],
         "baselines": [{"name": "device-only", "network": "searched", "latency_ms": 9.0, "path": ["a", "b", "c"],
                        "boundaries": [0, 5, 5, 5], "fits_memory": True,
                        "device_ms": {"a": 4.0, "b": 0.0, "c": 0.0}, "link_ms": {"a->b": 2.0, "b->c": 3.0}},
                       {"name": "neurosurgeon", "network": "mobilenetv2", "latency_ms": 7.5, "path": ["a", "c"],
                        "boundaries": [0, 3, 5], "fits_memory": True}]}
    if exits:
        d["exits"] = {"dir": "exits", "units": [2], "thresholds": [0.8], "devices": ["a"], "test_acc": 0.88,
                      "acc_change_pp": -2.0, "mac_reduction": 0.3, "mean_latency_ms": 4.0, "worst_latency_ms": 7.0,
                      "termination": [0.6, 0.4]}
    if measured:
        d["latency_measured"] = {"flag_above": 0.15, "parts": [
            {"part": 0, "device": "a", "predicted_ms": 1.5, "status": "analytic: not measured"},
            {"part": 1, "device": "b", "predicted_ms": 0.0, "status": "measured", "onnx_ms": 0.01,
             "torchscript_ms": 0.01, "onnx_rel_err": None},
            {"part": 2, "device": "c", "predicted_ms": 0.25, "status": "measured", "onnx_ms": 0.2,
             "torchscript_ms": 0.3, "onnx_rel_err": -0.2}]}
    if sweep:
        d["payload_sweep"] = [{"cut": 0, "src": "a", "dst": "b", "compressor": c, "payload_bytes": b, "test_acc": a,
                               "deployed": c == "none"} for c, b, a in (("none", 160.0, 0.89), ("quantize-8b", 40.0,
                                                                                                 0.885))]
    return d


def test_stacks_add_up_to_the_plans_latency_in_execution_order() -> None:
    st = stacks(_plan())
    assert [label for label, _ in st] == ["a", "a->b", "b", "b->c", "c"]
    assert sum(ms for _, ms in st) == pytest.approx(6.75)
    b = _record(exits=False, measured=False, sweep=False)["baselines"]
    assert [label for label, _ in baseline_stacks(b[0])] == ["a", "a->b", "b", "b->c", "c"]
    assert sum(ms for _, ms in baseline_stacks(b[0])) == pytest.approx(9.0)
    assert baseline_stacks(b[1]) == [("total", 7.5)]  # a record from before breakdowns were kept


def test_only_parts_with_planned_layers_and_a_measurement_are_plotted() -> None:
    assert measured_points([_record(exits=False, measured=True, sweep=False)]) == [("8 ms: c", 0.25, 0.2, 0.3)]


def test_every_plot_the_records_support_is_drawn_and_a_stale_one_removed(tmp_path: Path) -> None:
    (tmp_path / "best" / "t8ms").mkdir(parents=True)
    _plan().to_json(tmp_path / "best" / "t8ms" / "plan.json")
    full = [_record(exits=True, measured=True, sweep=True)]
    assert write_deploy_plots(tmp_path, full) == {"deploy_breakdown": BREAKDOWN_PNG, "exit_termination":
                                                  TERMINATION_PNG, "payload_accuracy": PAYLOAD_PNG,
                                                  "latency_measured": MEASURED_PNG}
    for name in (BREAKDOWN_PNG, TERMINATION_PNG, PAYLOAD_PNG, MEASURED_PNG):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    bare = [_record(exits=False, measured=False, sweep=False)]
    assert write_deploy_plots(tmp_path, bare) == {"deploy_breakdown": BREAKDOWN_PNG}
    assert not (tmp_path / TERMINATION_PNG).exists() and not (tmp_path / MEASURED_PNG).exists()


def test_the_report_shows_the_drawn_plots_under_their_captions_in_order() -> None:
    text = deployment_markdown([_record(exits=False, measured=False, sweep=False)],
                               {"payload_accuracy": PAYLOAD_PNG, "deploy_breakdown": BREAKDOWN_PNG})
    assert text.index(f"]({BREAKDOWN_PNG})") < text.index(f"]({PAYLOAD_PNG})")
    assert PLOT_CAPTIONS["deploy_breakdown"] in text and PLOT_CAPTIONS["exit_termination"] not in text


def test_the_pareto_plot_takes_the_baselines_of_the_deployed_choices(tmp_path: Path) -> None:
    trials = [{"trial_id": "x", "status": "finished", "predicted_latency_ms": 6.0, "val_acc": 0.9, "t_const_ms": 8.0}]
    selections = [{"t_const_ms": 8.0, "feasible": True, "predicted_latency_ms": 6.0, "val_acc": 0.9}]
    plot_pareto(tmp_path / "p.png", trials, selections, [_record(exits=False, measured=False, sweep=False)])
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG
