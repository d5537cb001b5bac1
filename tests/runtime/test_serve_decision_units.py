"""Decision units (paper 000) when served: devices decide as in process, and answer alone without a link."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_serve import FAST, assert_gone, build_exit_bundle

from jmsnas.exits.decision import DecisionUnit
from jmsnas.exits.meta import FEATURES
from jmsnas.runtime.bundle import load_bundle
from jmsnas.runtime.local import Kill, LocalRun, serve_local


@pytest.fixture(scope="module")
def unit_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """The runtime tests' three-device net with a decision unit (not the top-1 probability) at d0's exit.

    One linear layer on the meta-features: its certainty rises with the margin and falls with the top-1
    probability, so its ranking is not max-softmax's.
    """
    weights = np.zeros((1, len(FEATURES)), dtype=np.float32)
    weights[0, 0], weights[0, 1] = -40.0, 60.0
    unit = DecisionUnit("mlp", layers=[(weights, np.zeros(1, dtype=np.float32))])
    return build_exit_bundle(tmp_path_factory.mktemp("units") / "bundle", unit=unit)


def test_the_unit_decides_and_without_its_link_the_client_answers_alone(unit_bundle, tmp_path: Path) -> None:
    bundle, x = unit_bundle
    b = load_bundle(bundle, "onnx")
    assert b.spec.parts[0].exit.confidence == "decision_unit"
    expected, exit_index = b.run_exits(x)
    with torch.no_grad():
        logits0 = b.runners[0]((x,))[0]
    threshold = b.spec.parts[0].exit.threshold
    top1 = torch.softmax(logits0.double(), -1).amax(-1) >= threshold
    assert (exit_index == 0).tolist() != top1.tolist()  # the unit, not the top-1 probability, decides here
    going_on = [int(i) for i in torch.nonzero(exit_index == 1).flatten()]
    k = going_on[1]  # d1 is killed for good before sample k: d0 can reach no one after it
    run = LocalRun(kill=(Kill("d1", k),), **FAST)
    report = serve_local(bundle, [xi.numpy() for xi in x], run, out=tmp_path / "runtime.json")
    assert_gone(report["_pids"])
    assert report["samples"] == report["answered"] == len(x) and report["lost"] == 0 and report["failed"] == 0
    for row in report["per_sample"]:
        i = row["sample"]
        if i < k or exit_index[i] == 0:  # as in process: the unit's decision, then d2's answer or d0's exit
            assert (row["device"], row["exit"], row["fell_back"]) == (("d0", 0, False) if exit_index[i] == 0
                                                                      else ("d2", 1, False)), row
            np.testing.assert_allclose(report["_logits"][i][0], expected[i].numpy(), atol=1e-5)
        else:  # the unit sends it on, the link is gone: d0 answers alone from its own exit
            assert (row["device"], row["exit"], row["fell_back"]) == ("d0", 0, True), row
            np.testing.assert_allclose(report["_logits"][i][0], logits0[i].numpy(), atol=1e-5)
    assert report["fell_back"] == sum(1 for i in going_on if i >= k) >= 1
