"""Parallel branches served: the root feeds every branch, the join waits for all, the answers are the bundle's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_serve import FAST, assert_gone

from jmsnas.export.branched import calibrate_branched, export_branched_bundle
from jmsnas.runtime.bundle import run_bundle
from jmsnas.runtime.local import LocalRun, serve_local
from jmsnas.runtime.report import RuntimeReport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "export"))
from test_export_branched import _model, _plan  # noqa: E402  (the export tests' hand-made mesh and net)


@pytest.fixture(scope="module")
def branched_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    model, x = _model("concat"), torch.randn(6, 3, 8, 8)
    plan, _ = _plan(model, x)
    plan = calibrate_branched(plan, model, [x])
    out = tmp_path_factory.mktemp("branched") / "bundle"
    export_branched_bundle(model, plan, x, out)
    return out, x


def test_every_sample_is_answered_once_by_the_join_as_the_bundle_computes_it(branched_bundle, tmp_path: Path) -> None:
    bundle, x = branched_bundle
    expected = run_bundle(bundle, x, "onnx")[0]
    report = serve_local(bundle, [xi.numpy() for xi in x], LocalRun(**FAST), out=tmp_path / "runtime.json")
    assert_gone(report["_pids"])
    assert report["samples"] == report["answered"] == len(x) and report["lost"] == report["failed"] == 0
    assert report["duplicates"] == 0 and report["answered_at"] == {"sink": len(x)}
    for i in range(len(x)):
        np.testing.assert_allclose(report["_logits"][i][0], expected[i].numpy(), atol=1e-5)
    loaded = RuntimeReport.load(tmp_path / "runtime.json")
    # every device ran every sample once (the root's compute is counted once, not once per branch)
    assert [(d.device, d.samples) for d in loaded.devices] == [(n, len(x)) for n in
                                                               ("src", "root", "b0", "b1", "join", "sink")]
    # every link of the mesh, the two root -> branch and branch -> join links included, carried every sample
    assert [(ln.src, ln.dst, ln.samples) for ln in loaded.links] == [
        (a, b, len(x)) for a, b in (("src", "root"), ("root", "b0"), ("root", "b1"), ("b0", "join"), ("b1", "join"),
                                    ("join", "sink"))]
    assert all(ln.measured_wire_mean_ms is not None for ln in loaded.links)
    assert loaded.end_to_end.predicted_mean_ms == pytest.approx(loaded.end_to_end.plan_worst_ms)


def test_the_graph_follows_the_sources_and_refuses_the_input_past_the_first_part(branched_bundle) -> None:
    from jmsnas.errors import BundleError
    from jmsnas.runtime.bundle import read_manifest
    from jmsnas.runtime.graph import PartGraph

    parts = read_manifest(branched_bundle[0]).parts
    g = PartGraph.of(parts)
    assert g.branched and [g.consumer_parts(m) for m in range(6)] == [[1], [2, 3], [4], [4], [5], []]
    assert g.producers == ((-1,), (0,), (1,), (1,), (2, 3), (4,))
    assert g.consumers[4] == ((5, ((0, 0),)),)  # the join's output 0 is the sink's input slot 0
    bad = [parts[0], parts[1].model_copy(update={"sources": [(-1, 0)]})]
    with pytest.raises(BundleError, match="only the first part"):
        PartGraph.of(bad)


def test_a_join_runs_once_all_branches_came_and_gives_up_a_sample_past_its_deadline() -> None:
    from jmsnas.runtime.join import Gather
    from jmsnas.runtime.transport import Header, Message, TensorMeta

    def msg(sample: int, name: str, src: int) -> Message:
        head = Header(v=1, kind="sample", run="r", sample=sample, hops=[{"part": src, "link_start": 0.0}],
                      tensors=[TensorMeta(name=name, shape=[1, 2], dtype="float32")])
        return Message(head, (np.ones((1, 2), np.float32),))

    now = [0.0]
    g = Gather(["p2.out0", "p3.out0"], deadline_s=1.0, clock=lambda: now[0])
    assert g.add(msg(0, "p2.out0", 2), 0.1, 0.0) is None
    done = g.add(msg(0, "p3.out0", 3), 0.2, 0.0)
    assert done is not None and sorted(done.arrays) == ["p2.out0", "p3.out0"] and len(done.arrivals) == 2
    assert g.add(msg(1, "p2.out0", 2), 0.3, 0.0) is None
    now[0] = 0.5
    assert g.expire() == []
    now[0] = 1.5
    assert g.expire() == [("r", 1, 0)] and not g.pending


def test_lost_and_late_branch_sends_are_resent_and_the_join_runs_each_sample_once(branched_bundle,
                                                                                  tmp_path: Path) -> None:
    bundle, x = branched_bundle
    expected = run_bundle(bundle, x, "onnx")[0]
    run = LocalRun(drop={"root": frozenset({1})}, stall={"b0": frozenset({3})}, **FAST)  # root: both branches
    report = serve_local(bundle, [xi.numpy() for xi in x], run, out=tmp_path / "runtime.json")
    assert_gone(report["_pids"])
    assert report["answered"] == len(x) and report["lost"] == report["failed"] == report["duplicates"] == 0
    assert report["refed"] == 0  # each lost or late send was resent by its own lane, not re-fed
    for i in range(len(x)):
        np.testing.assert_allclose(report["_logits"][i][0], expected[i].numpy(), atol=1e-5)
    join_log = (tmp_path / "runtime_logs" / "04_join.log").read_text()
    assert "sample 3 (attempt 0) came again" in join_log  # b0's late copy arrived and was not run again
