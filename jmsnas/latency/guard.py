"""Contention guard: notice when something else slows the machine down while it is being timed.

Why: the profiles first shipped with jmsnas were measured while other jobs ran on the same two
cores. Re-timed on a quiet machine of the same kind their op rows came out at a median 0.45 of the
profile, and whole networks were predicted 2x too slow. Robust statistics inside one measurement
(`jmsnas.latency.timing`: median of block minima) cannot see a slowdown that lasts for the whole
measurement; a fixed yardstick timed now and then can.

How: a short *reference workload* (a fixed matrix power, at the measurement's thread count) is
timed *with* every block of measurements, as one more participant of its round-robin
(`jmsnas.latency.timing`), so that it sees the machine exactly as the block's ops do. Its estimate in
the first block (measured three times, the median) is the run's **speed index** (ms; stored in the
profile's JSON). A block in which the
reference is off the speed index by more than ``tolerance`` (either way) is thrown away; the guard
waits ``wait_s`` and measures it again. After ``retries`` tries without a quiet window,
`ContentionError` is raised: a profiler stops instead of writing figures the machine could not
support (rows measured in quiet windows before are kept, and the profile stays marked incomplete
until a run finishes it).

What was measured on this project's 2-core VMs (torch 2.14.1), and why the reference is timed so:

- Timed alone between blocks (the median of 9 runs, or of block minima after a warm-up), the
  reference moved by up to ±35 % from check to check on an idle machine: the VM's vCPU alternates
  between a fast and a ~1.3x slower state over seconds, is slow for a while after sleeping, and the
  reference alone runs with hotter caches than inside a block. As a participant of the blocks' own
  round-robin it varied by ±12 % (one thread) and ±9 % (two threads) over 8 blocks of random ops: the
  default tolerance (15 %) sits above that.
- Two other single-thread processes busy on the other core made a one-thread reference *faster*
  (0.233 vs 0.28 ms: the host keeps a busy VM's clock up) and a two-thread reference 35 % *slower*
  (0.19 vs 0.14 ms). Either way the figures are not those of the quiet machine a profile describes,
  so the check is two-sided.
- The reference's time as a participant depends on what it is timed with (the caches the others leave
  it): a 3x3 convolution (64 KB input, 128 KB output) ran 20-30 % slower with whole networks or 2-D
  ops than with 1-D ops on the same quiet machine. A matrix power of a 96x96 matrix (compute-bound,
  108 KB) moved by 0-12 % over the same chunks: it is the reference. Each kind of block (``phase``: ops,
  networks, ...) still has its own speed index, set by its first block.

``sleep`` is injectable, and the timing function's clock too, so that tests can play a machine that
slows down. `machine_load` reads ``/proc/loadavg`` and ``/proc/stat`` so that a run can
warn before it starts when other processes keep the CPUs busy.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from jmsnas.errors import JmsnasError

T = TypeVar("T")
#: A block of measurements: times its work together with the given reference call; ``(result, reference_ms)``.
Block = Callable[[Callable[[], object]], tuple[T, float]]

#: Default tolerance: a reference more than 15 % off the speed index means "not quiet" (a quiet
#: 2-core VM of this project's kind moves it by up to ±12 %; see the module docstring).
DEFAULT_TOLERANCE = 0.15
#: The phase whose speed index is the profile's ``speed_index_ms``.
DEFAULT_PHASE = "ops"


class ContentionError(JmsnasError):
    """No quiet window came: the machine is too busy for measurements to be trusted."""


class _MatrixPower(nn.Module):
    """``A ** 64`` of a fixed 96x96 matrix: six 96^3 matrix products in one call (~5.3 MMAC, ~0.12 ms)."""

    def __init__(self, n: int = 96, power: int = 64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.power = power
        self.register_buffer("a", torch.randn(n, n, generator=gen) / n**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_power(self.a, self.power) + x


def reference_workload() -> Callable[[], object]:
    """The reference, one call a run: compute-bound with a small working set (108 KB), so that what the modules
    timed with it leave in the caches moves it little; it moves with the CPU's speed (clock, a busy sibling,
    stolen time)."""
    module, x = _MatrixPower().eval(), torch.zeros(1)

    def call() -> object:
        with torch.inference_mode():
            return module(x)

    return call


@dataclass
class GuardStats:
    """What the guard saw: checks made, blocks re-measured, seconds waited, the slowest reference ratio."""

    checks: int = 0
    remeasured: int = 0
    waited_s: float = 0.0
    worst_ratio: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return {"checks": self.checks, "remeasured_blocks": self.remeasured, "waited_s": round(self.waited_s, 3),
                "worst_reference_ratio": round(self.worst_ratio, 4)}


class ContentionGuard:
    """Times a reference workload with every block of measurements and re-measures the disturbed blocks.

    Args:
        tolerance: how far from the speed index (either way) the reference may be in a quiet window (0.15: 15 %).
        retries: measurements per block before giving up.
        wait_s: seconds to wait before measuring a disturbed block again.
        speed_index_ms: a known speed index of the default phase (the profile's, when resuming); default: the
            first block's reference.
        sleep: how to wait (seconds).
        warm_up_s: seconds the reference runs before the first block sets a speed index: an idle VM runs slow
            for a while (on 2026-12-04 a profile started after minutes of idling set its index at 0.165 ms, the
            machine then ran the reference at 0.12 ms, and the run was refused for running 26 % *fast*).
    """

    def __init__(self, *, tolerance: float = DEFAULT_TOLERANCE, retries: int = 8, wait_s: float = 2.0,
                 speed_index_ms: float | None = None, sleep: Callable[[float], None] = time.sleep,
                 warm_up_s: float = 3.0) -> None:
        if tolerance <= 0 or retries < 1 or wait_s < 0:
            raise ValueError(f"need tolerance > 0, retries >= 1, wait_s >= 0; got {tolerance}, {retries}, {wait_s}")
        self.tolerance = tolerance
        self.retries = retries
        self.wait_s = wait_s
        self.speed_index: dict[str, float] = {} if speed_index_ms is None else {DEFAULT_PHASE: speed_index_ms}
        self.sleep = sleep
        self.warm_up_s = warm_up_s
        self.reference = reference_workload()
        self.stats = GuardStats()

    @property
    def speed_index_ms(self) -> float | None:
        """The speed index of the default phase (ops), None before its first block."""
        return self.speed_index.get(DEFAULT_PHASE)

    @speed_index_ms.setter
    def speed_index_ms(self, value: float) -> None:
        self.speed_index[DEFAULT_PHASE] = value

    def ratio(self, reference_ms: float, phase: str = DEFAULT_PHASE) -> float:
        """The reference's time in a block / the phase's speed index."""
        ratio = reference_ms / self.speed_index[phase]
        self.stats.checks += 1
        if abs(ratio - 1.0) > abs(self.stats.worst_ratio - 1.0):
            self.stats.worst_ratio = ratio
        return ratio

    def _first(self, block: Block[T], phase: str) -> T:
        """The first block of a phase, measured three times: the median reference is the phase's speed index
        (one disturbed measurement at the start cannot set it), and the measurement closest to it is kept."""
        end = time.perf_counter() + self.warm_up_s
        while time.perf_counter() < end:  # wake the CPU up first
            self.reference()
        runs = [block(self.reference) for _ in range(3)]
        index = self.speed_index[phase] = statistics.median(ref for _, ref in runs)
        for _, ref in runs:
            self.ratio(ref, phase)
        return min(runs, key=lambda run: abs(run[1] - index))[0]

    def measure(self, block: Block[T], what: str = "a block",
                phase: str = DEFAULT_PHASE) -> T:
        """Measure ``block`` in a quiet window and return its result.

        Args:
            block: called with the reference (a zero-argument callable), which it must time together with its
                own work (as one more participant of its round-robin); returns ``(result, reference_ms)``.
            what: what is measured, for the error message.
            phase: the kind of block (blocks of one phase are timed with like modules; see the module docstring).

        Raises:
            ContentionError: every one of ``retries`` measurements was disturbed.
        """
        if phase not in self.speed_index:
            return self._first(block, phase)
        ratio = 1.0
        for attempt in range(self.retries):
            result, reference_ms = block(self.reference)
            ratio = self.ratio(reference_ms, phase)
            if abs(ratio - 1.0) <= self.tolerance:
                return result
            if attempt < self.retries - 1:
                self.stats.remeasured += 1
                self.stats.waited_s += self.wait_s
                self.sleep(self.wait_s)
        raise ContentionError(
            f"no quiet window to measure {what}: the reference workload ran {100 * (ratio - 1):+.0f} % off the "
            f"speed index {self.speed_index[phase]:.4f} ms ({phase}) in {self.retries} tries (tolerance "
            f"{100 * self.tolerance:.0f} %). {load_hint()}Stop other jobs and run again; what was measured in quiet "
            "windows is kept (a profile resumed on a machine now faster or slower than when it was started also "
            "stops here: then use --overwrite)")


@dataclass(frozen=True)
class MachineLoad:
    """Load average (1 min) and the share of CPU time other processes used over a short sample."""

    load_1min: float
    busy_fraction: float
    cpus: int

    def warning(self) -> str | None:
        """A sentence when the machine looks busy, else None."""
        # the sampled busy share is what counts now; the load average lags a minute behind (a test run just ended)
        if self.busy_fraction > 0.10 or self.load_1min > self.cpus:
            return (f"warning: this machine is busy (load average {self.load_1min:.2f} on {self.cpus} CPUs, "
                    f"{100 * self.busy_fraction:.0f} % of CPU time used by other processes): timings made now will "
                    "be slow and noisy; the contention guard will wait for quiet windows")
        return None


def _cpu_times(stat: Path) -> tuple[int, int]:
    fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def machine_load(sample_s: float = 0.5, proc: Path = Path("/proc")) -> MachineLoad | None:
    """Read the load of this machine (Linux ``/proc``); None where it cannot be read."""
    try:
        load = float((proc / "loadavg").read_text().split()[0])
        total0, idle0 = _cpu_times(proc / "stat")
        time.sleep(sample_s)
        total1, idle1 = _cpu_times(proc / "stat")
    except (OSError, ValueError, IndexError):
        return None
    busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
    return MachineLoad(load, max(0.0, busy), os.cpu_count() or 1)


def load_hint() -> str:
    load = machine_load(0.2)
    return "" if load is None else f"Load average now {load.load_1min:.2f} on {load.cpus} CPUs. "
