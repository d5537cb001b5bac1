"""MAC and parameter counts: hand arithmetic, and analytic counts vs. hooks on real modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.space.macs import (
    arch_descriptors,
    arch_macs,
    count_macs,
    describe_head,
    describe_op,
    describe_stem,
    head_macs,
    op_macs,
    stem_macs,
)
from jmsnas.space.ops import CANDIDATES, Head, Stem, allowed, build_op
from jmsnas.space.spec import load_search_space

ROOT = Path(__file__).resolve().parents[2]


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_hand_computed_macs() -> None:
    # mb_k3_e6, 1-D, 4 -> 8 channels, stride 2, L=16: hidden 4*6 = 24, output L = 8
    # conv_pw 4*24*16 = 1536; conv_dw 24*3*8 = 576; conv_pwl 24*8*8 = 1536
    assert op_macs("mb_k3_e6", 4, 8, 2, (16,)) == 1536 + 576 + 1536
    # mb_k5_e3_sc, 2-D, 8 -> 8 channels, stride 1, 4x4: hidden 24
    # conv_pw 8*24*16 = 3072; conv_dw 24*25*16 = 9600; conv_pwl 24*8*16 = 3072
    assert op_macs("mb_k5_e3_sc", 8, 8, 1, (4, 4)) == 3072 + 9600 + 3072
    assert op_macs("identity", 8, 8, 1, (4, 4)) == 0
    # stem 1 -> 4, k3, stride 1, L=16: 4*16*1*3 = 192
    assert stem_macs(1, 4, 3, 1, (16,)) == 192
    # head 8 -> 16 (1x1) on L=8, then 16 -> 10 linear: 8*16*8 + 16*10 = 1184
    assert head_macs(8, 16, 10, (8,)) == 1184


SHAPES = [(6, 6, 1, 7), (6, 10, 2, 7)]  # (in, out, stride, size): shape-preserving and down-sampling


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_analytic_counts_match_real_module(name: str, dims: int) -> None:
    for cin, cout, stride, size in SHAPES:
        if not allowed(name, cin, cout, stride):
            continue
        in_size = (size,) * dims
        op = build_op(name, cin, cout, stride, dims)
        desc = describe_op(name, cin, cout, stride, in_size, dims)
        assert op_macs(name, cin, cout, stride, in_size) == count_macs(op, (cin, *in_size)) == desc.macs
        assert desc.params == _params(op)
        out = op(torch.zeros(1, cin, *in_size))
        assert (desc.out_channels, *desc.out_size) == tuple(out.shape[1:])
        assert (desc.input_numel, desc.output_numel) == (cin * size**dims, out.numel())


@pytest.mark.parametrize("dims", [1, 2])
def test_stem_head_counts_match_real_module(dims: int) -> None:
    in_size = (9,) * dims
    stem = Stem(3, 8, 5, 2, dims)
    desc = describe_stem(3, 8, 5, 2, in_size, dims)
    assert desc.macs == count_macs(stem, (3, *in_size)) and desc.params == _params(stem)
    assert desc.out_size == (5,) * dims
    head = Head(8, 16, 10, 0.0, dims)
    desc = describe_head(8, 16, 10, desc.out_size, dims)
    assert desc.macs == count_macs(head, (8, *desc.in_size)) and desc.params == _params(head)
    assert desc.output_numel == 10


@pytest.mark.parametrize("space_file", ["tiny_1d.yaml", "tiny_2d.yaml", "mbconv13_1d.yaml"])
def test_arch_macs_per_layer(space_file: str) -> None:
    space = load_search_space(ROOT / "search_spaces" / space_file)
    choices = [slot.candidates[i % len(slot.candidates)] for i, slot in enumerate(space.layers())]
    spec = ArchSpec.from_choices(space, choices, num_classes=10)
    model = build_model(spec)
    per_layer = arch_macs(spec)
    shapes = [spec.input_shape] + [(d.out_channels, *d.out_size) for d in arch_descriptors(spec)[:-1]]
    assert per_layer == [count_macs(layer, shape) for layer, shape in zip(model.layers(), shapes, strict=True)]
    assert sum(per_layer) == count_macs(model, spec.input_shape)


def test_features_are_numeric() -> None:
    feats = describe_op("mb_k7_e3", 4, 8, 2, (9,), 1).as_features()
    assert all(isinstance(v, float) for v in feats.values())
    assert feats["kernel_size"] == 7.0 and feats["shortcut"] == 0.0 and feats["kind_mbconv"] == 1.0
    assert feats["macs"] == float(op_macs("mb_k7_e3", 4, 8, 2, (9,)))
    assert describe_op("identity", 4, 4, 1, (9,), 1).as_features()["kind_identity"] == 1.0
    with pytest.raises(ValueError, match="not a candidate allowed"):
        describe_op("identity", 4, 4, 2, (9,), 1)


def test_counting_macs_leaves_every_submodule_in_its_own_mode() -> None:
    # a wrapper in training mode around layers in eval mode (a split segment): counting must not flip them
    inner = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.BatchNorm1d(2)).eval()
    wrapper = torch.nn.Sequential(inner)
    wrapper.training = True
    count_macs(wrapper, (1, 8))
    assert wrapper.training and not inner.training and not inner[1].training
