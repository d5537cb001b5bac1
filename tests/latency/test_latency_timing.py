"""Round-robin block timing: a known sleep is measured, state is restored."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from jmsnas.latency.timing import time_interleaved


class Sleep(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def test_sleeps_are_measured_in_order_and_state_restored() -> None:
    short, long = Sleep(0.001).train(), Sleep(0.004).train()
    threads = torch.get_num_threads()
    (a, _), (b, _) = time_interleaved([short, long], [torch.zeros(1), torch.zeros(1)], blocks=3, block_size=2,
                                      warmup=1, threads=1)
    assert 1.0 <= a < 3.0 and 4.0 <= b < 8.0
    assert short.training and long.training and torch.get_num_threads() == threads


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        time_interleaved([Sleep(0)], [torch.zeros(1)], blocks=0)
