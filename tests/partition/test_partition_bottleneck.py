"""Learned bottleneck (paper 004): shapes, training helps, 1/64 payload, exported bundle agrees with the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from partition_specs import tiny_arch_spec

from jmsnas.partition.bottleneck import bottleneck_codec, fit_bottleneck, make_bottleneck
from jmsnas.partition.bundle import verify_bundle
from jmsnas.partition.compress import build_codec, calibrate
from jmsnas.partition.export import calibrate_plan, export_bundle
from jmsnas.partition.plan import plan_sequential
from jmsnas.partition.split import run_segments, split_archnet
from jmsnas.space.arch import build_model
from jmsnas.space.macs import arch_descriptors
from jmsnas.topology import Device, Link, build_topology


@pytest.mark.parametrize("shape", [(8, 16, 16), (8, 15, 9), (6, 11)])
def test_decoder_restores_the_cut_shape(shape: tuple[int, ...]) -> None:
    encoder, decoder = make_bottleneck(shape, reduction=4, nonnegative=False)
    x = torch.randn(2, *shape)
    (code,) = encoder((x,))
    assert code.shape[1] == 2 and all(c == (s + 1) // 2 for c, s in zip(code.shape[2:], shape[1:], strict=True))
    assert decoder((code,))[0].shape == x.shape


def test_trained_bottleneck_exports_with_a_64x_smaller_payload(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = tiny_arch_spec()
    model = build_model(spec).eval()
    with torch.no_grad():  # spread the logits of the random network so that top-1 means something
        model.head.classifier.weight.mul_(300.0)
    out_bytes = [4.0 * d.output_numel for d in arch_descriptors(spec)]
    lat = {"d0": [1.0, 90.0, 90.0, 90.0], "d1": [90.0, 1.0, 1.0, 1.0]}
    topo = build_topology("chain", [Device("d0"), Device("d1")], [Link("d0", "d1", 10.0)])
    plan = plan_sequential(lat, out_bytes, 4.0 * 3 * 16 * 16, topo, compressors={"d0": "bottleneck"})
    assert plan.boundaries() == [0, 1, 4] and plan.cuts[0].payload_bytes == 4 * 16 * 16 * 4 / 64
    segments = split_archnet(model, plan.boundaries())
    train = [torch.randn(8, 3, 16, 16) for _ in range(8)]
    samples = [run_segments(segments[:1], x) for x in train]

    encoder, decoder = make_bottleneck((4, 16, 16), reduction=4, nonnegative=True)  # stem ends with ReLU6
    untrained = _max_logit_error(*bottleneck_codec(encoder, decoder, samples, 4)[:2], segments, model)
    history = fit_bottleneck(encoder, decoder, segments[:1], segments[1:], model, train, epochs=10)
    assert history[-1] < history[0] / 3
    assert all(p.grad is None for p in model.parameters())  # the network itself did not learn
    enc, dec, params = bottleneck_codec(encoder, decoder, samples, 4)
    assert _max_logit_error(enc, dec, segments, model) < untrained

    plan = calibrate_plan(plan.with_compressor_params([params]), segments, train[:1])
    assert plan.cuts[0].compressor_params == params
    export_bundle(segments, plan, train[0], tmp_path / "bundle", codecs={0: (enc, dec)})
    wire = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["parts"][0]["outputs"]
    assert wire == [{"name": "c0.t0", "shape": [None, 1, 8, 8], "example_shape": [8, 1, 8, 8], "dtype": "uint8"}]
    check = verify_bundle(tmp_path / "bundle", model, [torch.randn(16, 3, 16, 16)], "onnx")
    assert check.top1_agreement >= 0.9


def test_learned_compressor_cannot_be_built_from_parameters() -> None:
    with pytest.raises(ValueError, match="learned"):
        build_codec("bottleneck", {"reduction": 4})
    with pytest.raises(ValueError, match="learned"):
        calibrate("bottleneck", [])


def _max_logit_error(enc: torch.nn.Module, dec: torch.nn.Module, segments: list, model: torch.nn.Module) -> float:
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (logits,) = run_segments(segments[1:], *dec(enc(run_segments(segments[:1], x))))
        return float((logits - model(x)).abs().max())
