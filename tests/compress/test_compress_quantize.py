"""Compressors: 8-bit affine quantisation error bound, payload size, pass-through."""

from __future__ import annotations

import pytest
import torch

from jmsnas.compress.quantize import Compressor, as_compressor, build_codec, calibrate


def test_quantize_error_is_at_most_half_a_step_and_payload_is_numel() -> None:
    torch.manual_seed(0)
    calib = [(torch.randn(4, 8, 5) * 3 + 1, torch.rand(4, 16) * 7) for _ in range(3)]
    params = calibrate("quantize", calib)
    encoder, decoder = build_codec("quantize", params)
    lo0 = min(float(c[0].min()) for c in calib)
    hi0 = max(float(c[0].max()) for c in calib)
    x = (torch.rand(2, 8, 5) * (hi0 - lo0) + lo0, torch.rand(2, 16) * 7)
    wire = encoder(x)
    assert [q.dtype for q in wire] == [torch.uint8, torch.uint8]
    assert sum(q.numel() * q.element_size() for q in wire) == sum(t.numel() for t in x)
    back = decoder(wire)
    for j, (orig, rec) in enumerate(zip(x, back, strict=True)):
        scale = params["scales"][j]
        assert (orig - rec).abs().max() <= scale / 2 * (1 + 1e-5) + 1e-6
        assert scale == pytest.approx(
            (max(0.0, max(float(c[j].max()) for c in calib)) - min(0.0, min(float(c[j].min()) for c in calib))) / 255
        )
    assert as_compressor("quantize").wire_bytes(4.0 * 80) == 80
    assert as_compressor("none").wire_bytes(320.0) == 320.0


def test_zero_is_exact_and_values_outside_the_range_saturate() -> None:
    params = calibrate("quantize", [(torch.tensor([-1.0, 3.0]),)])
    encoder, decoder = build_codec("quantize", params)
    (rec,) = decoder(encoder((torch.tensor([0.0, 100.0, -100.0]),)))
    assert rec[0] == 0.0
    assert rec[1] == pytest.approx(3.0, abs=params["scales"][0] / 2) and rec[2] == pytest.approx(-1.0, abs=0.01)


def test_none_passes_tensors_through_and_errors_are_clear() -> None:
    encoder, decoder = build_codec("none", calibrate("none", []))
    xs = (torch.randn(3), torch.randn(2, 2))
    assert all(a is b for a, b in zip(decoder(encoder(xs)), xs, strict=True))
    with pytest.raises(ValueError, match="unknown compressor 'zip'"):
        as_compressor("zip")
    with pytest.raises(ValueError, match="calibrate first"):
        build_codec("quantize", {})


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("shape", [(3, 5), (7,), (2, 3, 3)])
def test_packed_codes_round_trip_and_cost_numel_times_bits(bits: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(bits)
    calib = [(torch.rand(4, *shape) * 6 - 2,) for _ in range(2)]
    params = calibrate("quantize", calib, bits=bits)
    encoder, decoder = build_codec("quantize", params)
    x = calib[0][0]
    (wire,) = encoder((x,))
    numel = torch.tensor(shape).prod().item()
    assert wire.dtype == torch.uint8 and wire.shape == (4, -(-numel * bits // 8))
    (rec,) = decoder((wire,))
    # slow reference: quantise each element on its own, no packing
    scale, zp, levels = params["scales"][0], params["zero_points"][0], 2**bits - 1
    expected = torch.tensor([(min(levels, max(0, round(v / scale) + zp)) - zp) * scale for v in x.flatten().tolist()])
    assert torch.allclose(rec.flatten(), expected, atol=1e-6)
    assert (rec - x).abs().max() <= scale / 2 * (1 + 1e-5) + 1e-6
    assert Compressor("quantize", bits=bits).wire_bytes(4.0 * 80) == 80 * bits / 8


def test_learned_kinds_estimate_their_payload_from_their_settings() -> None:
    ae = Compressor("autoencoder", bits=8, channel_fraction=0.25, positions_fraction=0.25)
    assert ae.wire_bytes(4.0 * 64 * 16 * 16) == 64 * 16 * 16 / 16
    db = Compressor("distilled_bottleneck", bits=4, channel_fraction=0.125, positions_fraction=0.5)
    assert db.wire_bytes(4.0 * 32 * 40) == 32 * 40 * 0.125 * 0.5 / 2
    with pytest.raises(ValueError, match="bits must be one of"):
        Compressor("quantize", bits=3)
