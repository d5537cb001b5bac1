"""Contention watch for long runs: how much CPU did *other* processes take while a benchmark ran?

The contention guard (``guard.py``) protects measurements of milliseconds by timing a reference
with every block. A benchmark whose figure is a wall time of minutes (a search, a retraining) cannot
interleave a reference with its work, and a reference timed alone between phases moves by up to
±35 % on an idle VM of this kind (``guard.py``'s docstring), so it cannot tell contention from the
VM's own drift. What can: the CPU time the whole machine spent (``/proc/stat``) minus the CPU time of
this process and its descendants (Ray's workers included; ``/proc/<pid>/stat``), per second of wall
time, at each checkpoint. That is the number of cores somebody else used while the figures were
taken. A run is *quiet* when no interval exceeds ``threshold_cores`` (default 0.1 core); a benchmark
writes the watch's summary beside its figures and marks them void when the run was not quiet.

Processes of ours that end take their CPU time with them unless an ancestor of ours reaps them
(``cutime``); Ray's workers and servers do not end that way (they are killed, reparented, reaped by
nobody of ours), so a run through Ray looked busy on a quiet machine (1.35 cores during the
quickstart). The default ``own`` is therefore `TreeCpu`: a thread samples the tree every
``interval_s`` and keeps, per process ever seen in it (reparented or ended), its last user + system
time. A process that lives less than one interval is missed and counts as others: on a quiet
machine the watch can still only err towards calling a run busy.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Other processes may use this many cores on average over an interval before a run is "not quiet".
DEFAULT_THRESHOLD_CORES = 0.1


def machine_cpu_s(proc: Path = Path("/proc")) -> float | None:
    """CPU seconds every process of the machine has used since boot (``/proc/stat``), or None off Linux."""
    try:
        fields = (proc / "stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _proc_stat(path: Path) -> tuple[int, int, float] | None:
    """(pid, parent pid, CPU seconds) of one ``/proc/<pid>/stat``, or None when it is gone.

    The seconds include the children it has reaped (``cutime + cstime``): a pool worker that exited is
    still this tree's time, not another process's."""
    try:
        text = path.read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid ... utime stime
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])  # utime stime cutime cstime
    return int(path.parent.name), int(rest[1]), ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_s(pid: int | None = None, proc: Path = Path("/proc")) -> float:
    """CPU seconds (user + system) of process ``pid`` (default: this one), every descendant still alive and
    every one they reaped."""
    root = os.getpid() if pid is None else pid
    stats = [s for p in proc.glob("[0-9]*/stat") if (s := _proc_stat(p)) is not None]
    children: dict[int, list[int]] = {}
    cpu = {}
    for p, parent, seconds in stats:
        children.setdefault(parent, []).append(p)
        cpu[p] = seconds
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += children.get(p, [])
    return total


def _tree_rows(proc: Path) -> list[tuple[int, int, int, float, float]]:
    """(pid, parent pid, start time in ticks, own user + system seconds, reaped children's seconds) of every process."""
    rows = []
    tick = os.sysconf("SC_CLK_TCK")
    for path in proc.glob("[0-9]*/stat"):
        try:
            text = path.read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        rows.append((int(path.parent.name), int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / tick,
                     (int(rest[13]) + int(rest[14])) / tick))
    return rows


class TreeCpu:
    """CPU seconds of a process tree, keeping the time of members that ended or were reparented.

    Every ``interval_s`` (in a daemon thread) and at each call it records, for each process descending
    from ``root`` by parent pid (or seen so before: a reparented one stays ours), its own user + system
    seconds and those of the children it reaped (``cutime + cstime``). A call returns the live members'
    own and reaped time, plus, for each member that ended, what it had when last seen unless the parent
    it had then is still alive: that parent reaped it, so its whole time (since the last look too) is in
    the parent's reaped time already. A member last seen reparented (an orphan: nobody of ours reaps
    it) keeps what was recorded. The figure never goes down.
    """

    def __init__(self, root: int | None = None, proc: Path = Path("/proc"), interval_s: float = 0.5,
                 thread: bool = True) -> None:
        self.root, self.proc, self.interval_s = os.getpid() if root is None else root, proc, interval_s
        self._seen: dict[tuple[int, int], tuple[float, tuple[int, int] | None]] = {}  # key -> (seconds, parent key)
        self._ended = 0.0  # time of members that ended and that no live member of ours reaped
        self._last = 0.0
        self._lock = threading.Lock()
        self.sample()
        if thread:
            threading.Thread(target=self._loop, daemon=True, name="jmsnas-tree-cpu").start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self.sample()

    def sample(self) -> float:
        """Record the tree now; the CPU seconds of the tree since ``root`` started, ended members included."""
        rows = _tree_rows(self.proc)
        key_of = {pid: (pid, start) for pid, _, start, _, _ in rows}
        children: dict[int, list[tuple[int, int, int, float, float]]] = {}
        for row in rows:
            children.setdefault(row[1], []).append(row)
        with self._lock:  # the root, every process recorded before (reparented ones too) and their descendants
            todo = [r for r in rows if r[0] == self.root or (r[0], r[2]) in self._seen]
            live: dict[tuple[int, int], float] = {}
            while todo:
                pid, parent, start, own, reaped = todo.pop()
                if (pid, start) in live:
                    continue
                live[(pid, start)] = own + reaped
                parent_key = key_of.get(parent)
                ours = parent_key is not None and (parent_key in self._seen or parent == self.root)
                self._seen[(pid, start)] = (own + reaped, parent_key if ours else None)
                todo += children.get(pid, [])
            for key in [k for k in self._seen if k not in live]:  # ended since the last look
                seconds, parent_key = self._seen.pop(key)
                if parent_key is None or parent_key not in live:  # an orphan, or its parent ended too
                    self._ended += seconds
            self._last = max(self._last, sum(live.values()) + self._ended)
            return self._last

    __call__ = sample


@dataclass
class Interval:
    """One stretch between checkpoints: its label, wall seconds and the cores other processes used."""

    label: str
    wall_s: float
    others_cores: float


@dataclass
class ContentionWatch:
    """Checkpoints through a long run; ``summary()`` says whether anything else ran meanwhile.

    Args:
        threshold_cores: the most cores other processes may use over an interval of a quiet run.
        machine: CPU seconds of the whole machine (default ``machine_cpu_s``; injectable for tests).
        own: CPU seconds of this process tree (default: a `TreeCpu` of this process, sampled every 0.5 s).
        clock: wall clock (default ``time.monotonic``).
    """

    threshold_cores: float = DEFAULT_THRESHOLD_CORES
    machine: Callable[[], float | None] = machine_cpu_s
    own: Callable[[], float] | None = None
    clock: Callable[[], float] = time.monotonic
    intervals: list[Interval] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.own is None:
            self.own = TreeCpu() if self.machine() is not None else own_cpu_s
        self._last = (self.clock(), self.machine(), self.own())

    def checkpoint(self, label: str) -> Interval | None:
        """Close the interval since the last checkpoint (or the start) under ``label``; None off Linux."""
        now = (self.clock(), self.machine(), self.own())
        (t0, m0, o0), (t1, m1, o1) = self._last, now
        self._last = now
        if m0 is None or m1 is None or t1 <= t0:
            return None
        interval = Interval(label, t1 - t0, max(0.0, ((m1 - m0) - (o1 - o0)) / (t1 - t0)))
        self.intervals.append(interval)
        return interval

    @property
    def quiet(self) -> bool:
        return all(i.others_cores <= self.threshold_cores for i in self.intervals)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: ``quiet``, the threshold, the busiest interval and every interval."""
        busiest = max(self.intervals, key=lambda i: i.others_cores, default=None)
        return {"quiet": self.quiet if self.intervals else None, "threshold_cores": self.threshold_cores,
                "max_others_cores": busiest.others_cores if busiest else None,
                "busiest": busiest.label if busiest else None,
                "intervals": [{"label": i.label, "wall_s": i.wall_s, "others_cores": i.others_cores}
                              for i in self.intervals]}

    def markdown(self) -> str:
        """One line for a benchmark's report."""
        return contention_markdown(self.summary())


def contention_markdown(summary: dict[str, Any] | None) -> str:
    """The report line of a stored ``ContentionWatch.summary()`` (None: a result written before the watch)."""
    if summary is None:
        return "Contention watch: none (this result was written before benchmarks had one)."
    if summary["quiet"] is None:
        return "Contention watch: no reading (not Linux); wall times unchecked."
    if summary["quiet"]:
        return (f"Contention watch: quiet (other processes used at most {summary['max_others_cores']:.2f} cores "
                f"in any interval; threshold {summary['threshold_cores']:g}).")
    return (f"**Contention watch: NOT quiet** — other processes used {summary['max_others_cores']:.2f} cores during "
            f"'{summary['busiest']}' (threshold {summary['threshold_cores']:g}): the wall times of this run are void.")
