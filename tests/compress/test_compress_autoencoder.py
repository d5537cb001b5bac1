"""The autoencoder compressor (paper 004): shapes, both training steps, 1/64 payload, exported bundle agrees."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from partition_specs import TemplateTask, tiny_arch_spec, trained_tiny_model

from jmsnas.compress.autoencoder import fit_autoencoder, make_autoencoder
from jmsnas.compress.quantize import build_codec, calibrate
from jmsnas.export.split import run_segments, split_archnet
from jmsnas.export.writer import calibrate_plan, export_bundle
from jmsnas.plan.planners import plan_sequential
from jmsnas.runtime.bundle import verify_bundle
from jmsnas.space.macs import arch_descriptors
from jmsnas.topology import Device, Link, build_topology


@pytest.mark.parametrize("shape", [(8, 16, 16), (8, 15, 9), (6, 11)])
def test_decoder_restores_the_cut_shape(shape: tuple[int, ...]) -> None:
    encoder, decoder = make_autoencoder(shape, reduction=4, nonnegative=False)
    x = torch.randn(2, *shape)
    (code,) = encoder((x,))
    assert code.shape[1] == 2 and all(c == (s + 1) // 2 for c, s in zip(code.shape[2:], shape[1:], strict=True))
    assert decoder((code,))[0].shape == x.shape


def test_trained_autoencoder_exports_with_a_64x_smaller_payload(tmp_path: Path, caplog) -> None:
    task = TemplateTask()
    spec = tiny_arch_spec()
    model = trained_tiny_model(task)  # trained, so that its top-1 depends on the input
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    out_bytes = [4.0 * d.output_numel for d in arch_descriptors(spec)]
    lat = {"d0": [1.0, 90.0, 90.0, 90.0], "d1": [90.0, 1.0, 1.0, 1.0]}
    topo = build_topology("chain", [Device("d0"), Device("d1")], [Link("d0", "d1", 10.0)])
    plan = plan_sequential(lat, out_bytes, 4.0 * 3 * 16 * 16, topo, compressors={"d0": "autoencoder"})
    assert plan.boundaries() == [0, 1, 4] and plan.cuts[0].payload_bytes == 4 * 16 * 16 * 4 / 64
    segments = split_archnet(model, plan.boundaries())
    train = [task.batch(16)[0] for _ in range(12)]

    encoder, decoder = make_autoencoder((4, 16, 16), reduction=4, nonnegative=True)  # stem ends with ReLU6
    with caplog.at_level(logging.INFO, logger="jmsnas.compress.autoencoder"):
        fit = fit_autoencoder(encoder, decoder, segments[:1], segments[1:], model, train, epochs=10, finetune_epochs=3)
    assert fit.history[-1] < fit.history[0] / 3
    progress = [r.getMessage() for r in caplog.records if r.name == "jmsnas.compress.autoencoder"]
    assert [m.split(",")[0] for m in progress[:10]] == [f"autoencoder: epoch {k}/10" for k in range(1, 11)]
    assert [float(m.split("loss ")[1].split()[0]) for m in progress[:10]] == [float(f"{h:.4g}") for h in fit.history]
    assert fit.finetune_history[-1] <= fit.finetune_history[0]  # step 2 recovers what rounding cost
    # the unsplit model (the teacher) is untouched; the receiving side learned as a copy
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(fit.back[0].state_dict().values(),
                                                     segments[1].state_dict().values(), strict=True))

    tuned = [segments[0], *fit.back]
    plan = calibrate_plan(plan.with_compressor_params([fit.params]), tuned, train[:1])
    assert plan.cuts[0].compressor_params == fit.params
    export_bundle(tuned, plan, train[0], tmp_path / "bundle", codecs={0: (fit.encoder, fit.decoder)})
    wire = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["parts"][0]["outputs"]
    assert wire == [{"name": "c0.t0", "shape": [None, 1, 8, 8], "example_shape": [16, 1, 8, 8], "dtype": "uint8"}]
    x = task.batch(256)[0]
    in_process = _Pipeline(segments[0], fit.encoder, fit.decoder, fit.back)
    exported = verify_bundle(tmp_path / "bundle", in_process, [x], "onnx")
    assert exported.top1_agreement == 1.0 and exported.max_abs_diff < 1e-3  # the bundle is the split pipeline
    untrained = _Pipeline(segments[0], *make_autoencoder((4, 16, 16), reduction=4), segments[1:])
    with torch.no_grad():
        agree = (in_process(x).argmax(1) == model(x).argmax(1)).float().mean()
        before = (untrained.eval()(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree >= 0.7 and agree > before + 0.3  # ...and on unseen inputs it mostly agrees with the unsplit model


class _Pipeline(torch.nn.Module):
    def __init__(self, front, encoder, decoder, back) -> None:
        super().__init__()
        self.front, self.encoder, self.decoder = front, encoder, decoder
        self.back = torch.nn.ModuleList(back)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_segments(list(self.back), *self.decoder(self.encoder(run_segments([self.front], x))))[0]


def test_learned_compressor_cannot_be_built_from_parameters() -> None:
    with pytest.raises(ValueError, match="learned"):
        build_codec("autoencoder", {"reduction": 4})
    with pytest.raises(ValueError, match="learned"):
        calibrate("distilled_bottleneck", [])


def test_step_two_fine_tuning_recovers_accuracy_lost_to_two_bit_codes() -> None:
    task = TemplateTask()
    model = trained_tiny_model(task)
    segments = split_archnet(model, [0, 1, 4])
    train = [task.batch(16)[0] for _ in range(6)]
    encoder, decoder = make_autoencoder((4, 16, 16), reduction=2, nonnegative=True)
    fit = fit_autoencoder(encoder, decoder, segments[:1], segments[1:], model, train, epochs=8, finetune_epochs=6,
                          bits=2)
    # with 2-bit codes the first fine-tuning epoch starts from the quantised loss and improves on it
    assert fit.finetune_history[-1] < fit.finetune_history[0]
