"""The contention guard on a played machine: re-measures disturbed blocks, refuses busy machines, reports drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import jmsnas.latency.guard as guard_module
import jmsnas.latency.profiler as profiler
import jmsnas.latency.verify as verify
from jmsnas.errors import ConfigError
from jmsnas.latency.guard import ContentionError, ContentionGuard, machine_load
from jmsnas.latency.model import ProfiledLatencyModel
from jmsnas.latency.timing import time_callables
from jmsnas.profile import main
from jmsnas.space.spec import load_search_space

TINY = Path(__file__).resolve().parents[2] / "search_spaces" / "tiny_1d.yaml"
FAST = {"grid": False, "blocks": 1, "block_size": 1, "warmup": 0, "rounds": 1, "calibration_nets": 0, "progress": False}


class FakeClock:
    """A nanosecond clock that a timed call advances by ``step_ns`` (the call's duration)."""

    def __init__(self) -> None:
        self.now = 0
        self.step_ns = 1_000_000

    def __call__(self) -> int:
        return self.now

    def run(self) -> None:
        self.now += self.step_ns


def test_block_is_remeasured_when_the_fake_clock_reports_the_reference_slowed() -> None:
    clock, waits = FakeClock(), []
    guard = ContentionGuard(tolerance=0.1, wait_s=0.25, sleep=waits.append, warm_up_s=0)
    # reference per block: the first block is measured three times (their median is the speed index), then
    # a block at +30 % (disturbed, measured again) and one at +5 %
    steps = iter([1_400_000, 1_000_000, 900_000, 1_300_000, 1_050_000])
    blocks = []

    def block(reference):
        blocks.append(len(blocks))
        clock.step_ns = next(steps)
        (ref_ms, _), = time_callables([clock.run], blocks=3, block_size=2, warmup=1, clock=clock)
        return len(blocks), ref_ms

    assert guard.measure(block) == 2 and guard.speed_index_ms == pytest.approx(1.0)  # the median run is kept
    assert guard.measure(block) == 5  # the disturbed measurement was thrown away
    assert blocks == [0, 1, 2, 3, 4] and waits == [0.25] and guard.stats.remeasured == 1
    assert guard.stats.worst_ratio == pytest.approx(1.4) and guard.stats.checks == 5


def _fake_machine(monkeypatch, reference_ms: list[float]) -> list[int]:
    """Replace the profiler's timing: every op takes 1 ms, the guard's reference (timed last) ``reference_ms[i]``."""
    calls: list[int] = []

    def fake(modules, inputs, extra=(), **kw):
        ref = reference_ms[min(len(calls), len(reference_ms) - 1)]
        calls.append(len(modules))
        return [(1.0, 0.0)] * len(modules) + [(ref, 0.0)] * len(extra)

    monkeypatch.setattr(profiler, "time_interleaved", fake)
    return calls


def test_no_quiet_window_refuses_to_write_a_profile(tmp_path: Path, monkeypatch) -> None:
    calls = _fake_machine(monkeypatch, [1.0, 1.0, 1.0, 2.0])  # after the first chunk it stays twice as slow
    guard = ContentionGuard(retries=3, sleep=lambda s: None, warm_up_s=0)
    space = load_search_space(TINY)
    with pytest.raises(ContentionError, match=r"no quiet window.*\+100 % off.*3 tries"):
        profiler.profile_search_spaces([space], "busy", tmp_path, guard=guard, **FAST)
    rows = profiler.read_rows(tmp_path / "busy.csv")
    assert len(calls) == 6 and len(rows) == profiler.CHUNK  # the quiet first chunk is kept, nothing after it
    meta = json.loads((tmp_path / "busy.json").read_text())
    assert meta["complete"] is False and meta["speed_index_ms"] == 1.0 and meta["guard"]["remeasured_blocks"] == 2
    with pytest.raises(ConfigError, match="incomplete"):  # nothing downstream can use the unfinished profile
        ProfiledLatencyModel.from_csv(tmp_path / "busy.csv")


def test_cli_exits_3_without_a_quiet_window(tmp_path: Path, monkeypatch, capsys) -> None:
    _fake_machine(monkeypatch, [1.0, 1.0, 1.0, 3.0])
    monkeypatch.setattr(guard_module.time, "sleep", lambda s: None)
    assert main(["--search-space", str(TINY), "--device-name", "t", "--no-grid", "--blocks", "1", "--block-size",
                 "1", "--warmup", "0", "--calibration-nets", "0", "--out-dir", str(tmp_path)]) == 3
    assert "no quiet window" in capsys.readouterr().err


def test_resume_holds_new_rows_to_the_stored_speed_index(tmp_path: Path, monkeypatch) -> None:
    space = load_search_space(TINY)
    _fake_machine(monkeypatch, [2.0])
    profiler.profile_search_spaces([space], "p", tmp_path, guard=ContentionGuard(warm_up_s=0), **FAST)
    assert json.loads((tmp_path / "p.json").read_text())["speed_index_ms"] == 2.0
    csv_path = tmp_path / "p.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-3]))  # an interrupted run
    _fake_machine(monkeypatch, [1.0])  # the machine now runs twice as fast: the stored rows were measured slow
    with pytest.raises(ContentionError, match="-50 % off the speed index 2.0000"):
        profiler.profile_search_spaces([space], "p", tmp_path, guard=ContentionGuard(sleep=lambda s: None, warm_up_s=0),
                                       **FAST)
    _fake_machine(monkeypatch, [2.1])  # +5 %: the same machine; the resumed run completes the profile
    guard = ContentionGuard(warm_up_s=0)
    profiler.profile_search_spaces([space], "p", tmp_path, guard=guard, **FAST)
    assert guard.speed_index_ms == 2.0 and json.loads((tmp_path / "p.json").read_text())["complete"] is True


def test_drift_report_from_given_rows() -> None:
    rows = [{"latency_ms": v} for v in ("1.0", "2.0", "4.0", "1.0", "0.5")]
    report = verify.drift_report(rows, [0.5, 1.0, 2.2, 0.45, 0.26])  # ratios 0.5 0.5 0.55 0.45 0.52
    assert report.n_ops == 5 and report.median_ratio == pytest.approx(0.5)
    assert report.within_10pct == 0.0 and not report.holds
    ok = verify.drift_report(rows, [1.05, 1.9, 4.0, 1.3, 0.5])  # ratios 1.05 0.95 1 1.3 1
    assert ok.median_ratio == pytest.approx(1.0) and ok.within_10pct == pytest.approx(0.8) and ok.holds
    with pytest.raises(ValueError):
        verify.drift_report(rows, [1.0])


def test_machine_load_reads_proc(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "loadavg").write_text("1.50 0.80 0.40 2/300 12345\n")
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    # between the two reads of /proc/stat: 60 busy and 40 idle jiffies pass
    monkeypatch.setattr(guard_module.time, "sleep", lambda s: stat.write_text("cpu  130 0 130 840 0 0 0 0 0 0\n"))
    load = machine_load(0.0, proc=tmp_path)
    assert load is not None and load.load_1min == 1.5 and load.busy_fraction == pytest.approx(0.6)
    assert "busy" in (load.warning() or "")
    assert machine_load(0.0, proc=tmp_path / "missing") is None


def test_the_reference_runs_before_the_first_block_sets_the_speed_index() -> None:
    """An idle CPU is woken up first: the reference runs for ``warm_up_s`` before the first block is measured."""
    guard = ContentionGuard(warm_up_s=0.2)
    calls: list[int] = []
    real = guard.reference

    def counted() -> object:
        calls.append(1)
        return real()

    guard.reference = counted
    seen: list[int] = []

    def block(reference):
        seen.append(len(calls))
        return None, 1.0

    guard.measure(block)
    assert seen[0] > 10 and guard.speed_index_ms == 1.0  # ~0.1 ms a call: hundreds of calls in 0.2 s


def test_verify_re_times_in_at_least_five_rounds_and_keeps_the_fastest(tmp_path: Path, monkeypatch) -> None:
    """A machine slow (1.6x) in all but the last of five rounds: the default check holds, a two-round one does not."""
    space = load_search_space(TINY)
    _fake_machine(monkeypatch, [1.0])
    profiler.profile_search_spaces([space], "v", tmp_path, guard=ContentionGuard(warm_up_s=0), **FAST)  # 1 round
    seen: dict[int, int] = {}

    def fake(modules, inputs, extra=(), **kw):
        seen[id(modules)] = seen.get(id(modules), 0) + 1
        now = 1.02 if seen[id(modules)] == 5 else 1.6
        return [(now, 0.0)] * len(modules) + [(1.0, 0.0)] * len(extra)

    monkeypatch.setattr(profiler, "time_interleaved", fake)
    report = verify.verify_profile(tmp_path / "v.csv", n_ops=8, tolerance=None, progress=False)
    assert report.holds and report.median_ratio == pytest.approx(1.02) and set(seen.values()) == {5}
    seen.clear()
    report = verify.verify_profile(tmp_path / "v.csv", n_ops=8, tolerance=None, progress=False, rounds=2)
    assert not report.holds and report.median_ratio == pytest.approx(1.6) and set(seen.values()) == {2}
