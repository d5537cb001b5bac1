"""Masked execution (exited samples stop computing, measured MACs = predicted) and frozen-backbone head training."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from exits_specs import TinyResNet, digits_dm, mnist1d_dm, trained_tiny_1d, trained_tiny_resnet
from torch import nn

from jmsnas.exits.cascade import EarlyExitNet, MacCounter
from jmsnas.exits.graph import block_graph
from jmsnas.exits.heads import build_exit_head
from jmsnas.exits.thresholds import confidence
from jmsnas.exits.train import default_loss_weights, exit_outputs, joint_finetune, train_heads


def _cascade(model: nn.Module, shape: tuple[int, ...], thresholds: list[float], seed: int = 0) -> EarlyExitNet:
    torch.manual_seed(seed)
    g = block_graph(model, shape)
    locs = g.locations[:2]
    heads = [build_exit_head(g.feature_shapes[b], g.blueprint, 0.05 * g.total_macs).eval() for b in locs]
    return EarlyExitNet.build(g, locs, heads, thresholds)


def _check_masked(net: EarlyExitNet, x: torch.Tensor) -> torch.Tensor:
    with MacCounter(net) as counter, torch.no_grad():
        logits, idx = net(x)
    with torch.no_grad():
        every = net.all_exits(x)
    for i in range(len(x)):  # each sample: the logits of the first exit confident enough, exactly
        k = next((k for k in range(net.num_exits) if confidence(every[k][i:i + 1])[0] >= net.thresholds[k]),
                 net.num_exits)
        assert int(idx[i]) == k
        assert torch.allclose(logits[i], every[k][i], atol=1e-5)
    assert counter.macs == net.predicted_macs(idx)  # what ran is what eq. (3) predicts, sample by sample
    return idx


def test_masked_execution_on_archnet_matches_prediction() -> None:
    model = trained_tiny_1d()
    x = torch.stack([mnist1d_dm().test_set[i][0] for i in range(50)])
    with torch.no_grad():
        full = _cascade(model, (1, 40), [2.0, 2.0]).all_exits(x)
    t1 = float(confidence(full[0]).median())
    t2 = float(confidence(full[1]).quantile(0.3))
    idx = _check_masked(_cascade(model, (1, 40), [t1, t2]), x)
    assert set(idx.tolist()) == {0, 1, 2}  # every exit took some samples


def test_masked_execution_on_torchvision_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model.eval()
    x = torch.randn(12, 1, 32, 32)
    net = _cascade(model, (1, 32, 32), [0.0, 0.0])
    with torch.no_grad():
        every = net.all_exits(x)
    t = float(confidence(every[0]).median())
    idx = _check_masked(_cascade(model, (1, 32, 32), [t, 2.0]), x)
    assert 0 < (idx == 0).sum() < 12 and (idx != 1).all()
    with torch.no_grad():
        logits, _ = _cascade(model, (1, 32, 32), [2.0, 2.0])(x)
    assert torch.allclose(logits, model(x), atol=1e-5)  # nobody exits: the original network


def test_exited_samples_stop_computing() -> None:
    model = trained_tiny_resnet()
    x = torch.stack([digits_dm().test_set[i][0] for i in range(16)])
    net = _cascade(model, (1, 8, 8), [0.0, 0.0])  # everyone leaves at the first exit
    with MacCounter(net) as counter, torch.no_grad():
        _, idx = net(x)
    assert (idx == 0).all() and counter.macs == 16 * net.exit_costs()[0]
    assert counter.macs < 16 * net.segment_macs[0] + 16 * net.head_macs[0] + 1


def test_frozen_backbone_is_unchanged_and_caching_changes_nothing() -> None:
    model = trained_tiny_1d()
    before = copy.deepcopy(model.state_dict())
    g = block_graph(model, (1, 40))
    dm = mnist1d_dm()
    results = []
    for cache in (True, False):
        torch.manual_seed(0)
        heads = {b: build_exit_head(g.feature_shapes[b], g.blueprint, 0.05 * g.total_macs) for b in g.locations}
        run = train_heads(g, heads, dm.train_set, dm.val_set, epochs=3, lr=0.01, batch_size=64, cache_bytes=0,
                          min_accuracy_gain=0.0, seed=0, cache=cache)
        assert run.cached is cache and not run.dropped
        for key, value in model.state_dict().items():  # weights and BatchNorm statistics untouched
            assert torch.equal(value, before[key]), key
        assert all(p.grad is None for p in model.parameters())
        results.append(run)
    for loc in g.locations:
        assert results[0].accuracy[loc] == pytest.approx(results[1].accuracy[loc], abs=0.02)
        for a, b in zip(results[0].heads[loc].parameters(), results[1].heads[loc].parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-3)
    assert max(results[0].accuracy.values()) > 0.2  # heads learn something (chance: 0.1)


def test_useless_heads_are_dropped_after_the_first_epoch() -> None:
    model = trained_tiny_1d()
    g = block_graph(model, (1, 40))
    dm = mnist1d_dm()
    heads = {b: build_exit_head(g.feature_shapes[b], g.blueprint, 0.05 * g.total_macs) for b in g.locations}
    run = train_heads(g, heads, dm.train_set, dm.val_set, epochs=5, lr=3e-3, batch_size=64, cache_bytes=1 << 30,
                      min_accuracy_gain=0.95, seed=0)  # nothing reaches 95 % above the majority after one epoch
    assert set(run.dropped) == set(g.locations) and not run.heads
    assert all(len(h) == 1 for h in run.history.values())  # no second epoch


def test_joint_finetune_works_on_copies() -> None:
    assert default_loss_weights(2) == pytest.approx([0.2, 0.3, 0.5])  # paper 004
    assert sum(default_loss_weights(3)) == pytest.approx(1.0) and default_loss_weights(0) == [1.0]
    model = trained_tiny_resnet()
    before = copy.deepcopy(model.state_dict())
    g = block_graph(model, (1, 8, 8))
    torch.manual_seed(0)
    heads = [build_exit_head(g.feature_shapes[b], g.blueprint, 0.05 * g.total_macs) for b in g.locations]
    head_before = copy.deepcopy(heads[0].state_dict())
    tuned, tuned_heads, _ = joint_finetune(g, g.locations, heads, digits_dm().train_set, weights=[0.2, 0.3, 0.5],
                                           epochs=1, lr=0.01, batch_size=64)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, head_before[k]) for k, v in heads[0].state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in tuned.model.state_dict().items())
    outs = exit_outputs(tuned, dict(zip(g.locations, tuned_heads, strict=True)), digits_dm().val_set, 64)
    assert outs.final.shape == (len(digits_dm().val_set), 10) and set(outs.heads) == set(g.locations)


def test_tiny_resnet_cascade_builds() -> None:
    net = _cascade(TinyResNet().eval(), (1, 8, 8), [0.5, 0.5])
    assert net.locations == [3, 8] and len(net.exit_costs()) == 3
