"""Tiny models and data the exits tests share (trained once per session)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from jmsnas.config import DigitsDataset, Mnist1dDataset
from jmsnas.data import JmsnasDataModule
from jmsnas.space.arch import ArchNet, ArchSpec, BlockSpec, HeadSpec, StemSpec, build_model
from jmsnas.topology import AnalyticSpec, Device, Link, Topology, build_topology


def tiny_1d_spec() -> ArchSpec:
    """MNIST-1D sized: stem 1->8, MBConv 8->12 s2, a shortcut MBConv, an identity, MBConv 12->16 s2, head 24."""
    return ArchSpec(
        dims=1,
        input_shape=(1, 40),
        num_classes=10,
        stem=StemSpec(channels=8, kernel_size=5, stride=1),
        blocks=(BlockSpec.of("mb_k3_e3", 8, 12, 2), BlockSpec.of("mb_k5_e3_sc", 12, 12, 1),
                BlockSpec.of("identity", 12, 12, 1), BlockSpec.of("mb_k3_e3", 12, 16, 2)),
        head=HeadSpec(channels=24),
    )


class TinyResNet(nn.Module):
    """A 2-D stem, two residual blocks (one strided, with a projection) and pool + linear: fx-traceable."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.a1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.a2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.a2(F.relu(self.a1(x))))
        x = F.relu(self.proj(x) + self.b2(F.relu(self.b1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def chain3(memory_bytes: int = 1 << 30) -> Topology:
    """Three analytic devices, slow to fast, with a slow last link."""
    devices = [Device(name, analytic=AnalyticSpec(rate, memory_bytes))
               for name, rate in (("a", 10e6), ("b", 75e6), ("c", 1e9))]
    return build_topology("chain", devices, [Link("a", "b", 100.0, 1.0), Link("b", "c", 1.0, 10.0)])


def _fit(model: nn.Module, dm: JmsnasDataModule, epochs: int, lr: float) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@functools.lru_cache(maxsize=1)
def mnist1d_dm() -> JmsnasDataModule:
    dm = JmsnasDataModule(Mnist1dDataset(name="mnist1d", num_samples=700, batch_size=64, val_fraction=0.2), seed=0)
    dm.setup()
    return dm


@functools.lru_cache(maxsize=1)
def trained_tiny_1d() -> ArchNet:
    """The tiny 1-D ArchNet trained a few epochs on 560 MNIST-1D samples (weights fixed by seed)."""
    torch.manual_seed(0)
    return _fit(build_model(tiny_1d_spec()), mnist1d_dm(), epochs=8, lr=0.01)


@functools.lru_cache(maxsize=1)
def digits_dm() -> JmsnasDataModule:
    dm = JmsnasDataModule(DigitsDataset(name="digits", batch_size=64, val_fraction=0.2, image_size=8), seed=0)
    dm.setup()
    return dm


@functools.lru_cache(maxsize=1)
def trained_tiny_resnet() -> TinyResNet:
    torch.manual_seed(0)
    return _fit(TinyResNet(), digits_dm(), epochs=4, lr=0.01)


def two_exit_cascade(thresholds: list[float]):
    """``trained_tiny_1d`` with exit heads at its first two block locations (untrained heads, fixed seed)."""
    from jmsnas.exits.cascade import EarlyExitNet
    from jmsnas.exits.graph import block_graph
    from jmsnas.exits.heads import build_exit_head

    torch.manual_seed(0)
    g = block_graph(trained_tiny_1d(), (1, 40))
    locs = g.locations[:2]
    heads = [build_exit_head(g.feature_shapes[b], g.blueprint, 0.05 * g.total_macs).eval() for b in locs]
    return EarlyExitNet.build(g, locs, heads, thresholds)


def predictor_bundle(out, samples: int = 60, adaptive: bool = False) -> dict:
    """A two-exit cascade on three devices ``d0 -> d1 -> d2`` with an Exit Predictor, exported to ``out``.

    λs and γs are quantiles of the samples' own confidences and scores, so every path of Algorithm 1 is
    taken. Returns the inputs ``x``, the predictor's scores ``s``, the γs, and what ``SkippingCascade``
    answers: ``logits``, ``exit_index``, ``computed``. With ``adaptive``, the bundle also has adaptive
    thresholds fitted on the same samples (hand-set part times: segments 2.5 / 2.5 ms, heads 0.5 ms, predictor
    0.2 ms; 80,000 bits over the last cut; τ the deployed point's latency at 10 Mbit/s), under ``"adaptive"``.
    """
    from jmsnas.exits.predictor import ExitPredictor
    from jmsnas.exits.skip import SkippingCascade
    from jmsnas.exits.thresholds import confidence
    from jmsnas.export.writer import export_bundle
    from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment

    x = torch.stack([mnist1d_dm().test_set[i][0] for i in range(samples)])
    probe = two_exit_cascade([2.0, 2.0])  # outside no_grad: the first call trains the backbone
    with torch.no_grad():
        every = probe.all_exits(x)
    lam = [float(confidence(every[0]).median()), float(confidence(every[1]).quantile(0.3))]
    net = two_exit_cascade(lam).eval()
    torch.manual_seed(1)
    ep = ExitPredictor((1, 40), 2, "ours", width=0.5).eval()
    with torch.no_grad():
        last = [m for m in ep.modules() if isinstance(m, nn.Linear)][-1]  # untrained: spread its scores
        last.weight.mul_(1000.0)
        last.bias.sub_(ep(x).mean(0))
        s = torch.sigmoid(ep(x))
        gam = [float(s[:, 0].median()), float(s[:, 1].quantile(0.4))]
        logits, idx, computed = SkippingCascade(net, ep, gam).eval()(x)
    names = ["d0", "d1", "d2"]
    plan = DeploymentPlan("chain", tuple(DeviceSegment(n, "main", m, m + 1, 1.0) for m, n in enumerate(names)),
                          tuple(CutPlan(a, b, 4.0, 1.0) for a, b in zip(names, names[1:], strict=False)), 3.0)
    entry = None
    if adaptive:
        from torch.utils.data import Subset

        from jmsnas.exits.adaptive_fit import adaptive_entry, exit_stats, fit_adaptive, part_ms_of, tau_at

        stats = exit_stats(net, Subset(mnist1d_dm().test_set, range(samples)), ep)
        parts = part_ms_of([3.0, 6.0], [0.5, 0.5], 0.2)
        tau = tau_at(stats, parts, 80_000.0, 10.0, lam, gam)
        rule, _ = fit_adaptive(stats, parts, 80_000.0, tau, [0.5, 1, 2, 5, 10, 20, 50, 100], 2)
        entry = adaptive_entry(rule, stats, parts, 80_000.0, tau, 1)
    export_bundle(list(net.segments), plan, x[:2], out, exits={0: (net.heads[0], lam[0]), 1: (net.heads[1], lam[1])},
                  predictor=(ep, gam), adaptive=entry)
    return {"bundle": out, "x": x, "s": s, "gammas": gam, "logits": logits, "exit_index": idx, "computed": computed,
            "predictor": ep, "net": net, "plan": plan, "adaptive": entry}
