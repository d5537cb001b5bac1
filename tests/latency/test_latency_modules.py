"""Per-module profiling: selection, MACs/shapes against independent references, timing properties."""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import math
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from jmsnas.latency.modules import (
    ModuleTiming,
    format_table,
    profile_modules,
    select_modules,
    time_forward,
    total_time_ms,
)
from jmsnas.space.arch import ArchNet, ArchSpec, build_model
from jmsnas.space.macs import arch_macs, count_macs
from jmsnas.space.spec import load_search_space

TINY_1D = Path(__file__).resolve().parents[2] / "search_spaces" / "tiny_1d.yaml"
FAST = {"warmup": 1, "repeats": 3, "threads": 1}


def _tiny_net() -> tuple[ArchSpec, ArchNet]:
    torch.manual_seed(0)
    spec = ArchSpec.from_choices(load_search_space(TINY_1D), ["mb_k3_e3_sc", "mb_k5_e6", "identity"], num_classes=5)
    return spec, build_model(spec)


def _real_io(model: ArchNet, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of every layer in one plain forward, captured with our own hooks."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda _m, i, o: seen.append((i[0], o))) for m in model.layers()]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_archnet_layers_match_independent_counts() -> None:
    spec, model = _tiny_net()
    x = torch.randn(2, 1, 16)
    timings = profile_modules(model, x, **FAST)
    assert [t.name for t in timings] == ["stem", "blocks.0", "blocks.1", "blocks.2", "head"]
    assert [t.type for t in timings] == [type(m).__name__ for m in model.layers()]
    io = _real_io(model, x)
    for t, layer, (inp, out) in zip(timings, model.layers(), io, strict=True):
        assert t.macs == count_macs(layer, tuple(inp.shape[1:])), t.name
        assert t.output_shape == tuple(out.shape)
        assert t.output_bytes == out.numel() * 4
        assert t.params == sum(p.numel() for p in layer.parameters())
        assert t.calls == 1
    assert sum(t.macs for t in timings) == count_macs(model, spec.input_shape)
    assert [t.macs for t in timings] == arch_macs(spec)  # the analytic formulas agree too


def test_torchvision_resnet_named_modules() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    names = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    timings = profile_modules(model, torch.randn(1, 3, 32, 32), module_names=names, warmup=1, repeats=2, threads=1)
    by_name = {t.name: t for t in timings}
    assert [t.name for t in timings] == names
    assert by_name["fc"].macs == 512 * 10 and by_name["fc"].params == 512 * 10 + 10
    assert by_name["conv1"].macs == 64 * 16 * 16 * 3 * 7 * 7
    assert by_name["layer4"].output_shape == (1, 512, 1, 1)
    assert sum(t.macs for t in timings) == count_macs(model, (3, 32, 32))  # every conv/linear is covered
    assert all(t.time_ms_median > 0 and t.time_ms_mean > 0 for t in timings)
    assert _no_hooks(model)


class _Sleepy(nn.Module):
    """A Linear that sleeps 2 ms first: a known lower bound on its time."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return self.linear(x)


class _Reuse(nn.Module):
    """``body`` holds two sleepers; ``shared`` is called twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(a=_Sleepy(), b=_Sleepy()))
        self.shared = _Sleepy()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.shared(self.body(x))
        return self.shared(y), y


def test_sleep_nesting_reuse_and_cleanup() -> None:
    model = _Reuse().train()
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    names = ["", "body", "body.a", "body.b", "shared", "shared.linear"]
    for _ in range(2):
        timings = profile_modules(model, torch.randn(3, 4), module_names=names, warmup=1, repeats=3, threads=threads)
        assert _no_hooks(model)
        assert torch.get_num_threads() == before and model.training
    t = {x.name: x for x in timings}
    assert [x.name for x in timings] == names  # first-call order
    assert t["body.a"].time_ms_median >= 2.0 and t["body.b"].time_ms_median >= 2.0
    assert t["shared"].calls == 2 and t["shared"].time_ms_median >= 4.0
    assert t["shared"].macs == 2 * 16 and t["shared.linear"].macs == 2 * 16 and t[""].macs == 4 * 16
    assert t["body"].time_ms_mean >= t["body.a"].time_ms_mean + t["body.b"].time_ms_mean
    assert t[""].time_ms_mean >= t["body"].time_ms_mean + t["shared"].time_ms_mean
    assert t[""].output_shape == ((3, 4), (3, 4)) and t[""].output_bytes == 2 * 12 * 4


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_failure_leaves_no_hooks_and_restores_state() -> None:
    model = nn.Sequential(nn.Linear(4, 4), _Boom()).train()
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        profile_modules(model, torch.randn(1, 4), threads=1 if before != 1 else 2)
    assert _no_hooks(model) and model.training and torch.get_num_threads() == before


def test_select_modules_depths() -> None:
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv1d(1, 2, 3),
            stages=nn.ModuleList([nn.Sequential(nn.ReLU(), nn.Identity()), nn.Tanh()]),
            fc=nn.Linear(2, 2),
        )
    )
    assert select_modules(model, depth=0) == [""]
    assert select_modules(model, depth=1) == ["conv", "stages.0", "stages.1", "fc"]
    assert select_modules(model, depth=2) == ["conv", "stages.0.0", "stages.0.1", "stages.1", "fc"]
    assert select_modules(model, depth=None) == select_modules(model, depth=5)
    assert select_modules(model, module_names=["fc", "conv"]) == ["fc", "conv"]
    with pytest.raises(ValueError, match="unknown module names"):
        select_modules(model, module_names=["nope"])


def test_sum_of_modules_near_end_to_end_and_table() -> None:
    _, model = _tiny_net()
    x = torch.randn(128, 1, 16)  # big enough that the profiler's overhead per op is not most of the time
    for _ in range(3):  # a shared, noisy machine: one attempt in range suffices
        timings = profile_modules(model, x, warmup=3, repeats=10, threads=1)
        end_to_end, spread = time_forward(model, x, warmup=3, repeats=10, threads=1)
        ratio = total_time_ms(timings) / end_to_end
        if 0.5 <= ratio <= 2.0:
            break
    assert 0.5 <= ratio <= 2.0, (ratio, spread)
    assert spread >= 0
    assert math.isclose(total_time_ms(timings, "mean"), sum(t.time_ms_mean for t in timings))
    table = format_table(timings)
    assert all(t.name in table for t in timings) and table.splitlines()[-1].startswith("total")


def test_module_timing_is_frozen() -> None:
    t = ModuleTiming("a", "Linear", 1, 2, (1, 2), 8, 1.0, 1.0, 1)
    with pytest.raises(AttributeError):
        t.macs = 3  # type: ignore[misc]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_device_time() -> None:
    _, model = _tiny_net()
    cpu = profile_modules(model, torch.randn(4, 1, 16), **FAST)
    gpu = profile_modules(model.cuda(), torch.randn(4, 1, 16, device="cuda"), **FAST)
    assert [(t.name, t.macs, t.output_shape) for t in gpu] == [(t.name, t.macs, t.output_shape) for t in cpu]
    assert gpu[0].time_ms_median > 0 and all(t.time_ms_median >= 0 for t in gpu)
