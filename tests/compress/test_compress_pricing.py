"""A learned compressor's own layers priced on their devices: MACs as the counter measures, times by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jmsnas.compress.autoencoder import make_autoencoder
from jmsnas.compress.distilled import make_student_head
from jmsnas.compress.pricing import describe_layer, with_codec_compute
from jmsnas.config import load_experiment
from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment, ExitPlan
from jmsnas.space.macs import MacCounter
from jmsnas.stages.deploy import deploy_choice


def _described_macs(module: nn.Module, x: torch.Tensor) -> int:
    ops = []
    hooks = [m.register_forward_hook(lambda mod, i, o: ops.append(describe_layer(mod, i[0].shape[1:], o.shape[1:])))
             for m in module.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.ConvTranspose1d | nn.ConvTranspose2d
                                                     | nn.Linear)]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return sum(o.macs for o in ops)


def _counted_macs(module: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), MacCounter() as counter:
        module(x)
    return counter.macs


class _Tupled(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):
        return self.inner((x,))


@pytest.mark.parametrize("shape", [(8, 16, 16), (8, 15, 9), (6, 11), (3, 40)])
def test_autoencoder_layers_are_described_with_the_macs_torch_counts(shape: tuple[int, ...]) -> None:
    encoder, decoder = make_autoencoder(shape, reduction=4, nonnegative=False)
    x = torch.randn(1, *shape)
    assert _described_macs(_Tupled(encoder), x) == _counted_macs(_Tupled(encoder), x)
    (code,) = encoder((x,))
    assert _described_macs(_Tupled(decoder), code) == _counted_macs(_Tupled(decoder), code)


def test_student_decoder_grouped_conv_and_linear_are_described_with_the_macs_torch_counts() -> None:
    encoder, decoder = make_student_head((1, 40), (8, 10))
    (code,) = encoder(torch.randn(1, 1, 40))
    assert _described_macs(_Tupled(decoder), code) == _counted_macs(_Tupled(decoder), code)
    grouped = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, groups=4), nn.Flatten(), nn.Linear(16 * 7 * 7, 5))
    x = torch.randn(1, 8, 16, 16)
    assert _described_macs(grouped, x) == _counted_macs(grouped, x)


def test_an_autoencoder_cut_adds_its_encoder_to_the_sender_and_its_decoder_to_the_receiver(
        tiny_experiment, write_experiment, make_choice) -> None:
    # a and b relay the input (b is slow, c fast): cut b -> c carries the 40 input values through the autoencoder
    tiny_experiment["topology"]["devices"][1]["analytic"]["macs_per_s"] = 1.0e4
    tiny_experiment["topology"]["devices"][2]["analytic"]["macs_per_s"] = 1.0e10
    ae = {"kind": "autoencoder", "channel_fraction": 0.5}
    tiny_experiment.update(partition={"compressors": [{"kind": "none"}, ae], "train_epochs": 1, "finetune_epochs": 1})
    exp = load_experiment(write_experiment(tiny_experiment))
    choice = make_choice(exp)
    record = deploy_choice(exp, choice).to_dict()
    plan = DeploymentPlan.from_json(choice / "plan.json")
    assert plan.boundaries() == [0, 0, 0, 5] and [c.compressor for c in plan.cuts] == ["none", "autoencoder"]
    # by hand: encoder conv 1 -> 1 channel, kernel 3, stride 2, 20 outputs: 60 MACs at 1e4 MAC/s on b (no layers)
    assert plan.segments[1].compute_ms == pytest.approx(1e3 * 60 / 1.0e4)
    assert plan.total_latency_ms == pytest.approx(sum(s.compute_ms for s in plan.segments)
                                                  + sum(c.link_ms for c in plan.cuts))
    assert record["predicted_latency_ms"] == pytest.approx(plan.total_latency_ms)
    assert any("its encoder adds 6 ms on b" in n for n in record["notes"])


def test_with_exits_the_worst_case_pays_every_codec_and_the_mean_only_for_samples_that_reach_it() -> None:
    segs = tuple(DeviceSegment(d, "main", i, i + 1, 1.0) for i, d in enumerate("abc"))
    cuts = (CutPlan("a", "b", 10.0, 2.0, "autoencoder"), CutPlan("b", "c", 10.0, 2.0, "autoencoder"))
    exits = (ExitPlan("a", 0, 0.9, termination_rate=0.5), ExitPlan("b", 1, 0.9, termination_rate=0.25))
    plan = DeploymentPlan("chain", segs, cuts, 7.0, exits, mean_latency_ms=4.0)
    out = with_codec_compute(plan, {0: (1.0, 0.5), 1: (0.25, 0.125)})
    assert [s.compute_ms for s in out.segments] == [2.0, 1.75, 1.125]
    assert out.total_latency_ms == pytest.approx(7.0 + 1.875)
    # cut 0 is crossed by the half not leaving at a's exit, cut 1 by the quarter left after b's
    assert out.mean_latency_ms == pytest.approx(4.0 + 1.5 * 0.5 + 0.375 * 0.25)
    assert with_codec_compute(plan, {}) is plan
