"""Splitting models into per-device segments: running them in order reproduces the whole model."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from partition_specs import tiny_arch_spec

from jmsnas.export.split import (
    cut_tensors,
    live_values,
    run_segments,
    split_archnet,
    split_graph,
    trace_units,
    unit_output_bytes,
    units,
)
from jmsnas.plan.artifact import TensorSpec
from jmsnas.space.arch import build_model


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _unit_index(gm: torch.fx.GraphModule, name: str) -> int:
    return [n.name for n in units(gm)].index(name)


@pytest.mark.parametrize("boundaries", [[0, 4], [0, 1, 3, 4], [0, 0, 2, 4], [0, 2, 4, 4]])
def test_archnet_segments_reproduce_logits(boundaries: list[int]) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_arch_spec()).eval()
    x = torch.randn(2, 3, 16, 16)
    segments = split_archnet(model, boundaries)
    assert len(segments) == len(boundaries) - 1
    (logits,) = run_segments(segments, x)
    assert torch.allclose(logits, model(x), atol=1e-5, rtol=0)


def test_resnet_cut_inside_residual_block_carries_two_tensors(resnet: torch.nn.Module) -> None:
    gm = trace_units(resnet)
    n = len(units(gm))
    inside = _unit_index(gm, "layer1_0_conv1") + 1  # after the first conv of the first block
    later = _unit_index(gm, "layer2_1_bn1") + 1
    boundaries = [0, inside, later, n]
    x = torch.randn(1, 3, 32, 32)
    segments = split_graph(resnet, boundaries)
    first = segments[0](x)
    assert [v.name for v in live_values(gm, inside)] == ["maxpool", "layer1_0_conv1"]
    assert len(first) == 2  # the block's input (for the skip) and the conv output
    specs = cut_tensors(resnet, x, boundaries)
    assert specs[0] == [TensorSpec("maxpool", (1, 64, 8, 8)), TensorSpec("layer1_0_conv1", (1, 64, 8, 8))]
    assert [tuple(t.shape) for t in first] == [s.shape for s in specs[0]]
    (logits,) = run_segments(segments, x)
    assert (logits - resnet(x)).abs().max() <= 1e-5


def test_timm_model_splits_anywhere_and_reproduces_logits() -> None:
    """A timm model a user brings: every cut position of its trace (some inside residual blocks) is exact."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10).eval()
    gm = trace_units(model)
    n = len(units(gm))
    x = torch.randn(2, 3, 32, 32)
    sizes = unit_output_bytes(model, x[:1])
    cuttable = [b for b in range(1, n) if math.isfinite(sizes[b - 1])]  # the others would send a non-tensor
    assert len(cuttable) > n // 2
    multi = [b for b in cuttable if len(live_values(gm, b)) > 1]
    assert multi  # cuts inside residual blocks exist and carry every live tensor
    spread = [cuttable[len(cuttable) * k // 4] for k in (1, 2, 3)]
    with torch.no_grad():
        expected = model(x)
        for boundaries in ([0, multi[0], multi[len(multi) // 2], n], [0, *spread, n]):
            segments = split_graph(gm, boundaries)
            sent = segments[0](x[:1])
            assert sum(v.numel() * v.element_size() for v in sent) == sizes[boundaries[1] - 1]
            torch.testing.assert_close(run_segments(segments, x)[0], expected, rtol=0, atol=1e-5)


def test_unit_output_bytes_counts_every_live_tensor(resnet: torch.nn.Module) -> None:
    gm = trace_units(resnet)
    x = torch.randn(1, 3, 32, 32)
    sizes = unit_output_bytes(resnet, x)
    assert len(sizes) == len(units(gm))
    inside = _unit_index(gm, "layer1_0_conv1") + 1
    assert sizes[inside - 1] == 2 * 64 * 8 * 8 * 4
    assert sizes[-1] == 10 * 4


def test_bad_boundaries_are_rejected() -> None:
    model = build_model(tiny_arch_spec())
    with pytest.raises(ValueError, match="non-decreasing"):
        split_archnet(model, [0, 3, 2, 4])
    with pytest.raises(ValueError, match="from 0 to 4"):
        split_archnet(model, [0, 3])


class SizeUser(torch.nn.Module):
    """Uses ``x.size(0)`` after a conv: a cut between them would carry an int."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        return self.conv(x).view(n, -1)


def test_cut_carrying_a_non_tensor_is_never_chosen() -> None:
    model, x = SizeUser(), torch.randn(2, 3, 4, 4)
    gm = trace_units(model)
    assert [u.name for u in units(gm)] == ["size", "conv", "view"]
    sizes = unit_output_bytes(model, x)
    assert sizes[0] == sizes[1] == float("inf") and sizes[2] == 2 * 32 * 4
    with pytest.raises(ValueError, match="'size' crossing the cut is not a tensor"):
        cut_tensors(model, x, [0, 1, 3])
