"""Supernet: structure, parameter groups, exported subnets, derive and expected latency (eq. (4) term)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from jmsnas.space.arch import ArchNet
from jmsnas.space.mixed import MixedOp
from jmsnas.space.spec import load_search_space
from jmsnas.space.supernet import Supernet

ROOT = Path(__file__).resolve().parents[2]
SPACES = {dims: load_search_space(ROOT / "search_spaces" / f"tiny_{dims}d.yaml") for dims in (1, 2)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: OpenMP workers only add barrier waits (100x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(dims: int = 1, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return Supernet(SPACES[dims], num_classes=3)


def _randomise_batchnorm(net: nn.Module, gen: torch.Generator) -> None:
    """Random running statistics and affine parameters, so eval-mode BN is not the identity."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))


def test_layers_follow_the_search_space() -> None:
    net = _net()
    slots = SPACES[1].layers()
    assert len(net.layers) == len(slots) == 3
    for layer, slot in zip(net.layers, slots, strict=True):
        assert isinstance(layer, MixedOp) and layer.num_candidates == len(slot.candidates)
        assert torch.equal(layer.alpha.detach(), torch.zeros(len(slot.candidates)))
    assert [len(s.candidates) for s in slots] == [13, 6, 13]


@pytest.mark.parametrize("dims", [1, 2])
def test_export_subnet_matches_single_path_forward(dims: int) -> None:
    net, gen = _net(dims), torch.Generator().manual_seed(dims)
    _randomise_batchnorm(net, gen)
    net.eval()
    x = torch.randn(4, *SPACES[dims].input_shape, generator=gen)
    for _ in range(4):
        paths = net.sample_paths(gen)
        sub = net.export_subnet(paths)
        assert isinstance(sub, ArchNet) and not sub.training
        chosen = [layer.export_candidate(i) for layer, i in zip(net.layers, paths, strict=True)]
        assert [type(b) for b in sub.blocks] == [type(c) for c in chosen]
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x, paths), rtol=0, atol=1e-6)
        # a copy, not shared storage: training the subnet leaves the supernet alone
        assert all(p.data_ptr() not in {q.data_ptr() for q in net.parameters()} for p in sub.parameters())


def test_two_path_forward_equals_active_single_path() -> None:
    net, gen = _net(), torch.Generator().manual_seed(0)
    net.eval()
    x = torch.randn(2, *SPACES[1].input_shape, generator=gen)
    pairs = net.sample_paths(gen, two=True)
    assert all(len(p) == 2 and p[0] != p[1] for p in pairs)
    out = net(x, pairs)
    torch.testing.assert_close(out, net(x, [p[0] for p in pairs]), rtol=0, atol=1e-6)
    out.square().sum().backward()
    net.set_alpha_grads(pairs)
    old = [a.detach().clone() for a in net.arch_parameters()]
    with torch.no_grad():
        for a in net.arch_parameters():
            a -= 0.1 * a.grad
    net.rescale_alphas(pairs, old)
    for layer, pair, p_old in zip(net.layers, pairs, old, strict=True):
        rest = [i for i in range(layer.num_candidates) if i not in pair]
        torch.testing.assert_close(layer.probs()[rest], torch.softmax(p_old, 0)[rest])


def test_arch_and_weight_parameters_are_disjoint_and_complete() -> None:
    net = _net()
    arch = {id(p) for p in net.arch_parameters()}
    weight = {id(p) for p in net.weight_parameters()}
    assert len(arch) == len(net.layers) and not arch & weight
    assert arch | weight == {id(p) for p in net.parameters()}
    assert len(weight) == len(net.weight_parameters())


def test_derive_and_arch_spec_pick_the_argmax() -> None:
    net = _net()
    picks = [4, 1, 12]
    with torch.no_grad():
        for a, i in zip(net.arch_parameters(), picks, strict=True):
            a.normal_(0, 0.1)
            a[i] = 3.0
    names = [slot.candidates[i] for slot, i in zip(net.slots, picks, strict=True)]
    assert net.derive() == names == ["mb_k5_e3", "mb_k3_e6", "identity"]
    spec = net.to_arch_spec()
    assert spec.choices == names and spec.num_classes == 3
    assert net.to_arch_spec(num_classes=7).num_classes == 7
    assert net.export_subnet().blocks[2].__class__.__name__ == "Identity"


def test_forward_checks_number_of_paths() -> None:
    net = _net()
    with pytest.raises(ValueError, match="expected 3 path entries"):
        net(torch.zeros(1, 1, 16), [0, 0])
