"""Weight entanglement: candidates are slices of one MBConv, exported exactly, trained through the shared weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jmsnas.space.entangled import EntangledCandidate, entangled_candidates
from jmsnas.space.ops import CANDIDATES, MBConv
from jmsnas.space.spec import load_search_space
from jmsnas.space.supernet import Supernet

ROOT = Path(__file__).resolve().parents[2]
MBCONVS = [n for n, c in CANDIDATES.items() if c.kind == "mbconv"]


def _layer(dims: int, channels: int = 4):
    torch.manual_seed(dims)
    return entangled_candidates([*MBCONVS, "identity"], channels, channels, 1, dims)


@pytest.mark.parametrize("dims", [1, 2])
def test_exported_candidates_compute_what_the_views_compute(dims: int) -> None:
    cands, shared = _layer(dims)
    x = torch.randn(5, 4, *([9] * dims))
    shared.train()
    for _ in range(2):  # running statistics off their defaults, in every slice
        for c in cands:
            c(x)
    for training in (False, True):
        shared.train(training)
        for name, cand in zip([*MBCONVS, "identity"], cands, strict=True):
            if name == "identity":
                assert not isinstance(cand, EntangledCandidate)
                continue
            alone = cand.export().train(training)
            assert isinstance(alone, MBConv) and alone.conv_dw.kernel_size[0] == CANDIDATES[name].kernel_size
            assert all(p.data_ptr() not in {q.data_ptr() for q in shared.parameters()} for p in alone.parameters())
            with torch.no_grad():
                torch.testing.assert_close(alone(x), cand(x), rtol=0, atol=1e-6)


def test_a_candidate_trains_its_slice_of_the_shared_weights() -> None:
    cands, shared = _layer(1)
    k3_e3 = cands[MBCONVS.index("mb_k3_e3")]
    before = shared.body.bn1.running_mean.clone()
    k3_e3(torch.randn(6, 4, 9)).square().sum().backward()
    dw = shared.body.conv_dw.weight.grad  # [24, 1, 7]: hidden channels 0..11, taps 2..4 used
    assert dw[:12, :, 2:5].abs().sum() > 0 and dw[12:].abs().sum() == 0
    assert dw[:, :, :2].abs().sum() == 0 and dw[:, :, 5:].abs().sum() == 0
    assert shared.body.conv_pwl.weight.grad[:, 12:].abs().sum() == 0
    moved = shared.body.bn1.running_mean != before  # running statistics updated in place, in the slice only
    assert moved[:12].all() and not moved[12:].any()


def test_entangled_supernet_lists_each_shared_weight_once() -> None:
    space = load_search_space(ROOT / "search_spaces" / "tiny_1d.yaml")
    torch.manual_seed(0)
    entangled, separate = Supernet(space, 3), Supernet(space, 3, weight_sharing="separate")
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(entangled) < count(separate) / 3
    keys = entangled.state_dict().keys()
    assert sum(k.endswith("conv_dw.weight") for k in keys) == 3  # one shared MBConv per layer
    with pytest.raises(ValueError, match="weight_sharing"):
        Supernet(space, 3, weight_sharing="tied")
