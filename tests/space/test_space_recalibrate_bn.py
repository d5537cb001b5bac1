"""`recalibrate_bn`: only BatchNorm buffers change, and they become the hand-computed batch averages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from jmsnas.space.spec import load_search_space
from jmsnas.space.supernet import Supernet, recalibrate_bn

ROOT = Path(__file__).resolve().parents[2]


def _batches(n: int, shape: tuple[int, ...], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(3.0 * torch.randn(8, *shape, generator=gen) + 1.0, torch.zeros(8, dtype=torch.long)) for _ in range(n)]


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_only_batchnorm_buffers_change() -> None:
    torch.manual_seed(0)
    supernet = Supernet(load_search_space(ROOT / "search_spaces" / "tiny_1d.yaml"), num_classes=3)
    supernet.train()
    for x, _ in _batches(2, supernet.input_shape, seed=1):  # shared statistics of several paths
        supernet(x, supernet.sample_paths())
    net = supernet.export_subnet([1, 0, 2]).eval()
    params = {k: p.detach().clone() for k, p in net.named_parameters()}
    before = {k: b.clone() for k, b in net.named_buffers()}
    assert recalibrate_bn(net, _batches(5, supernet.input_shape), 3) == 3
    for k, p in net.named_parameters():
        assert torch.equal(p, params[k]), k  # bit-identical
    changed = {k for k, b in net.named_buffers() if not torch.equal(b, before[k])}
    bn_buffers = {k for k, _ in net.named_buffers() if k.rsplit(".", 1)[-1] in
                  ("running_mean", "running_var", "num_batches_tracked")}
    assert changed == bn_buffers and bn_buffers  # every BN buffer moved, nothing else did
    assert all(int(m.num_batches_tracked) == 3 and m.momentum == 0.1 for m in _norms(net))
    assert not any(m.training for m in net.modules())  # the training flags are as they were


def test_statistics_are_the_averages_of_the_batch_statistics() -> None:
    torch.manual_seed(0)
    conv1, bn1, conv2, bn2 = nn.Conv1d(2, 3, 3, padding=1), nn.BatchNorm1d(3), nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4)
    model = nn.Sequential(conv1, bn1, nn.ReLU(), nn.Dropout(0.5), conv2, bn2).train()
    batches = _batches(4, (2, 10))
    assert recalibrate_bn(model, (x for x, _ in batches), 10) == 4  # plain tensors; fewer batches than asked

    def stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # per channel over (N, L)
        flat = z.transpose(0, 1).reshape(z.shape[1], -1)
        return flat.mean(1), flat.var(1, unbiased=True), flat.var(1, unbiased=False)

    with torch.no_grad():
        first, second = [], []
        for x, _ in batches:
            z1 = conv1(x)
            mean, var, biased = stats(z1)
            first.append((mean, var))
            h = (z1 - mean[None, :, None]) / torch.sqrt(biased[None, :, None] + bn1.eps)  # BN with batch statistics
            h = torch.relu(h * bn1.weight[None, :, None] + bn1.bias[None, :, None])  # dropout off
            second.append(stats(conv2(h))[:2])
    for bn, per_batch in ((bn1, first), (bn2, second)):
        torch.testing.assert_close(bn.running_mean, torch.stack([m for m, _ in per_batch]).mean(0))
        torch.testing.assert_close(bn.running_var, torch.stack([v for _, v in per_batch]).mean(0))
        assert int(bn.num_batches_tracked) == 4
    assert all(m.training for m in model.modules())


def test_needs_a_batch() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_bn(nn.Sequential(nn.BatchNorm1d(2)), [], 0)
