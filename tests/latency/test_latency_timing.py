"""Round-robin block timing: a known sleep is measured, state is restored; rounds keep each module's fastest."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from jmsnas.latency.timing import best_of_rounds, time_interleaved


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


def test_rounds_visit_every_chunk_before_repeating_and_keep_each_modules_fastest() -> None:
    order: list[str] = []
    script = {"a": [[(3.0, 0.3), (1.0, 0.1)], [(2.0, 0.2), (5.0, 0.5)], [(4.0, 0.4), (1.5, 0.2)]],
              "b": [[(7.0, 0.7)], [(6.0, 0.6)], [(8.0, 0.8)]]}

    def chunk(name: str):
        def measure() -> list[tuple[float, float]]:
            order.append(name)
            return script[name][sum(o == name for o in order) - 1]
        return measure

    assert best_of_rounds([chunk("a"), chunk("b")], 3) == [[(2.0, 0.2), (1.0, 0.1)], [(6.0, 0.6)]]
    assert order == ["a", "b", "a", "b", "a", "b"]
    with pytest.raises(ValueError):
        best_of_rounds([chunk("a")], 0)
