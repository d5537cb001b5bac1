"""Candidate ops: registry, placement rules, shapes and the residual shortcut."""

from __future__ import annotations

import pytest
import torch

from jmsnas.space.ops import CANDIDATES, Head, Identity, MBConv, Stem, allowed, build_op

# Written out by hand from paper 003, Sec. III-A (not generated the way ops.py generates it).
PAPER_13 = {
    "mb_k3_e3", "mb_k3_e3_sc", "mb_k3_e6", "mb_k3_e6_sc",
    "mb_k5_e3", "mb_k5_e3_sc", "mb_k5_e6", "mb_k5_e6_sc",
    "mb_k7_e3", "mb_k7_e3_sc", "mb_k7_e6", "mb_k7_e6_sc",
    "identity",
}  # fmt: skip


def _x(dims: int, channels: int, size: int) -> torch.Tensor:
    return torch.randn(2, channels, *([size] * dims))


def test_registry_is_the_papers_13() -> None:
    assert set(CANDIDATES) == PAPER_13
    op = CANDIDATES["mb_k5_e6_sc"]
    assert (op.kind, op.kernel_size, op.expansion, op.shortcut) == ("mbconv", 5, 6, True)
    assert CANDIDATES["identity"].kind == "identity"


@pytest.mark.parametrize(
    ("cin", "cout", "stride", "expected"),
    [(8, 8, 1, 13), (8, 16, 1, 6), (8, 8, 2, 6), (8, 16, 2, 6)],
)
def test_allowed_counts(cin: int, cout: int, stride: int, expected: int) -> None:
    names = [n for n in CANDIDATES if allowed(n, cin, cout, stride)]
    assert len(names) == expected
    if expected == 6:
        assert "identity" not in names and not any(n.endswith("_sc") for n in names)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_output_shapes(name: str, dims: int) -> None:
    same = build_op(name, 4, 4, 1, dims)
    assert same(_x(dims, 4, 9)).shape == (2, 4, *([9] * dims))
    if allowed(name, 4, 8, 2):
        down = build_op(name, 4, 8, 2, dims)
        assert down(_x(dims, 4, 9)).shape == (2, 8, *([5] * dims))  # ceil(9 / 2) = 5


@pytest.mark.parametrize("dims", [1, 2])
def test_shortcut_really_adds_input(dims: int) -> None:
    x = _x(dims, 4, 6)
    for shortcut, expected in [(True, x), (False, torch.zeros_like(x))]:
        op = MBConv(4, 4, 3, 3, 1, shortcut, dims).eval()
        torch.nn.init.zeros_(op.bn3.weight)
        torch.nn.init.zeros_(op.bn3.bias)
        torch.testing.assert_close(op(x), expected)


def test_mbconv_layers_and_bad_arguments() -> None:
    op = MBConv(4, 8, 5, 6, 2, False, 2)
    assert op.conv_pw.out_channels == 24 and op.conv_dw.groups == 24 and op.conv_dw.kernel_size == (5, 5)
    assert op.conv_dw.stride == (2, 2) and op.conv_pwl.out_channels == 8
    with pytest.raises(ValueError, match="shortcut"):
        MBConv(4, 4, 3, 3, 2, True, 1)
    with pytest.raises(ValueError, match="shortcut"):
        MBConv(4, 8, 3, 3, 1, True, 1)


def test_build_op_rejects_bad_placement() -> None:
    assert isinstance(build_op("identity", 4, 4, 1, 1), Identity)
    with pytest.raises(ValueError, match="identity"):
        build_op("identity", 4, 4, 2, 1)
    with pytest.raises(ValueError, match="mb_k3_e3_sc"):
        build_op("mb_k3_e3_sc", 4, 8, 1, 2)
    with pytest.raises(ValueError, match="valid"):
        build_op("mb_k9_e3", 4, 4, 1, 1)


@pytest.mark.parametrize("dims", [1, 2])
def test_stem_and_head_shapes(dims: int) -> None:
    stem = Stem(3, 8, 5, 2, dims)
    y = stem(_x(dims, 3, 10))
    assert y.shape == (2, 8, *([5] * dims))
    head = Head(8, 16, 10, 0.2, dims)
    assert head(y).shape == (2, 10)
