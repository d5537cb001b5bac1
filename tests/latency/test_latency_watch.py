"""The contention watch from fake clocks, and its /proc readers against a process we start and time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmsnas.latency.watch import ContentionWatch, machine_cpu_s, own_cpu_s


def _feed(values):
    it = iter(values)
    return lambda: next(it)


def test_others_cores_is_the_machine_cpu_minus_ours_per_wall_second() -> None:
    # wall 0 -> 10 -> 20 s; the machine used 12 then 30 CPU s, we used 10 then 10
    watch = ContentionWatch(threshold_cores=0.1, clock=_feed([0.0, 10.0, 20.0]),
                            machine=_feed([100.0, 112.0, 142.0]), own=_feed([5.0, 15.0, 25.0]))
    first = watch.checkpoint("seed 0")
    assert first.wall_s == 10.0 and first.others_cores == pytest.approx(0.2)  # (12 - 10) / 10
    second = watch.checkpoint("seed 1")
    assert second.others_cores == pytest.approx(2.0)  # (30 - 10) / 10: somebody ran two cores
    s = watch.summary()
    assert s["quiet"] is False and s["busiest"] == "seed 1" and s["max_others_cores"] == pytest.approx(2.0)
    assert "NOT quiet" in watch.markdown()


def test_a_run_alone_is_quiet_and_no_reading_is_not_called_quiet() -> None:
    alone = ContentionWatch(clock=_feed([0.0, 5.0]), machine=_feed([0.0, 5.02]), own=_feed([0.0, 5.0]))
    alone.checkpoint("all")
    assert alone.quiet and alone.summary()["quiet"] is True and "quiet" in alone.markdown()
    blind = ContentionWatch(clock=_feed([0.0, 5.0]), machine=_feed([None, None]), own=_feed([0.0, 5.0]))
    assert blind.checkpoint("all") is None and blind.summary()["quiet"] is None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
def test_proc_readers_count_a_child_that_spins() -> None:
    """A child spinning ~0.6 s of CPU shows up in our tree's CPU time and in the machine's."""
    before_own, before_machine = own_cpu_s(), machine_cpu_s()
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
                              "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while own_cpu_s() - before_own < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert own_cpu_s() - before_own >= 0.5  # the child is ours while it lives
        assert machine_cpu_s() - before_machine >= 0.5
    finally:
        child.kill()
        child.wait(timeout=10)


def test_a_reaped_child_still_counts_as_our_own_time() -> None:
    """A worker that exited and was waited for is this tree's CPU (the parent's cutime), not contention."""
    before = own_cpu_s()
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    subprocess.run([sys.executable, "-c", busy], check=True, timeout=30)  # runs, exits and is reaped
    assert own_cpu_s() - before >= 0.3


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
def test_tree_cpu_keeps_an_orphaned_grandchild_that_nobody_of_ours_reaps(tmp_path: Path) -> None:
    """A grandchild left behind by its parent (reparented, as Ray's servers are) spins 0.6 s and ends:
    its time is lost to ``own_cpu_s`` (counted as contention) and kept by `TreeCpu`."""
    from jmsnas.latency.watch import TreeCpu

    done = tmp_path / "done"
    spin = ("import time, pathlib\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
            f"pathlib.Path({str(done)!r}).write_text('1')\n")
    tracker = TreeCpu(interval_s=0.05)
    before_tree, before_own = tracker(), own_cpu_s()
    launcher = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                                 f"subprocess.Popen([sys.executable, '-c', {spin!r}])\ntime.sleep(0.4)\n"])
    # the launcher leaves without waiting for the spinner
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 30
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the orphan has ended
    assert done.exists()
    assert tracker() - before_tree >= 0.45
    assert own_cpu_s() - before_own < 0.45  # what the old reading lost


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
def test_tree_cpu_counts_a_child_killed_and_reaped_between_two_looks() -> None:
    """A device process that spins, is killed and is waited for between two samples (as the runtime
    benchmark's fault runs do) is ours: its time is in our reaped time, not lost to contention."""
    from jmsnas.latency.watch import TreeCpu

    tracker = TreeCpu(thread=False)
    before = tracker()
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.6)
    child.kill()
    child.wait(timeout=30)
    assert tracker() - before >= 0.4
