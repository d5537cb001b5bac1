"""The distilled bottleneck (paper 002): student shapes, the SSE by hand, a trained student exports and agrees."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from partition_specs import TemplateTask, trained_tiny_model

from jmsnas.compress.distilled import fit_student_head, halvings, make_student_head, sse_loss
from jmsnas.export.split import run_segments, split_archnet
from jmsnas.export.writer import calibrate_plan, export_bundle
from jmsnas.plan.planners import plan_sequential
from jmsnas.runtime.bundle import verify_bundle
from jmsnas.space.macs import count_macs
from jmsnas.topology import Device, Link, build_topology


@pytest.mark.parametrize(
    ("input_shape", "target_shape"),
    [((3, 32, 32), (16, 8, 8)), ((3, 15, 9), (8, 8, 5)), ((1, 40), (12, 20)), ((3, 8, 8), (4, 8, 8))],
)
def test_student_code_is_half_the_target_resolution_and_decoder_restores_it(input_shape, target_shape) -> None:
    encoder, decoder = make_student_head(input_shape, target_shape, channel_fraction=0.25)
    (code,) = encoder(torch.randn(2, *input_shape))
    assert code.shape[1] == -(-target_shape[0] // 4)
    assert tuple(code.shape[2:]) == tuple(-(-s // 2) for s in target_shape[1:])
    assert decoder((code,))[0].shape == (2, *target_shape)


def test_halvings_and_unreachable_cuts() -> None:
    assert halvings((32, 32), (4, 4)) == 3 and halvings((15,), (8,)) == 1 and halvings((7,), (7,)) == 0
    with pytest.raises(ValueError, match="halved a whole number of times"):
        make_student_head((3, 32, 32), (8, 12, 12))


def test_sse_is_paper_002_eq_1_per_sample() -> None:
    s = torch.tensor([[[1.0, 2.0]], [[0.0, -1.0]]])
    t = torch.tensor([[[0.0, 0.0]], [[3.0, 1.0]]])
    # sample 1: 1 + 4 = 5; sample 2: 9 + 4 = 13; sum 18 over a batch of 2
    assert sse_loss(s, t).item() == pytest.approx(9.0)


def test_trained_student_head_replaces_the_head_sends_its_code_and_exports(tmp_path: Path, caplog) -> None:
    task = TemplateTask()
    model = trained_tiny_model(task)
    segments = split_archnet(model, [0, 2, 4])  # teacher head: stem + the stride-2 block -> (8, 8, 8)
    encoder, decoder = make_student_head((3, 16, 16), (8, 8, 8), channel_fraction=0.25, nonnegative=False)
    train = [task.batch(16)[0] for _ in range(12)]
    with caplog.at_level(logging.INFO, logger="jmsnas.compress.distilled"):
        fit = fit_student_head(encoder, decoder, segments[:1], train, epochs=15, finetune_epochs=3, bits=4)
    assert fit.history[-1] < fit.history[0] / 3
    progress = [r.getMessage() for r in caplog.records if r.name == "jmsnas.compress.distilled"]
    assert [m.split(",")[0] for m in progress[:15]] == [f"student head: epoch {k}/15" for k in range(1, 16)]
    assert fit.payload_bytes == 2 * 4 * 4 * 4 // 8  # 2 channels x 4 x 4 at 4 bits
    assert count_macs(encoder, (3, 16, 16)) < count_macs(segments[0], (3, 16, 16)) / 2

    topo = build_topology("chain", [Device("d0"), Device("d1")], [Link("d0", "d1", 1.0)])
    plan = plan_sequential({"d0": [1.0, 1.0, 9.0, 9.0], "d1": [9.0, 9.0, 1.0, 1.0]}, [1e3, 2048.0, 2048.0, 20.0],
                           3 * 16 * 16 * 4.0, topo, compressors={"d0": "distilled_bottleneck"})
    assert plan.boundaries() == [0, 2, 4]
    parts = [encoder, segments[1]]
    plan = calibrate_plan(plan.with_compressor_params([fit.params]), parts, train[:1])
    export_bundle(parts, plan, train[0], tmp_path / "bundle", codecs={0: fit.codec})
    wire = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["parts"][0]["outputs"]
    assert wire[0]["dtype"] == "uint8" and wire[0]["shape"] == [None, fit.payload_bytes]

    x = task.batch(256)[0]
    in_process = _Student(encoder, fit.codec, segments[1])
    exported = verify_bundle(tmp_path / "bundle", in_process, [x], "onnx")
    assert exported.top1_agreement == 1.0 and exported.max_abs_diff < 1e-3
    with torch.no_grad():
        agree = (in_process(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree >= 0.7


class _Student(torch.nn.Module):
    def __init__(self, encoder, codec, tail) -> None:
        super().__init__()
        self.encoder, self.quantize, self.decode, self.tail = encoder, codec[0], codec[1], tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_segments([self.tail], *self.decode(self.quantize(self.encoder(x))))[0]
