"""Robust wall-clock timing of several modules at once, for noisy machines.

Why not the plain median of repeated runs: on the 2-core VMs jmsnas is developed on, the same op
timed twice a minute apart differed by a median 28 % (only 19 % of 80 ops re-measured within
±10 % of their first median), and one op's medians over ten 200-run blocks ranged from 0.40 to
0.90 ms while most block minima sat at 0.27 ms. The interference comes and goes over seconds, so
more repeats in one go do not help.

What is done instead: the modules are timed *round-robin* in short blocks (every module gets one
block, then every module its next one, ...), so each module's blocks are spread over the whole
measurement; a block's statistic is its minimum (the run least disturbed), and the estimate is
the median of the block minima, with their inter-quartile range as the spread. This estimates
the latency on a quiet device, which is what a deployment plan should assume; the fidelity
benchmark measures whole networks the same way.

Rounds (`best_of_rounds`): block minima alone do not survive this VM's slow *spells*. On 2026-12-04 (AMD
EPYC 2-core VM, nothing else running) the machine spent seconds at a time 1.2-1.9x slower, and the runs of a
whole network (1-3 ms) found no fast moment inside a spell: the same 12 random 1-D networks timed twice a few
seconds apart agreed within ±10 % for 33 % of them (median of block minima; the minimum of 200 runs: 61 %).
Measured in rounds instead (every chunk once, then every chunk again, so that a chunk's rounds lie seconds
apart) and keeping each module's *fastest* round, two such estimates agreed within ±10 % for 100 % of them
with two rounds each (75 % within ±5 %). A round taken in a spell is slower, never faster, so the fastest
round is the quiet machine's figure; the cost is one measurement per round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn


def time_interleaved(modules: Sequence[nn.Module], inputs: Sequence[torch.Tensor], *, blocks: int = 10,
                     block_size: int = 10, warmup: int = 5, threads: int | None = None,
                     extra: Sequence[Callable[[], object]] = ()) -> list[tuple[float, float]]:
    """Median of block minima (ms) and its inter-quartile range, per module.

    Args:
        modules: the modules (run in eval mode under ``torch.inference_mode``).
        inputs: one input batch per module.
        blocks: blocks per module; the estimate is the median over blocks.
        block_size: timed forwards per block; a block keeps its minimum.
        warmup: untimed forwards per module first.
        threads: ``torch.set_num_threads`` while timing (restored afterwards).
        extra: zero-argument callables timed with the modules, after them in the round-robin (the contention
            guard's reference).

    Returns:
        ``(estimate_ms, spread_ms)`` per module, then per extra callable, in order.
    """
    modes = [m.training for m in modules]
    cuda = any(x.is_cuda for x in inputs)
    calls = [_forward(m, x, cuda) for m, x in zip(modules, inputs, strict=True)]
    try:
        for m in modules:
            m.eval()
        with torch.inference_mode():
            return time_callables([*calls, *extra], blocks=blocks, block_size=block_size, warmup=warmup,
                                  threads=threads)
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def time_callables(calls: Sequence[Callable[[], object]], *, blocks: int = 10, block_size: int = 10,
                   warmup: int = 5, threads: int | None = None,
                   clock: Callable[[], int] = time.perf_counter_ns) -> list[tuple[float, float]]:
    """`time_interleaved` for any zero-argument callables (an ONNX Runtime session's run, a TorchScript part).

    Args:
        calls: what to time; each call is one run (it must synchronise a GPU itself).
        blocks: blocks per callable; the estimate is the median over blocks.
        block_size: timed calls per block; a block keeps its minimum.
        warmup: untimed calls per callable first.
        threads: ``torch.set_num_threads`` while timing (restored afterwards).
        clock: nanosecond clock (tests pass a fake one).

    Returns:
        ``(estimate_ms, spread_ms)`` per callable, in order.
    """
    if blocks < 1 or block_size < 1 or warmup < 0:
        raise ValueError(f"need blocks >= 1, block_size >= 1, warmup >= 0; got {blocks}, {block_size}, {warmup}")
    old_threads = torch.get_num_threads()
    minima: list[list[float]] = [[] for _ in calls]
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for call in calls:
            for _ in range(warmup):
                call()
        for _ in range(blocks):
            for i, call in enumerate(calls):
                minima[i].append(min(_once(call, clock) for _ in range(block_size)))
    finally:
        torch.set_num_threads(old_threads)
    return [_summary(mins) for mins in minima]


def best_of_rounds(measures: Sequence[Callable[[], list[tuple[float, float]]]],
                   rounds: int) -> list[list[tuple[float, float]]]:
    """Run every measurement ``rounds`` times in turn and keep, per module, its fastest round.

    Args:
        measures: one zero-argument callable per chunk, returning ``(estimate_ms, spread_ms)`` per module (a
            `time_interleaved` call, guarded or not).
        rounds: how often each chunk is measured; all chunks are measured once before any is measured again,
            so that one chunk's rounds are spread over the whole measurement.

    Returns:
        Per chunk, per module: the ``(estimate_ms, spread_ms)`` of the round with the lowest estimate.
    """
    if rounds < 1:
        raise ValueError(f"need rounds >= 1; got {rounds}")
    best: list[list[tuple[float, float]] | None] = [None] * len(measures)
    for _ in range(rounds):
        for i, measure in enumerate(measures):
            now = measure()
            old = best[i]
            best[i] = now if old is None else [min(a, b, key=lambda t: t[0]) for a, b in zip(old, now, strict=True)]
    return [b or [] for b in best]


def _forward(module: nn.Module, x: torch.Tensor, cuda: bool) -> Callable[[], object]:
    def call() -> object:
        out = module(x)
        if cuda:
            torch.cuda.synchronize()
        return out

    return call


def _once(call: Callable[[], object], clock: Callable[[], int]) -> float:
    start = clock()
    call()
    return (clock() - start) / 1e6


def _summary(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], 0.0
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q3 - q1
